"""Fast mode's SAM mask decoder: the image side computed once per crop, not once per prompt.

Stock `MaskDecoder.predict_masks` copies the 64×64 image embedding and its positional
encoding once per prompt and projects all 4096 image tokens per prompt in every attention
layer, so nearly all of its work is per prompt. Here the same network is evaluated with the
arithmetic reordered:

- Point prompts all carry the same dense (no-mask) embedding, so the first layer's image
  tokens are the same for every prompt: their projections are computed once per crop.
- After the first layer each prompt has its own image tokens, but every attention then pairs
  them with the prompt's few (≤ 7) tokens, so the image side's linear projections fold into
  the token side: q·(W k + b) = (Wᵀq)·k + q·b, where q·b is the same for a whole softmax row
  and drops out, and P (W v + b) = W (P v) + b because softmax rows sum to one. No projected
  copy of the 4096 image tokens is ever built per prompt.

- The image positional encoding enters those products linearly, (x + p)·f = x·f + p·f, so
  image tokens plus encoding are never materialised per prompt either, and residual adds ride
  on the products (`baddbmm`).
- The transformer runs for every prompt, but masks are upscaled only for the prompts the caller
  asks for: the automatic-mask engine asks only for prompts with a candidate that passes the
  predicted-IoU filter. The upscaling itself is two token-major matrix products (a 2×2,
  stride-2 transposed convolution has no overlapping taps), with `layer_norm` over channels.

Equal to stock in real arithmetic, not bit for bit: fast mode's agreement with exact mode is
measured (`engine.agreement`), never assumed.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock
from torch import Tensor


def _head_weights(projection: torch.nn.Linear, heads: int) -> Tensor:
    """A projection's weight (H·d, C) as one (d, C) block per head: (H, d, C)."""
    out_features, in_features = projection.weight.shape
    return projection.weight.view(heads, out_features // heads, in_features)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, n, H·d) -> (H, B·n, d)."""
    batch, tokens, width = x.shape
    return x.reshape(batch * tokens, heads, width // heads).transpose(0, 1)


def _tokens_to_image(attention: Attention, queries: Tensor, image: Tensor, image_pe: Tensor, shared: bool) -> Tensor:
    """`attention(q=queries, k=image + image_pe, v=image)`: each prompt's tokens (B, T, C) read image
    tokens that are `shared` (1, N, C) or the prompt's own (B, N, C); `image_pe` is (1, N, C)."""
    heads = attention.num_heads
    batch, tokens, _ = queries.shape
    q = _split_heads(attention.q_proj(queries), heads)  # (H, B·T, d)
    scale = 1 / math.sqrt(q.shape[-1])
    if shared:
        k = _split_heads(attention.k_proj(image + image_pe), heads)  # (H, N, d)
        v = _split_heads(attention.v_proj(image), heads)
        out = torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1) @ v  # (H, B·T, d)
    else:
        folded = (q @ _head_weights(attention.k_proj, heads)).view(heads, batch, tokens, -1)  # (H, B, T, C)
        folded = folded.transpose(0, 1).reshape(batch, heads * tokens, -1).transpose(1, 2) * scale  # (B, C, H·T)
        position_scores = (image_pe[0] @ folded.transpose(0, 1).flatten(1)).view(-1, batch, heads * tokens).transpose(0, 1)
        probabilities = torch.softmax(torch.baddbmm(position_scores, image, folded), dim=1)  # (B, N, H·T), softmax over N
        pooled = (probabilities.transpose(1, 2) @ image).view(batch, heads, tokens, -1).transpose(0, 1)  # (H, B, T, C)
        values = pooled.reshape(heads, batch * tokens, -1) @ _head_weights(attention.v_proj, heads).transpose(1, 2)
        out = values + attention.v_proj.bias.view(heads, 1, -1)
    out = out.transpose(0, 1).reshape(batch, tokens, -1)
    return attention.out_proj(out)


def _image_to_tokens(attention: Attention, image: Tensor, image_pe: Tensor, keys: Tensor, values: Tensor, shared: bool) -> Tensor:
    """`image + attention(q=image + image_pe, k=keys, v=values)`, the residual included: image tokens,
    `shared` (1, N, C) or each prompt's own (B, N, C, updated in place), read their prompt's tokens
    (B, T, C); returns (B, N, C).

    Scores are laid out (B, H, T, N) so the softmax over a head's few tokens runs along whole rows.
    """
    heads = attention.num_heads
    batch, tokens, _ = keys.shape
    k = _split_heads(attention.k_proj(keys), heads).reshape(heads, batch, tokens, -1)  # (H, B, T, d)
    scale = 1 / math.sqrt(k.shape[-1])
    if shared:
        q = _split_heads(attention.q_proj(image + image_pe), heads)  # (H, N, d)
        scores = (k.flatten(1, 2) @ q.transpose(1, 2) * scale).view(heads, batch, tokens, -1)
        probabilities = torch.softmax(scores, dim=2).transpose(0, 1).reshape(batch, heads * tokens, -1)
    else:
        # q_h·k_t = x·(W_hᵀ k_t) + b_h·k_t with x the image token plus encoding: fold W and b into the keys.
        folded = torch.einsum("hdc,hbtd->bhtc", _head_weights(attention.q_proj, heads) * scale, k).flatten(1, 2)  # (B, H·T, C)
        offsets = torch.einsum("hd,hbtd->bht", attention.q_proj.bias.view(heads, -1) * scale, k).reshape(batch, -1, 1)
        position_scores = (folded.flatten(0, 1) @ image_pe[0].T).view(batch, heads * tokens, -1) + offsets
        scores = torch.baddbmm(position_scores, folded, image.transpose(1, 2)).view(batch, heads, tokens, -1)
        probabilities = torch.softmax(scores, dim=2).view(batch, heads * tokens, -1)  # (B, H·T, N)
    v = _split_heads(attention.v_proj(values), heads).reshape(heads, batch, tokens, -1)
    # out_proj(Σ_h P_h v_h) = Σ_h P_h (v_h W_hᵀ + b / H), each head's P summing to one per image token:
    # project the few token values instead of the image tokens.
    out_weights = attention.out_proj.weight.view(-1, heads, v.shape[-1]).transpose(0, 1)  # (H, C, d)
    projected = (v @ out_weights.transpose(1, 2)[:, None]).permute(1, 0, 2, 3).flatten(1, 2)  # (B, H·T, C)
    projected = projected + attention.out_proj.bias / heads
    if shared:
        return torch.baddbmm(image, probabilities.transpose(1, 2), projected)
    return image.baddbmm_(probabilities.transpose(1, 2), projected)


def _block(
    block: TwoWayAttentionBlock, queries: Tensor, image: Tensor, query_pe: Tensor, image_pe: Tensor, shared: bool
) -> tuple[Tensor, Tensor]:
    """`TwoWayAttentionBlock.forward` with image tokens `shared` (1, N, C) or per prompt (B, N, C)."""
    if block.skip_first_layer_pe:
        queries = block.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + block.self_attn(q=q, k=q, v=queries)
    queries = block.norm1(queries)
    queries = block.norm2(queries + _tokens_to_image(block.cross_attn_token_to_image, queries + query_pe, image, image_pe, shared))
    queries = block.norm3(queries + block.mlp(queries))
    image = _image_to_tokens(block.cross_attn_image_to_token, image, image_pe, queries + query_pe, queries, shared)
    return queries, block.norm4(image)


@dataclass
class DecodedPrompts:
    """The two-way transformer's output for one crop's prompts, from which masks are upscaled."""

    queries: Tensor  # (B, T, C) output and prompt tokens
    image: Tensor  # (B, h·w, C) each prompt's image tokens
    size: tuple[int, int]  # (h, w)


@torch.inference_mode()
def decode_prompt_tokens(
    decoder: MaskDecoder, image_embedding: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor
) -> tuple[DecodedPrompts, Tensor]:
    """The transformer and IoU head of `decoder(..., multimask_output=True)` for point prompts of one
    crop (`image_embedding` (1, C, h, w)): the decoded prompts and their (B, 3) predicted IoUs."""
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])
    tokens = torch.cat([output_tokens.expand(len(sparse), -1, -1), sparse], dim=1)
    image = (image_embedding + dense[:1]).flatten(2).transpose(1, 2)  # the same no-mask embedding for every prompt
    image_pe = image_pe.flatten(2).transpose(1, 2)
    transformer = decoder.transformer
    queries = tokens
    for index, block in enumerate(transformer.layers):  # the first layer's image tokens are the same for every prompt
        queries, image = _block(block, queries, image, tokens, image_pe, shared=index == 0)
    attn_out = _tokens_to_image(transformer.final_attn_token_to_image, queries + tokens, image, image_pe, shared=False)
    queries = transformer.norm_final_attn(queries + attn_out)
    decoded = DecodedPrompts(queries, image.expand(len(tokens), -1, -1), tuple(image_embedding.shape[-2:]))
    return decoded, decoder.iou_prediction_head(queries[:, 0])[:, 1:]


