"""Automatic masks for batches of images on the network's device: stock AMG's masks, less of its work.

Stock `SamAutomaticMaskGenerator` encodes one image at a time, upsamples every candidate
(3 per point) to full resolution, run-length encodes the survivors and decodes them again.
Here, for any `PromptableSegmenter`:

- the crops of several images go through the image encoder as one batch;
- candidates are filtered by predicted IoU on the low-res logits, and only survivors are
  upsampled (fast mode makes low-res masks only for prompts with a survivor); stability
  scores are computed on those alone and only when a threshold uses them;
- box NMS, the crop-edge filter, cross-crop NMS and `min_mask_region_area` call the same
  segment-anything functions on the same tensors as stock, so the masks and their order are
  stock's (exact mode; `tests/test_amg_engine.py` checks this mask for mask);
- masks stay on the device until they are run-length encoded (`raw_mask_format`), found there
  as runs, so only their boundaries come back to the host; the label-map rule then runs on
  the masks stage's threads while the device goes on with the next image. Stability scores
  are kept with every mask (stock computes them for all), whether or not a threshold uses them.

An out-of-memory error halves the number of crops encoded together (then the prompts
decoded together) and retries; exact-mode results do not depend on either, so the output
is unchanged.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from segment_anything.utils.amg import (
    batched_mask_to_box,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
)
from torchvision.ops.boxes import batched_nms, box_area

from pipeline.generators.sam_family.amg_settings import AmgSettings
from pipeline.generators.sam_family.engine.segmenter import PromptableSegmenter
from pipeline.raw_mask_format import RawMasks, dense_raw_masks

T = TypeVar("T")
UPSCALE_ROWS = 192  # candidates upsampled to full size at once (stock's 64 points x 3): bounds memory in fast mode


@dataclass
class ImageMasks:
    """One image's final masks in stock AMG order: (n, H, W) bool on the device, predicted IoUs and stability scores (n,)."""

    masks: torch.Tensor
    iou_preds: torch.Tensor
    stability_scores: torch.Tensor

    def to_raw(self) -> RawMasks:
        """The masks as raw masks (COCO RLE) with their scores."""
        return dense_raw_masks(self.masks, predicted_ious=self.iou_preds.tolist(), stability_scores=self.stability_scores.tolist())


@dataclass
class _CropMasks:
    """Survivors of one crop: masks in crop coordinates, boxes in image coordinates."""

    crop_box: list[int]
    masks: torch.Tensor  # (k, crop H, crop W) bool
    boxes: torch.Tensor  # (k, 4) xyxy inclusive
    iou_preds: torch.Tensor  # (k,)
    stability_scores: torch.Tensor  # (k,)


