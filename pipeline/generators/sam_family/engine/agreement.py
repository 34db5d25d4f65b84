"""How far fast mode's masks are from exact mode's: measured, never assumed.

Two figures: the IoU of the two modes' masks for the same prompt (every point of the grid,
every one of the network's K outputs), and how well two label maps of an image agree as
partitions (`label_map_agreement`), which is what the masks stage finally stores.
"""

import numpy as np
import torch

from pipeline.generators.sam_family.engine.segmenter import PromptableSegmenter

UPSCALE_CHUNK = 64


def prompt_mask_ious(
    exact: PromptableSegmenter, fast: PromptableSegmenter, image: np.ndarray, points: torch.Tensor, prompt_batch: int = 64
) -> np.ndarray:
    """(P * K,) IoU between the two segmenters' full-size masks for each prompt and output on `image`.

    `points` (P, 2) are xy pixel coordinates; a pair where both masks are empty counts as 1.
    """
    ious = []
    with torch.inference_mode():
        embeddings = [segmenter.embed([image])[0] for segmenter in (exact, fast)]
        for start in range(0, len(points), prompt_batch):
            chunk = points[start : start + prompt_batch]
            masks = [_masks(segmenter, embedding, chunk) for segmenter, embedding in zip((exact, fast), embeddings)]
            both = (masks[0] & masks[1]).sum(dim=(1, 2))
            either = (masks[0] | masks[1]).sum(dim=(1, 2))
            ious.append(torch.where(either > 0, both / either.clamp(min=1), torch.ones_like(both, dtype=torch.float)).cpu())
    return torch.cat(ious).numpy()


def _masks(segmenter: PromptableSegmenter, embedding: object, points: torch.Tensor) -> torch.Tensor:
    low_res, _ = segmenter.predict_points(embedding, points.to(segmenter.device))
    low_res = low_res.flatten(0, 1)
    chunks = [segmenter.upscale(embedding, low_res[i : i + UPSCALE_CHUNK]) > segmenter.mask_threshold for i in range(0, len(low_res), UPSCALE_CHUNK)]
    return torch.cat(chunks)


def label_map_agreement(first: np.ndarray, second: np.ndarray) -> float:
    """Share of pixels that sit in matching regions, averaged over both directions (1.0: same partition).

    A region's match is the region of the other map it overlaps most; ids need not agree.
    """
    if first.shape != second.shape:
        raise ValueError(f"label maps differ in size: {first.shape} vs {second.shape}")
    pairs, counts = np.unique(np.stack([first.ravel(), second.ravel()]), axis=1, return_counts=True)
    shares = []
    for side in (0, 1):
        best: dict[int, int] = {}
        for region, count in zip(pairs[side].tolist(), counts.tolist()):
            best[region] = max(best.get(region, 0), count)
        shares.append(sum(best.values()) / first.size)
    return float(np.mean(shares))
