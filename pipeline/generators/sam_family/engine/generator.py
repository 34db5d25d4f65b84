"""The base of the generators whose masks come from the batched engine (`sam`, `sam3` in points mode).

Such a generator only says how to build its network behind the engine's interface
(`build_segmenter`) and whether it runs in fast arithmetic (`fast`); this class builds the
segmenter and the engine on first use, so a driver that only needs `settings_hash` never
holds the network, and hands the masks stage's batches to `AmgEngine.raw_masks`. Its config
extends `AmgSettings`, which the engine reads as they are.
"""

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pipeline.generators.sam_family.checkpoint_generator import CheckpointGenerator
from pipeline.generators.sam_family.engine.amg import AmgEngine
from pipeline.generators.sam_family.engine.segmenter import PromptableSegmenter
from pipeline.label_maps import LabelMapRule
from pipeline.raw_mask_format import RawMasks


class EngineGenerator(CheckpointGenerator):
    """A SAM-family generator on `AmgEngine`: its config is `AmgSettings` plus `CheckpointSettings` and its own fields."""

    def __init__(self, config: Any, rule: LabelMapRule = LabelMapRule(), model: torch.nn.Module | None = None) -> None:
        super().__init__(config, rule, model)
        self._segmenter: PromptableSegmenter | None = None
        self._engine: AmgEngine | None = None

    @property
    @abstractmethod
    def fast(self) -> bool:
        """Whether the network runs in fast (bf16) arithmetic, whose masks move slightly from exact mode's."""

    @abstractmethod
    def build_segmenter(self) -> PromptableSegmenter:
        """The network behind the engine's interface: `self.injected`, or the checkpoint's loaded on `self.device`."""

    @property
    def segmenter(self) -> PromptableSegmenter:
        """Built on first use, so a driver that only needs `settings_hash` never holds the network."""
        if self._segmenter is None:
            self._segmenter = self.build_segmenter()
        return self._segmenter

    @property
    def engine(self) -> AmgEngine:
        """The engine over `segmenter`; in fast mode on a GPU it decodes all of a crop's prompts in one call."""
        if self._engine is None:
            all_prompts = self.fast and self.device.type == "cuda"  # on a CPU one call's memory would grow with the grid
            self._engine = AmgEngine(self.segmenter, self.config, image_batch=self.batch_size, all_prompts=all_prompts)
        return self._engine

    def start(self) -> None:
        self.engine  # builds the network now: an unreadable or mismatched checkpoint fails here, once

    def regions(self, image: np.ndarray, image_id: str) -> RawMasks:
        return self.regions_batch([image], [image_id])[0]

    def regions_batch(self, images: Sequence[np.ndarray], image_ids: Sequence[str]) -> list[RawMasks]:
        return self.engine.raw_masks(images)
