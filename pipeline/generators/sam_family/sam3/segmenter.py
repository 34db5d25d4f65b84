"""SAM 3 behind `PromptableSegmenter` (points) and its concept (text prompt) segmentation.

Points follow `Sam3Image.predict_inst` step for step: the image is encoded as
`Sam3Processor.set_image` does (1008x1008 resize, the SAM 2-style neck through the
tracker's `conv_s0`/`conv_s1`), prompts are normalised to the crop size in float32 and
decoded by the tracker's prompt encoder and mask decoder, and logits are post-processed
by the predictor's own transforms (small-hole filling, bilinear resize to the crop). The
engine therefore gets the same masks `predict_inst` returns, but can filter candidates by
predicted IoU before paying for that post-processing.

Concepts run `Sam3Processor.set_text_prompt` once per prompt on the same embedding.

`fast=True` runs the network under bf16 autocast (as SAM 3's own examples do on a GPU);
logits and scores come back in fp32, and masks move slightly from fp32's.
"""

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.generators.sam_family.engine.segmenter import PromptableSegmenter
from pipeline.generators.sam_family.sam3.network import DeviceRedirect


@dataclass
class Sam3Embedding:
    """One crop: the processor's state (for text prompts) and the point decoder's features."""

    state: dict[str, Any]
    image_embed: torch.Tensor  # (1, 256, 72, 72)
    high_res_feats: list[torch.Tensor]  # (1, 32, 288, 288), (1, 64, 144, 144)
    original_size: tuple[int, int]  # the crop's (H, W)


@dataclass
class ConceptMasks:
    """Instances found for one text prompt: (n, H, W) bool masks and their scores (n,)."""

    masks: torch.Tensor
    scores: torch.Tensor


class Sam3Segmenter(PromptableSegmenter):
    """A built SAM 3 image model with instance interactivity (`sam3.network.load_sam3`)."""

    def __init__(self, model: torch.nn.Module, fast: bool = False) -> None:
        from sam3.model.sam3_image_processor import Sam3Processor  # heavy import, only with a network

        if model.inst_interactive_predictor is None:
            raise ValueError("the SAM 3 model was built without instance interactivity (enable_inst_interactivity=True)")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.predictor = model.inst_interactive_predictor
        self.tracker = self.predictor.model
        self.mask_threshold = float(self.predictor.mask_threshold)
        self.processor = Sam3Processor(model, device=self.device)
        self.fast = fast

    def _precision(self) -> contextlib.AbstractContextManager:
        if not self.fast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @torch.inference_mode()
    def embed(self, crops: list[np.ndarray]) -> list[Sam3Embedding]:
        """Encode each crop as `Sam3Processor.set_image`, then shape features as `predict_inst` does."""
        with self._precision():
            return [self._embed_one(crop) for crop in crops]

    def _embed_one(self, crop: np.ndarray) -> Sam3Embedding:
        pixels = torch.from_numpy(np.array(crop)).permute(2, 0, 1)  # (3, H, W): the processor reads H, W from it
        state = self.processor.set_image(pixels)
        _, vision_feats, _, _ = self.tracker._prepare_backbone_features(state["backbone_out"]["sam2_backbone_out"])
        vision_feats[-1] = vision_feats[-1] + self.tracker.no_mem_embed
        sizes = self.predictor._bb_feat_sizes
        feats = [feat.permute(1, 2, 0).view(1, -1, *size) for feat, size in zip(vision_feats[::-1], sizes[::-1])][::-1]
        return Sam3Embedding(state, feats[-1], feats[:-1], crop.shape[:2])

    @torch.inference_mode()
    def predict_points(self, embedding: Sam3Embedding, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`predict_inst` for single positive points, multimask: (P, 3, 288, 288) logits, (P, 3) IoUs."""
        coords = self.predictor._transforms.transform_coords(
            points.to(torch.float32), normalize=True, orig_hw=embedding.original_size
        )[:, None, :]
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=coords.device)
        with self._precision():
            sparse, dense = self.tracker.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            low_res, iou_preds, _, _ = self.tracker.sam_mask_decoder(
                image_embeddings=embedding.image_embed,
                image_pe=self.tracker.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
                repeat_image=coords.shape[0] > 1,
                high_res_features=embedding.high_res_feats,
            )
        return low_res.float(), iou_preds.float()

    @torch.inference_mode()
    def upscale(self, embedding: Sam3Embedding, low_res_logits: torch.Tensor) -> torch.Tensor:
        """The predictor's post-processing: fill small holes, resize to the crop (each mask on its own)."""
        return self.predictor._transforms.postprocess_masks(low_res_logits[:, None].float(), embedding.original_size)[:, 0]

    @torch.inference_mode()
    def concepts(self, embedding: Sam3Embedding, prompts: tuple[str, ...], confidence: float) -> list[ConceptMasks]:
        """Instances of each text prompt scoring above `confidence`, at the crop's size."""
        self.processor.confidence_threshold = confidence
        found = []
        with DeviceRedirect(self.device), self._precision():  # the geometry encoder pins memory, which fails without CUDA
            for prompt in prompts:
                state = self.processor.set_text_prompt(prompt, embedding.state)
                found.append(ConceptMasks(state["masks"][:, 0], state["scores"].float()))
        return found