@dataclass(frozen=True)
class _CropJob:
    image_index: int
    crop_box: list[int]
    layer: int


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's (and the CPU allocator's) out-of-memory errors."""
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class AmgEngine:
    """Stock AMG's masks for a batch of images; `all_prompts` decodes all of a crop's prompts in one call.

    `image_batch` crops are encoded together and `points_per_batch` prompts decoded together;
    both shrink (halve) on out-of-memory errors and stay shrunk for later batches.
    """

    def __init__(self, segmenter: PromptableSegmenter, settings: AmgSettings, image_batch: int = 4, all_prompts: bool = False) -> None:
        if image_batch < 1:
            raise ValueError(f"image batch must be >= 1, got {image_batch}")
        self.segmenter = segmenter
        self.settings = settings
        self.image_batch = image_batch
        self.prompt_batch = None if all_prompts else settings.points_per_batch
        self.point_grids = build_all_layer_point_grids(
            settings.points_per_side, settings.crop_n_layers, settings.crop_n_points_downscale_factor
        )

    @torch.inference_mode()
    def masks(self, images: Sequence[np.ndarray]) -> list[ImageMasks]:
        """Each image's masks, as stock `SamAutomaticMaskGenerator.generate` returns them."""
        return self._run(images, lambda image, found: found)

    @torch.inference_mode()
    def raw_masks(self, images: Sequence[np.ndarray]) -> list[RawMasks]:
        """Each image's masks as raw masks, encoded as soon as the image's last crop is decoded."""
        return self._run(images, lambda image, found: found.to_raw())

    def _run(self, images: Sequence[np.ndarray], finish: Callable[[np.ndarray, ImageMasks], T]) -> list[T]:
        """Encode crops `image_batch` at a time; finish each image as soon as its last crop is decoded."""
        jobs, crops_left = [], []
        for index, image in enumerate(images):
            boxes, layers = generate_crop_boxes(image.shape[:2], self.settings.crop_n_layers, self.settings.crop_overlap_ratio)
            jobs += [_CropJob(index, box, layer) for box, layer in zip(boxes, layers)]
            crops_left.append(len(boxes))
        found: list[list[_CropMasks]] = [[] for _ in images]
        results: list[Any] = [None] * len(images)
        start = 0
        while start < len(jobs):
            chunk = jobs[start : start + self.image_batch]
            crops = [_cut(images[job.image_index], job.crop_box) for job in chunk]
            embeddings = self._retry_on_oom(lambda: self.segmenter.embed(crops), "image_batch")
            if embeddings is None:
                continue
            for job, crop, embedding in zip(chunk, crops, embeddings):
                image = images[job.image_index]
                found[job.image_index].append(self._retry_on_oom(lambda: self._crop(embedding, crop, job, image.shape[:2]), "prompt_batch"))
                crops_left[job.image_index] -= 1
                if crops_left[job.image_index] == 0:
                    results[job.image_index] = finish(image, self._merge_crops(found[job.image_index], image.shape[:2]))
                    found[job.image_index] = []
            start += len(chunk)
        return results

    def _retry_on_oom(self, work: Callable[[], T], knob: str) -> T | None:
        """Run `work`; on out-of-memory halve `knob` and redo (None tells the caller to re-plan)."""
        while True:
            try:
                return work()
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not is_out_of_memory(error):
                    raise
                if knob == "image_batch":
                    if self.image_batch == 1:
                        raise
                    self.image_batch //= 2
                    _release_cached_memory()
                    return None
                prompts = min(self.prompt_batch or self._points_in_grid(), self._points_in_grid())
                if prompts == 1:
                    raise
                self.prompt_batch = prompts // 2
                _release_cached_memory()

    def _points_in_grid(self) -> int:
        return max(len(grid) for grid in self.point_grids)

    def _crop(self, embedding: Any, crop: np.ndarray, job: _CropJob, image_size: tuple[int, int]) -> _CropMasks:
        """Decode the crop's point grid, filter like stock `_process_batch`, then box NMS like `_process_crop`."""
        height, width = crop.shape[:2]
        points = torch.as_tensor(self.point_grids[job.layer] * np.array([[width, height]]), device=self.segmenter.device)
        step = self.prompt_batch or len(points)
        batches = [self._prompts(embedding, points[i : i + step], job.crop_box, image_size) for i in range(0, len(points), step)]
        masks, boxes, iou_preds, stability = (torch.cat([batch[part] for batch in batches]) for part in range(4))
        keep = batched_nms(boxes.float(), iou_preds, torch.zeros_like(boxes[:, 0]), iou_threshold=self.settings.box_nms_thresh)
        x0, y0 = job.crop_box[0], job.crop_box[1]
        offset = torch.tensor([[x0, y0, x0, y0]], device=boxes.device)
        return _CropMasks(job.crop_box, masks[keep], boxes[keep] + offset, iou_preds[keep], stability[keep])

    def _prompts(self, embedding: Any, points: torch.Tensor, crop_box: list[int], image_size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """(masks, boxes in crop coordinates, IoUs, stability scores) of one prompt batch's surviving candidates."""
        settings, segmenter = self.settings, self.segmenter
        min_iou = settings.pred_iou_thresh if settings.pred_iou_thresh > 0.0 else -math.inf  # stock filters only above 0
        low_res, iou_preds = segmenter.predict_candidates(embedding, points, min_iou)
        masks, kept_ious, kept_stability = [], [], []
        for start in range(0, len(low_res), UPSCALE_ROWS):
            logits, ious = segmenter.upscale(embedding, low_res[start : start + UPSCALE_ROWS]), iou_preds[start : start + UPSCALE_ROWS]
            stability = calculate_stability_score(logits, segmenter.mask_threshold, settings.stability_score_offset)
            if settings.stability_score_thresh > 0.0:
                keep = stability >= settings.stability_score_thresh
                logits, ious, stability = logits[keep], ious[keep], stability[keep]
            masks.append(logits > segmenter.mask_threshold)
            kept_ious.append(ious)
            kept_stability.append(stability)
        if not masks:  # no candidate passed the predicted-IoU filter
            masks, kept_ious, kept_stability = [torch.zeros((0, *_crop_size(crop_box)), dtype=torch.bool, device=low_res.device)], [iou_preds], [iou_preds]
        masks, iou_preds, stability = torch.cat(masks), torch.cat(kept_ious), torch.cat(kept_stability)
        boxes = batched_mask_to_box(masks)
        keep = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, image_size[1], image_size[0]])
        if not torch.all(keep):
            masks, boxes, iou_preds, stability = masks[keep], boxes[keep], iou_preds[keep], stability[keep]
        return masks, boxes, iou_preds, stability

    def _merge_crops(self, crops: list[_CropMasks], image_size: tuple[int, int]) -> ImageMasks:
        """Stock `generate`'s tail: NMS across crops (smaller crops win), then `min_mask_region_area`."""
        height, width = image_size
        if len(crops) == 1 and crops[0].masks.shape[1:] == (height, width):
            masks, boxes = crops[0].masks, crops[0].boxes
        else:
            masks = torch.cat([_uncrop(crop.masks, crop.crop_box, height, width) for crop in crops])
            boxes = torch.cat([crop.boxes for crop in crops])
        iou_preds = torch.cat([crop.iou_preds for crop in crops])
        stability = torch.cat([crop.stability_scores for crop in crops])
        if len(crops) > 1:
            crop_boxes = torch.tensor([crop.crop_box for crop in crops for _ in range(len(crop.boxes))], device=boxes.device)
            scores = 1 / box_area(crop_boxes.reshape(-1, 4))
            keep = batched_nms(boxes.float(), scores, torch.zeros_like(boxes[:, 0]), iou_threshold=self.settings.crop_nms_thresh)
            masks, boxes, iou_preds, stability = masks[keep], boxes[keep], iou_preds[keep], stability[keep]
        if self.settings.min_mask_region_area > 0:
            masks, keep = self._remove_small_regions(masks)
            iou_preds, stability = iou_preds[keep.to(iou_preds.device)], stability[keep.to(stability.device)]
        return ImageMasks(masks, iou_preds, stability)

    def _remove_small_regions(self, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stock `postprocess_small_regions`: fill holes, drop islands (OpenCV, on the host), NMS preferring unchanged.

        Returns the cleaned masks that survive and their indices among `masks`."""
        area = self.settings.min_mask_region_area
        cleaned, unchanged = [], []
        for mask in masks.cpu().numpy():
            mask, holes_changed = remove_small_regions(mask, area, mode="holes")
            mask, islands_changed = remove_small_regions(mask, area, mode="islands")
            cleaned.append(torch.as_tensor(mask))
            unchanged.append(float(not (holes_changed or islands_changed)))
        if not cleaned:
            return masks, torch.zeros(0, dtype=torch.long)
        full = torch.stack(cleaned)
        boxes = batched_mask_to_box(full)
        nms = max(self.settings.box_nms_thresh, self.settings.crop_nms_thresh)
        keep = batched_nms(boxes.float(), torch.as_tensor(unchanged), torch.zeros_like(boxes[:, 0]), iou_threshold=nms)
        return full[keep].to(masks.device), keep


def _cut(image: np.ndarray, crop_box: list[int]) -> np.ndarray:
    x0, y0, x1, y1 = crop_box
    return image[y0:y1, x0:x1, :]


def _crop_size(crop_box: list[int]) -> tuple[int, int]:
    x0, y0, x1, y1 = crop_box
    return y1 - y0, x1 - x0


def _uncrop(masks: torch.Tensor, crop_box: list[int], height: int, width: int) -> torch.Tensor:
    """(k, crop H, crop W) -> (k, H, W), zero outside the crop."""
    x0, y0, x1, y1 = crop_box
    full = torch.zeros((masks.shape[0], height, width), dtype=masks.dtype, device=masks.device)
    full[:, y0:y1, x0:x1] = masks
    return full


def _release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
