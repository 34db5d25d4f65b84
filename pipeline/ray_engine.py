"""`--engine ray`: the masks stage on Ray Data, writing exactly the local engine's layout.

The pending image shards are read as one Ray dataset (`read_parquet`, order preserved);
a pool of actors, each holding one generator (one actor per GPU where the cluster has
GPUs, else up to `workers` CPU actors), labels batches of rows with the same
`generate_outcomes` and `mask_row` the local engine uses (a GPU actor takes
`GPU_ROWS_PER_CALL` rows per call and feeds them to its generator's `generate_batch`), and the driver streams the results back, shard by shard in their
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
from pipeline.masks import ImageRecord, MasksConfig, ShardReport, decode_or_error, generate_outcomes, mask_row, write_mask_shard
from pipeline.shards import MASK_SCHEMA

GPU_ROWS_PER_CALL = 16


class MaskActor:
    """Holds one generator (e.g. a SAM model on its GPU) and labels batches of image rows."""

    def __init__(self, generator: str, options: tuple[tuple[str, Any], ...]) -> None:
        self.generator = build_generator(generator, dict(options))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        columns: dict[str, list] = {key: [] for key in (*MASK_SCHEMA.names, "failure", "path")}
        records = [
            ImageRecord(str(image_id), bytes(image["bytes"]), int(width), int(height))
            for image_id, image, width, height in zip(batch["id"], batch["image"], batch["width"], batch["height"])
        ]
        step = self.generator.batch_size
        outcomes = []
        for start in range(0, len(records), step):
            chunk = records[start : start + step]
            outcomes += generate_outcomes(self.generator, chunk, [decode_or_error(record.data) for record in chunk])
        for record, outcome, path in zip(records, outcomes, batch["path"]):
            row, failure = mask_row(self.generator, record, outcome)
            row["mask"] = row["mask"]["bytes"]
            row.update(failure="" if failure is None else failure.reason, path=Path(str(path)).name)
            for key, value in row.items():
                columns[key].append(value)
        return columns


def _actor_resources(workers: int) -> dict[str, Any]:
    """One actor per GPU (fed several rows per call) when the cluster has GPUs, else up to `workers` single-CPU actors.

    CPU actors leave one CPU free for the Parquet read tasks that feed them; taking every
    CPU would starve the reads and deadlock the pipeline.
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return {"compute": ActorPoolStrategy(size=gpus), "num_gpus": 1, "batch_size": GPU_ROWS_PER_CALL}
    size = max(1, min(workers, int(resources.get("CPU", 1)) - 1))
    return {"compute": ActorPoolStrategy(size=size), "num_cpus": 1, "batch_size": 1}


def _labelled_rows(config: MasksConfig, shards: list[Path]) -> Iterator[dict[str, Any]]:
    """Rows of every shard in order (`preserve_order`), each tagged with its shard's file name."""
    dataset = (
        ray.data.read_parquet([str(path) for path in shards], include_paths=True)
        .select_columns(["id", "image", "width", "height", "path"])
        .map_batches(
            MaskActor,
            fn_constructor_kwargs={"generator": config.generator, "options": config.options},
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


def run_ray(config: MasksConfig, shards: list[Path], progress: tqdm) -> list[ShardReport]:
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
        write_mask_shard(config.out, shard, _shard_rows(rows, shard.name, progress), settings_hash, config.row_group_bytes)
        for shard in shards
    ]
    assert rows.peek() is None, "Ray returned rows of no pending shard"
    return reports
