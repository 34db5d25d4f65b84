"""`--engine ray`: the masks stage on Ray Data, writing exactly the local engine's layout.

The pending image shards are read as one Ray dataset (`read_parquet`, order preserved);
a pool of actors, each holding one generator (one actor per GPU where the cluster has
GPUs, else up to `workers` CPU actors), labels the rows with the same `label_image` the
local engine uses, and the driver streams the results back, shard by shard in their
original order, through the same `write_mask_shard`.
So mask shards, reports and the manifest are identical whichever engine made them.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.data import ActorPoolStrategy
from tqdm import tqdm

from pipeline.generators import build_generator
from pipeline.manifest import RecordNote
from pipeline.mask_labelling import ImageRecord, MasksConfig, ShardReport, decode_or_error, label_image, write_mask_shard
from pipeline.shards import MASK_SCHEMA


class MaskActor:
    """Holds one generator (e.g. a SAM model on its GPU) and labels batches of image rows."""

    def __init__(self, generator: str, options: tuple[tuple[str, Any], ...], max_label_map_bytes: int) -> None:
        self.generator = build_generator(generator, dict(options))
        self.max_label_map_bytes = max_label_map_bytes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        columns: dict[str, list] = {key: [] for key in (*MASK_SCHEMA.names, "failure", "path")}
        for image_id, image, width, height, path in zip(batch["id"], batch["image"], batch["width"], batch["height"], batch["path"]):
            record = ImageRecord(str(image_id), bytes(image["bytes"]), int(width), int(height))
            row, failure = label_image(self.generator, record, decode_or_error(record, self.max_label_map_bytes))
            row["mask"] = row["mask"]["bytes"]
            row.update(failure="" if failure is None else failure.reason, path=Path(str(path)).name)
            for key, value in row.items():
                columns[key].append(value)
        return columns


def _actor_resources(workers: int) -> dict[str, Any]:
    """One actor per GPU when the cluster has GPUs, else up to `workers` single-CPU actors.

    CPU actors leave one CPU free for the Parquet read tasks that feed them; taking every
    CPU would starve the reads and deadlock the pipeline.
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return {"compute": ActorPoolStrategy(size=gpus), "num_gpus": 1}
    size = max(1, min(workers, int(resources.get("CPU", 1)) - 1))
    return {"compute": ActorPoolStrategy(size=size), "num_cpus": 1}


def _labelled_rows(config: MasksConfig, shards: list[Path]) -> Iterator[dict[str, Any]]:
    """Rows of every shard in order (`preserve_order`), each tagged with its shard's file name."""
    dataset = (
        ray.data.read_parquet([str(path) for path in shards], include_paths=True)
        .select_columns(["id", "image", "width", "height", "path"])
        .map_batches(
            MaskActor,
            fn_constructor_kwargs={
                "generator": config.generator, "options": config.options, "max_label_map_bytes": config.max_label_map_bytes
            },
            batch_size=1,
            batch_format="numpy",
            **_actor_resources(config.workers),
        )
    )
    yield from dataset.iter_rows()


def _shard_rows(rows: "PeekableRows", shard: str, progress: tqdm) -> Iterator[tuple[dict[str, Any], RecordNote | None]]:
    """Take the rows of `shard` off the front of the stream."""
    while rows.peek() is not None and rows.peek()["path"] == shard:
        row = rows.pop()
        mask_row = {key: row[key] for key in MASK_SCHEMA.names}
        mask_row["mask"] = {"bytes": bytes(row["mask"]), "path": None}
        progress.update(1)
        yield mask_row, (RecordNote(mask_row["id"], row["failure"]) if row["failure"] else None)


class PeekableRows:
    """An iterator that can look one row ahead (to see where a shard ends)."""

    def __init__(self, rows: Iterator[dict[str, Any]]) -> None:
        self._rows = rows
        self._next = next(rows, None)

    def peek(self) -> dict[str, Any] | None:
        return self._next

    def pop(self) -> dict[str, Any]:
        row, self._next = self._next, next(self._rows, None)
        return row


def run_ray(config: MasksConfig, shards: list[Path], checksums: dict[str, str], progress: tqdm) -> list[ShardReport]:
    """Mask `shards` on the Ray cluster at `config.ray_address` (a local instance when empty)."""
    if not shards:
        return []
    if not ray.is_initialized():
        ray.init(address=config.ray_address or None, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    settings_hash = config.build_generator().settings_hash
    rows = PeekableRows(_labelled_rows(config, shards))
    reports = [
        write_mask_shard(
            config.out, shard, _shard_rows(rows, shard.name, progress), settings_hash, config.row_group_bytes, checksums[shard.name]
        )
        for shard in shards
    ]
    assert rows.peek() is None, "Ray returned rows of no pending shard"
    return reports