@torch.inference_mode()
def upscale_masks(decoder: MaskDecoder, decoded: DecodedPrompts, prompts: Tensor) -> Tensor:
    """Multimask low-res logits (len(prompts), 3, 4h, 4w) of the decoded prompts at indexes `prompts`.

    `output_upscaling` (2×2 stride-2 transposed convolution, LayerNorm2d, GELU, again, GELU) on
    token-major rows: each transposed convolution is one matrix product whose output columns
    are (row offset, column offset, channel), so channels stay last for `layer_norm`.
    """
    first, norm, first_act, second, second_act = decoder.output_upscaling
    height, width = decoded.size
    count = len(prompts)
    if count == 0:
        return decoded.image.new_zeros((0, decoder.num_mask_tokens - 1, 4 * height, 4 * width))
    tokens = decoded.image[prompts].flatten(0, 1)  # (k·h·w, C)
    hidden = torch.addmm(first.bias.repeat(4), tokens, first.weight.permute(0, 2, 3, 1).flatten(1))
    hidden = first_act(F.layer_norm(hidden.view(-1, first.out_channels), (first.out_channels,), norm.weight, norm.bias, norm.eps))
    pixels = second_act(torch.addmm(second.bias.repeat(4), hidden, second.weight.permute(0, 2, 3, 1).flatten(1)))
    queries = decoded.queries[prompts]
    mlps = decoder.output_hypernetworks_mlps
    hyper_in = torch.stack([mlps[i](queries[:, 1 + i]) for i in range(1, len(mlps))], dim=2)  # (k, C/8, 3): tokens 1-3
    logits = pixels.view(count, -1, second.out_channels) @ hyper_in  # rows ordered (i, j, di, dj, di2, dj2)
    logits = logits.view(count, height, width, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return logits.reshape(count, -1, 4 * height, 4 * width)


def decode_point_prompts(
    decoder: MaskDecoder, image_embedding: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor
) -> tuple[Tensor, Tensor]:
    """`decoder(image_embedding, image_pe, sparse, dense, multimask_output=True)` for point
    prompts of one crop: (B, 3, 4h, 4w) logits, (B, 3) IoUs."""
    decoded, ious = decode_prompt_tokens(decoder, image_embedding, image_pe, sparse, dense)
    return upscale_masks(decoder, decoded, torch.arange(len(sparse), device=sparse.device)), ious
