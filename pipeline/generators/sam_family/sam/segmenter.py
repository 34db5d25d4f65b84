"""SAM 1 behind `PromptableSegmenter`: stock `SamPredictor`'s arithmetic, for several crops at once.

Exact mode repeats the predictor's steps on the same tensors (resize with its
`ResizeLongestSide`, normalise and pad with `Sam.preprocess`, float64 prompt coordinates,
`Sam.postprocess_masks`), so masks equal stock AMG's. Fast mode runs the image encoder
under bf16 autocast and every attention layer through `scaled_dot_product_attention`
(the same softmax(q k^T / sqrt(d) + bias) v, fused), optionally with `torch.compile`, and
decodes prompts with the image side computed once per crop (`sam.shared_decoder`), upscaling
masks only for prompts with a candidate that passes the predicted-IoU filter;
how far its masks move from exact mode's is measured (`engine.agreement`).
"""

import copy
import math
import types
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling import image_encoder, transformer
from segment_anything.utils.transforms import ResizeLongestSide

from pipeline.generators.sam_family.engine.segmenter import PromptableSegmenter
from pipeline.generators.sam_family.sam.shared_decoder import decode_point_prompts, decode_prompt_tokens, upscale_masks


UPSCALE_PROMPTS = 64  # prompts upscaled together in fast mode: bounds the full-resolution activations' memory


@dataclass(frozen=True)
class SamEmbedding:
    """One crop's image features (1, C, h, w) and the sizes `postprocess_masks` needs."""

    features: torch.Tensor
    input_size: tuple[int, int]  # resized, before padding
    original_size: tuple[int, int]  # the crop's (H, W)


def _encoder_attention_sdpa(self: image_encoder.Attention, x: torch.Tensor) -> torch.Tensor:
    """ViT attention with the decomposed relative-position term passed to SDPA as an additive bias."""
    batch, height, width, _ = x.shape
    qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, batch * self.num_heads, height * width, -1).unbind(0)
    bias = None
    if self.use_rel_pos:
        zeros = torch.zeros(q.shape[0], q.shape[1], q.shape[1], dtype=q.dtype, device=q.device)
        bias = image_encoder.add_decomposed_rel_pos(zeros, q, self.rel_pos_h, self.rel_pos_w, (height, width), (height, width))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
    return self.proj(out)


