"""`sam3`: SAM 3 (Meta, 2025) masks for every image, as one label map, in two modes.

- `mode=points` (default): "segment everything" as SAM 1's automatic mask generator does it
  (point grid, crops, predicted-IoU and stability filters, NMS, `min_mask_region_area`), over
  SAM 3's instance-interactive predictor (`predict_inst`), on the batched engine
  (`engine.amg.AmgEngine`) shared with `sam`; only the adapter (`sam3.segmenter`) differs.
- `mode=concepts`: SAM 3's concept segmentation, once per text prompt of `prompts`
  (comma-separated noun phrases; the default names broad kinds of things and ends with
  "object"). Instances scoring above `confidence_threshold` are ranked by score and kept as
  raw masks with their prompt and score; the same label-map rule makes them a partition. With
  `fill_with_points=true`, pixels no concept covers are filled with `points` masks (cut to
  those pixels, with their predicted IoU and stability score). mean_iou is the mean of the
  concept scores (and, when filling, of the point masks' predicted IoUs).

`fast=true` runs the network under bf16 autocast and (on a GPU) decodes all of a crop's prompts
at once; `fast=false` (default) keeps fp32 and `predict_inst`'s arithmetic.

Weights: `checkpoint=PATH` to the `sam3.pt` of facebook/sam3 (see the README, "SAM 3 masks";
nothing is downloaded). The file is checked against the network's parameters, and the
vocabulary (`vocabulary=PATH`, default: CLIP's, from open-clip-torch) is checked, when the
generator is built, so a wrong file stops the run before its first shard. Settings name
the weights by sha256; fields a mode does not use are left out of the settings.
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.generators.base import register
from pipeline.generators.sam_family.amg_settings import AmgSettings
from pipeline.generators.sam_family.checkpoint_generator import CheckpointSettings
from pipeline.generators.sam_family.engine.generator import EngineGenerator
from pipeline.generators.sam_family.sam3.network import SAM3_WEIGHTS, check_checkpoint, check_vocabulary, clip_vocabulary, load_sam3
from pipeline.generators.sam_family.sam3.segmenter import Sam3Segmenter
from pipeline.label_maps import LabelMapRule
from pipeline.manifest import file_sha256
from pipeline.raw_mask_format import RawMasks, dense_raw_masks

SAM3_MODES = ("points", "concepts")
DEFAULT_PROMPTS = "person, animal, vehicle, building, furniture, plant, food, sky, ground, water, object"
CONCEPT_FIELDS = ("prompts", "confidence_threshold", "fill_with_points")
AMG_FIELDS = tuple(field.name for field in dataclasses.fields(AmgSettings))


@dataclass(frozen=True)
class Sam3Config(AmgSettings, CheckpointSettings):
    """AMG settings (points mode, and filling in concepts mode), concept prompts, weights and device."""

    mode: str = "points"
    prompts: str = DEFAULT_PROMPTS
    confidence_threshold: float = 0.5
    fill_with_points: bool = False
    fast: bool = False  # bf16 autocast, as SAM 3's own examples run on GPUs; masks move slightly from fp32's
    vocabulary: str = ""

    def __post_init__(self) -> None:
        AmgSettings.__post_init__(self)
        CheckpointSettings.__post_init__(self)
        if self.mode not in SAM3_MODES:
            raise ValueError(f"unknown sam3 mode {self.mode!r}; choose one of {', '.join(SAM3_MODES)}")
        if self.mode == "concepts" and not self.prompt_list:
            raise ValueError("sam3 mode=concepts needs at least one text prompt in prompts (comma-separated)")
        if not 0.0 <= self.confidence_threshold < 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1), got {self.confidence_threshold}")

    @property
    def model(self) -> str:
        """SAM 3 has one released image model (its official file: `sam3.network.SAM3_WEIGHTS`)."""
        return "sam3"

    @property
    def prompt_list(self) -> tuple[str, ...]:
        return tuple(prompt.strip() for prompt in self.prompts.split(",") if prompt.strip())


@register
class Sam3Generator(EngineGenerator):
    """SAM 3 masks; coverage is the share of pixels some mask covered."""

    name = "sam3"
    Config = Sam3Config
    weights_family = SAM3_WEIGHTS

    def __init__(self, config: Sam3Config, rule: LabelMapRule = LabelMapRule(), model: torch.nn.Module | None = None) -> None:
        super().__init__(config, rule, model)
        self.vocabulary = check_vocabulary(Path(config.vocabulary) if config.vocabulary else clip_vocabulary())
        self._vocabulary_sha256 = file_sha256(self.vocabulary)
        if model is None:
            check_checkpoint(self.checkpoint_path(), self.vocabulary)

    @property
    def fast(self) -> bool:
        return self.config.fast

    def build_segmenter(self) -> Sam3Segmenter:
        network = self.injected if self.injected is not None else load_sam3(self.checkpoint_path(), self.vocabulary, self.device)
        return Sam3Segmenter(network, fast=self.config.fast)

    def identity(self) -> dict[str, Any]:
        """The weights' and the text vocabulary's sha256 (the vocabulary decides how prompts are read)."""
        return {**super().identity(), "vocabulary": {"sha256": self._vocabulary_sha256}}

    def network_settings(self) -> dict[str, Any]:
        settings = super().network_settings()
        for name in (*self._unused_fields(), "vocabulary"):  # the vocabulary is named by content in `identity`
            settings["config"].pop(name)
        return settings

    def _unused_fields(self) -> tuple[str, ...]:
        """Config fields that cannot change this mode's masks, left out of the settings and their hash."""
        if self.config.mode == "points":
            return CONCEPT_FIELDS
        return () if self.config.fill_with_points else AMG_FIELDS

    def regions_batch(self, images: Sequence[np.ndarray], image_ids: Sequence[str]) -> list[RawMasks]:
        if self.config.mode == "points":
            return super().regions_batch(images, image_ids)
        return [self._concept_masks(image) for image in images]

    def _concept_masks(self, image: np.ndarray) -> RawMasks:
        """Concept instances ranked by score with their prompts (then points masks cut to the uncovered pixels)."""
        segmenter = self.segmenter
        (embedding,) = segmenter.embed([image])
        found = segmenter.concepts(embedding, self.config.prompt_list, self.config.confidence_threshold)
        masks = torch.cat([concept.masks for concept in found])
        scores = torch.cat([concept.scores for concept in found]).cpu()
        prompts = [prompt for prompt, concept in zip(self.config.prompt_list, found) for _ in range(len(concept.scores))]
        order = torch.argsort(scores, descending=True, stable=True)
        ranked = {"prompts": [prompts[index] for index in order.tolist()], "scores": scores[order].tolist()}
        if not self.config.fill_with_points:
            return dense_raw_masks(masks[order.to(masks.device)], **ranked)
        points = self.engine.masks([image])[0]
        remainders = points.masks & ~masks.any(dim=0).to(points.masks.device)
        filled = remainders.flatten(1).any(dim=1).cpu()
        none = [None] * int(filled.sum())
        return dense_raw_masks(
            torch.cat([masks[order.to(masks.device)].to(remainders.device), remainders[filled.to(remainders.device)]]),
            prompts=ranked["prompts"] + none,
            scores=ranked["scores"] + none,
            predicted_ious=[None] * len(order) + points.iou_preds.cpu()[filled].tolist(),
            stability_scores=[None] * len(order) + points.stability_scores.cpu()[filled].tolist(),
        )
