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

Equal to stock in real arithmetic, not bit for bit: fast mode's agreement with exact mode is
measured (`pipeline.generators.agreement`), never assumed.
"""

import math

import torch
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


def _tokens_to_image(attention: Attention, queries: Tensor, image_keys: Tensor, image_values: Tensor) -> Tensor:
    """`attention(q=queries, k=image_keys, v=image_values)`: each prompt's tokens (B, T, C) read
    image tokens that are shared (1, N, C) or the prompt's own (B, N, C)."""
    heads = attention.num_heads
    batch, tokens, _ = queries.shape
    q = _split_heads(attention.q_proj(queries), heads)  # (H, B·T, d)
    scale = 1 / math.sqrt(q.shape[-1])
    if image_keys.shape[0] == 1:
        k = _split_heads(attention.k_proj(image_keys), heads)  # (H, N, d)
        v = _split_heads(attention.v_proj(image_values), heads)
        out = torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1) @ v  # (H, B·T, d)
    else:
        folded = (q @ _head_weights(attention.k_proj, heads)).view(heads, batch, tokens, -1)  # (H, B, T, C)
        folded = folded.transpose(0, 1).reshape(batch, heads * tokens, -1)
        probabilities = torch.softmax(folded @ image_keys.transpose(1, 2) * scale, dim=-1)  # (B, H·T, N)
        pooled = (probabilities @ image_values).view(batch, heads, tokens, -1).transpose(0, 1)  # (H, B, T, C)
        values = pooled.reshape(heads, batch * tokens, -1) @ _head_weights(attention.v_proj, heads).transpose(1, 2)
        out = values + attention.v_proj.bias.view(heads, 1, -1)
    out = out.transpose(0, 1).reshape(batch, tokens, -1)
    return attention.out_proj(out)


def _image_to_tokens(attention: Attention, image_queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """`attention(q=image_queries, k=keys, v=values)`: image tokens, shared (1, N, C) or each
    prompt's own (B, N, C), read their prompt's tokens (B, T, C); returns (B, N, C)."""
    heads = attention.num_heads
    batch, tokens, _ = keys.shape
    k = _split_heads(attention.k_proj(keys), heads).reshape(heads, batch, tokens, -1)  # (H, B, T, d)
    scale = 1 / math.sqrt(k.shape[-1])
    if image_queries.shape[0] == 1:
        q = _split_heads(attention.q_proj(image_queries), heads)  # (H, N, d)
        scores = (q @ k.flatten(1, 2).transpose(1, 2)).view(heads, -1, batch, tokens).permute(2, 1, 0, 3)
    else:
        # q_h·k_t = x·(W_hᵀ k_t) + b_h·k_t with x the image token: fold W and b into the keys.
        folded = torch.einsum("hdc,hbtd->bcht", _head_weights(attention.q_proj, heads), k)
        offsets = torch.einsum("hd,hbtd->bht", attention.q_proj.bias.view(heads, -1), k)
        scores = (image_queries @ folded.flatten(2)).view(batch, -1, heads, tokens) + offsets[:, None]
    probabilities = torch.softmax(scores * scale, dim=-1).flatten(2)  # (B, N, H·T)
    v = _split_heads(attention.v_proj(values), heads).reshape(heads, batch, tokens, -1)
    # out_proj(Σ_h P_h v_h) = Σ_h P_h (v_h W_hᵀ) + b: project the few token values instead.
    out_weights = attention.out_proj.weight.view(-1, heads, v.shape[-1]).transpose(0, 1)  # (H, C, d)
    projected = (v @ out_weights.transpose(1, 2)[:, None]).permute(1, 0, 2, 3).flatten(1, 2)  # (B, H·T, C)
    return probabilities @ projected + attention.out_proj.bias


def _block(block: TwoWayAttentionBlock, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
    """`TwoWayAttentionBlock.forward` with `keys` shared (1, N, C) or per prompt (B, N, C)."""
    if block.skip_first_layer_pe:
        queries = block.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + block.self_attn(q=q, k=q, v=queries)
    queries = block.norm1(queries)
    keys_with_pe = keys + key_pe
    queries = block.norm2(queries + _tokens_to_image(block.cross_attn_token_to_image, queries + query_pe, keys_with_pe, keys))
    queries = block.norm3(queries + block.mlp(queries))
    attn_out = _image_to_tokens(block.cross_attn_image_to_token, keys_with_pe, queries + query_pe, queries)
    return queries, block.norm4(keys + attn_out)


@torch.inference_mode()
def decode_point_prompts(
    decoder: MaskDecoder, image_embedding: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor
) -> tuple[Tensor, Tensor]:
    """`decoder(image_embedding, image_pe, sparse, dense, multimask_output=True)` for point
    prompts of one crop (`image_embedding` (1, C, h, w)): (B, 3, 4h, 4w) logits, (B, 3) IoUs."""
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])
    tokens = torch.cat([output_tokens.expand(len(sparse), -1, -1), sparse], dim=1)
    _, channels, height, width = image_embedding.shape
    keys = (image_embedding + dense[:1]).flatten(2).transpose(1, 2)  # the same no-mask embedding for every prompt
    key_pe = image_pe.flatten(2).transpose(1, 2)
    transformer = decoder.transformer
    queries = tokens
    for block in transformer.layers:
        queries, keys = _block(block, queries, keys, tokens, key_pe)
    attn_out = _tokens_to_image(transformer.final_attn_token_to_image, queries + tokens, keys + key_pe, keys)
    queries = transformer.norm_final_attn(queries + attn_out)
    src = keys.transpose(1, 2).reshape(len(tokens), channels, height, width)
    upscaled = decoder.output_upscaling(src)
    mlps = decoder.output_hypernetworks_mlps
    hyper_in = torch.stack([mlps[i](queries[:, 1 + i]) for i in range(1, len(mlps))], dim=1)  # multimask: tokens 1-3
    masks = (hyper_in @ upscaled.flatten(2)).view(len(tokens), -1, *upscaled.shape[-2:])
    return masks, decoder.iou_prediction_head(queries[:, 0])[:, 1:]
