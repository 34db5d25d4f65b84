"""Settings of automatic masks: stock `SamAutomaticMaskGenerator`'s names and defaults (ViT-H's).

The batched engine (`engine.amg`) reads them as stock AMG does, and `sam2` hands them to its
package's `SAM2AutomaticMaskGenerator`, which takes the same names; each generator's config
extends them with its own fields.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class AmgSettings:
    """SamAutomaticMaskGenerator's settings, same names and defaults (ViT-H's)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def __post_init__(self) -> None:
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise ValueError(f"points_per_side and points_per_batch must be >= 1, got {self}")
