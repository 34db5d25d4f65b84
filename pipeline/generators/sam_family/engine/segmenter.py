"""The network side of automatic masks: what the batched engine needs from a SAM-family model.

`engine.amg` makes SAM's automatic masks (point grid, filters, NMS, crops) for any network
behind `PromptableSegmenter`; two adapters implement it, SAM 1's (`sam.segmenter.SamSegmenter`)
and SAM 3's (`sam3.segmenter.Sam3Segmenter`). The engine only ever calls the methods below,
so an adapter decides how its network batches, casts and places tensors.

Contract details the engine relies on (adapters must keep them):
- `embed` gets crops of any sizes in one call and must return embeddings in the same order;
  it may raise `torch.OutOfMemoryError`, after which the engine retries with fewer crops.
- `predict_points` gets points as a float64 tensor on `device` (stock SAM computes prompt
  coordinates in float64, and exact mode must match it bit for bit); the engine calls it
  with `points_per_batch` prompts at a time in exact mode and all of a crop's prompts in
  fast mode. Its results must not depend on how the prompts are split into calls.
- `predict_candidates` is what the engine calls; by default it is `predict_points` followed by
  the predicted-IoU filter, so the same contract holds for it.
- `upscale` is applied only to the candidates that passed the predicted-IoU filter, so
  it must treat every mask independently (as bilinear resizing does); it gets at most 192
  candidates per call.

A generator on the engine subclasses `engine.generator.EngineGenerator` and returns its adapter
from `build_segmenter`; the base builds `AmgEngine(segmenter, config, image_batch=n,
all_prompts=...)` on first use and calls `engine.raw_masks(images)` in `regions_batch`
(`engine.masks(images)` gives the masks themselves, on the device, as `sam3`'s concepts
mode uses them).
"""

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch


class PromptableSegmenter(ABC):
    """A SAM-family network as the batched automatic-mask engine sees it (the SAM 1 and SAM 3 adapters)."""

    mask_threshold: float  # logit above which a pixel is in the mask (SAM: 0.0)
    device: torch.device

    @abstractmethod
    def embed(self, crops: list[np.ndarray]) -> list[Any]:
        """Run the image encoder on a batch of (H, W, 3) uint8 crops (sizes may differ);
        returns one opaque per-crop embedding (on the device) for the calls below."""

    @abstractmethod
    def predict_points(self, embedding: Any, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One positive point per prompt, multimask output: points (P, 2) float xy in the crop's pixel
        coordinates -> (low_res_logits (P, K, h, w), predicted_iou (P, K)), K = 3 for SAM."""

    def predict_candidates(self, embedding: Any, points: torch.Tensor, min_iou: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates of `predict_points` whose predicted IoU exceeds `min_iou`, in (prompt, output)
        order: (low_res_logits (n, h, w), predicted_iou (n,)). Adapters that can predict IoUs before
        masks override it to make masks only for prompts with a survivor."""
        low_res, iou_preds = self.predict_points(embedding, points)
        keep = iou_preds > min_iou
        return low_res[keep], iou_preds[keep]

    @abstractmethod
    def upscale(self, embedding: Any, low_res_logits: torch.Tensor) -> torch.Tensor:
        """(n, h, w) low-res logits -> (n, H, W) logits at the crop's size, exactly as the stock predictor
        post-processes them (so the engine can filter by predicted IoU before upsampling survivors)."""