def _decoder_attention_sdpa(self: transformer.Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The two-way transformer's attention through SDPA (its scale is 1/sqrt(head dim), SDPA's default)."""
    q = self._separate_heads(self.q_proj(q), self.num_heads)
    k = self._separate_heads(self.k_proj(k), self.num_heads)
    v = self._separate_heads(self.v_proj(v), self.num_heads)
    out = F.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(q.shape[-1]))
    return self.out_proj(self._recombine_heads(out))


def use_sdpa_attention(sam: Sam) -> None:
    """Route every attention layer of `sam` (in place) through `scaled_dot_product_attention`."""
    for module in sam.modules():
        if isinstance(module, image_encoder.Attention):
            module.forward = types.MethodType(_encoder_attention_sdpa, module)
        elif isinstance(module, transformer.Attention):
            module.forward = types.MethodType(_decoder_attention_sdpa, module)


class SamSegmenter(PromptableSegmenter):
    """`sam` in exact mode (fp32, stock arithmetic) or fast mode (bf16 encoder, SDPA, optional compile).

    Fast mode changes the network's attention layers, so it works on a copy when `copy_model`
    (an injected model that the caller keeps using); a model loaded for us is changed in place.
    """

    def __init__(self, sam: Sam, fast: bool = False, compile_encoder: bool = False, copy_model: bool = True) -> None:
        if fast and copy_model:
            sam = copy.deepcopy(sam)
        self.sam = sam.eval()
        self.fast = fast
        self.device = sam.device
        self.mask_threshold = sam.mask_threshold
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        if fast:
            use_sdpa_attention(sam)
        if compile_encoder and not fast:
            raise ValueError("torch.compile is a fast-mode option: it changes the encoder's arithmetic")
        self.encoder = torch.compile(sam.image_encoder) if compile_encoder else sam.image_encoder

    @torch.inference_mode()
    def embed(self, crops: list[np.ndarray]) -> list[SamEmbedding]:
        """Resize, normalise and pad each crop as `SamPredictor.set_image` does; encode them as one batch."""
        inputs, sizes = [], []
        for crop in crops:
            pixels = crop if self.sam.image_format == "RGB" else crop[..., ::-1]
            resized = torch.as_tensor(self.transform.apply_image(pixels), device=self.device)
            resized = resized.permute(2, 0, 1).contiguous()[None]
            sizes.append((tuple(resized.shape[-2:]), crop.shape[:2]))
            inputs.append(self.sam.preprocess(resized))
        features = self._encode(torch.cat(inputs))
        return [SamEmbedding(features[i : i + 1], input_size, original) for i, (input_size, original) in enumerate(sizes)]

    def _encode(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, C, h, w) features.

        Exact mode runs the ViT blocks on the whole batch but the neck's convolutions one
        image at a time: batched convolutions may pick another algorithm and differ from a
        single image's in the last bits, which would make masks differ from stock's. The
        steps are `ImageEncoderViT.forward`'s.
        """
        if self.fast:
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                return self.encoder(batch).float()
        encoder = self.sam.image_encoder
        tokens = encoder.patch_embed(batch)
        if encoder.pos_embed is not None:
            tokens = tokens + encoder.pos_embed
        for block in encoder.blocks:
            tokens = block(tokens)
        return torch.cat([encoder.neck(tokens[i : i + 1].permute(0, 3, 1, 2)) for i in range(len(tokens))])

    def _point_prompts(self, embedding: SamEmbedding, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`SamPredictor.predict_torch`'s prompt side for single positive points: sparse, dense, image_pe."""
        old_h, old_w = embedding.original_size
        new_h, new_w = embedding.input_size
        coords = points.to(torch.float64).clone()
        coords[:, 0] = coords[:, 0] * (new_w / old_w)
        coords[:, 1] = coords[:, 1] * (new_h / old_h)
        labels = torch.ones((coords.shape[0], 1), dtype=torch.int, device=coords.device)
        sparse, dense = self.sam.prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
        return sparse, dense, self.sam.prompt_encoder.get_dense_pe()

    @torch.inference_mode()
    def predict_points(self, embedding: SamEmbedding, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`SamPredictor.predict_torch` for single positive points, multimask, logits kept low-res."""
        sparse, dense, image_pe = self._point_prompts(embedding, points)
        if self.fast:
            return decode_point_prompts(self.sam.mask_decoder, embedding.features, image_pe, sparse, dense)
        return self.sam.mask_decoder(
            image_embeddings=embedding.features,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )

    @torch.inference_mode()
    def predict_candidates(self, embedding: SamEmbedding, points: torch.Tensor, min_iou: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Fast mode upscales the low-res masks of prompts with a candidate above `min_iou` only.

        Exact mode runs stock's decoder on the whole prompt batch, as stock does: on a subset of
        prompts the upscaling convolutions might take another algorithm and change the last bits.
        """
        if not self.fast:
            return super().predict_candidates(embedding, points, min_iou)
        sparse, dense, image_pe = self._point_prompts(embedding, points)
        decoded, iou_preds = decode_prompt_tokens(self.sam.mask_decoder, embedding.features, image_pe, sparse, dense)
        keep = iou_preds > min_iou
        prompts = keep.any(dim=1).nonzero()[:, 0]
        low_res = [upscale_masks(self.sam.mask_decoder, decoded, chunk)[keep[chunk]] for chunk in prompts.split(UPSCALE_PROMPTS)]
        return torch.cat(low_res), iou_preds[keep]  # no survivor: one empty chunk, (0, 4h, 4w)

    @torch.inference_mode()
    def upscale(self, embedding: SamEmbedding, low_res_logits: torch.Tensor) -> torch.Tensor:
        return self.sam.postprocess_masks(low_res_logits[:, None], embedding.input_size, embedding.original_size)[:, 0]
