"""SAM's automatic mask generation without its RLE detour: the same masks, made faster.

Stock `SamAutomaticMaskGenerator` encodes every candidate mask to run-length form,
deep-copies those lists on every batch, decodes them again and computes stability scores
even when no threshold uses them. Here masks stay boolean, are cut to their boxes at
once (so memory follows object size), and optional work runs only when a setting needs it.
Every step that decides which masks survive, and their order, calls the same
segment-anything functions on the same tensors, so the output equals the stock
generator's (`benchmarks/bench_masks.py` checks this mask for mask).
"""

from dataclasses import dataclass

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.utils.amg import (
    batch_iterator,
    batched_mask_to_box,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
)
from torchvision.ops.boxes import batched_nms, box_area

from pipeline.generators.amg_engine import AmgSettings
from pipeline.label_maps import RegionMask


@dataclass
class _Candidates:
    """Masks of one crop, in crop coordinates, with the tensors the filters need."""

    masks: list[RegionMask]
    boxes: torch.Tensor  # (K, 4) xyxy inclusive, crop coordinates
    iou_preds: torch.Tensor  # (K,)

    def select(self, keep: torch.Tensor) -> "_Candidates":
        indices = keep.nonzero().flatten().tolist() if keep.dtype == torch.bool else keep.tolist()
        return _Candidates([self.masks[i] for i in indices], self.boxes[indices], self.iou_preds[indices])


def _box_crops(masks: torch.Tensor, boxes: torch.Tensor, iou_preds: torch.Tensor) -> list[RegionMask]:
    """(K, H, W) bool masks -> RegionMasks holding only the pixels inside each box."""
    pixels = masks.cpu().numpy()
    regions = []
    for mask, (x0, y0, x1, y1), iou in zip(pixels, boxes.tolist(), iou_preds.tolist()):
        regions.append(RegionMask((x0, y0, x1 + 1, y1 + 1), np.ascontiguousarray(mask[y0 : y1 + 1, x0 : x1 + 1]), iou))
    return regions


class FastAutomaticMaskGenerator:
    """Drop-in for SamAutomaticMaskGenerator.generate returning RegionMasks in stock order."""

    def __init__(self, predictor: SamPredictor, settings: AmgSettings) -> None:
        self.predictor = predictor
        self.settings = settings
        self.point_grids = build_all_layer_point_grids(
            settings.points_per_side, settings.crop_n_layers, settings.crop_n_points_downscale_factor
        )

    @torch.inference_mode()
    def generate(self, image: np.ndarray) -> list[RegionMask]:
        """(H, W, 3) uint8 -> masks, each with its box in image coordinates."""
        orig_size = image.shape[:2]
        crop_boxes, layer_indices = generate_crop_boxes(orig_size, self.settings.crop_n_layers, self.settings.crop_overlap_ratio)
        masks, boxes, iou_preds, crop_areas = [], [], [], []
        for crop_box, layer in zip(crop_boxes, layer_indices):
            found = self._process_crop(image, crop_box, layer, orig_size)
            x0, y0 = crop_box[0], crop_box[1]
            masks += [RegionMask((m.box[0] + x0, m.box[1] + y0, m.box[2] + x0, m.box[3] + y0), m.pixels, m.predicted_iou) for m in found.masks]
            boxes.append(found.boxes + torch.tensor([x0, y0, x0, y0], device=found.boxes.device))
            iou_preds.append(found.iou_preds)
            crop_areas.append(box_area(torch.tensor([crop_box], dtype=torch.float)).expand(len(found.masks)))
        merged = _Candidates(masks, torch.cat(boxes), torch.cat(iou_preds))
        if len(crop_boxes) > 1:
            scores = (1 / torch.cat(crop_areas)).to(merged.boxes.device)
            merged = merged.select(batched_nms(merged.boxes.float(), scores, torch.zeros(len(masks)), self.settings.crop_nms_thresh))
        if self.settings.min_mask_region_area > 0:
            merged = self._remove_small_regions(merged, orig_size)
        return merged.masks

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int, orig_size: tuple[int, ...]) -> _Candidates:
        x0, y0, x1, y1 = crop_box
        cropped = image[y0:y1, x0:x1, :]
        self.predictor.set_image(cropped)
        points_for_image = self.point_grids[layer] * np.array(cropped.shape[:2])[None, ::-1]
        batches = [
            self._process_batch(points, cropped.shape[:2], crop_box, orig_size)
            for (points,) in batch_iterator(self.settings.points_per_batch, points_for_image)
        ]
        self.predictor.reset_image()
        found = _Candidates(
            [mask for batch in batches for mask in batch.masks],
            torch.cat([batch.boxes for batch in batches]),
            torch.cat([batch.iou_preds for batch in batches]),
        )
        keep = batched_nms(found.boxes.float(), found.iou_preds, torch.zeros(len(found.masks)), self.settings.box_nms_thresh)
        return found.select(keep)

    def _process_batch(self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int], orig_size: tuple[int, ...]) -> _Candidates:
        predictor, settings = self.predictor, self.settings
        in_points = torch.as_tensor(predictor.transform.apply_coords(points, im_size), device=predictor.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        logits, iou_preds, _ = predictor.predict_torch(in_points[:, None, :], in_labels[:, None], multimask_output=True, return_logits=True)
        logits, iou_preds = logits.flatten(0, 1), iou_preds.flatten(0, 1)
        if settings.pred_iou_thresh > 0.0:
            keep = iou_preds > settings.pred_iou_thresh
            logits, iou_preds = logits[keep], iou_preds[keep]
        if settings.stability_score_thresh > 0.0:
            keep = calculate_stability_score(logits, predictor.model.mask_threshold, settings.stability_score_offset) >= settings.stability_score_thresh
            logits, iou_preds = logits[keep], iou_preds[keep]
        masks = logits > predictor.model.mask_threshold
        boxes = batched_mask_to_box(masks)
        keep = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
        if not torch.all(keep):
            masks, boxes, iou_preds = masks[keep], boxes[keep], iou_preds[keep]
        return _Candidates(_box_crops(masks, boxes, iou_preds), boxes, iou_preds)

    def _remove_small_regions(self, found: _Candidates, orig_size: tuple[int, ...]) -> _Candidates:
        """Stock `postprocess_small_regions` on boolean masks: fill holes, drop islands, re-run NMS."""
        height, width = orig_size
        cleaned, unchanged = [], []
        for region in found.masks:
            mask, holes_changed = remove_small_regions(region.to_full(height, width), self.settings.min_mask_region_area, mode="holes")
            mask, islands_changed = remove_small_regions(mask, self.settings.min_mask_region_area, mode="islands")
            cleaned.append(torch.as_tensor(mask))
            unchanged.append(float(not (holes_changed or islands_changed)))
        full = torch.stack(cleaned) if cleaned else torch.zeros((0, height, width), dtype=torch.bool)
        boxes = batched_mask_to_box(full)
        nms = max(self.settings.box_nms_thresh, self.settings.crop_nms_thresh)
        keep = batched_nms(boxes.float(), torch.as_tensor(unchanged), torch.zeros(len(boxes)), iou_threshold=nms)
        regions = _box_crops(full, boxes, found.iou_preds)
        masks = [regions[i] if unchanged[i] == 0.0 else found.masks[i] for i in keep.tolist()]
        return _Candidates(masks, boxes[keep], found.iou_preds[keep])
