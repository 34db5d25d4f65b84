"""The local engine: one generator in this process, with threads around it, writing the planned shards.

Threads decode the next images and apply the label-map rule and encode the previous batch's
rows while the generator works on the current batch (`generate_outcomes`), so the device is
never idle waiting for PNG or Parquet work. `pipeline.masks` chooses this engine, one worker
process per device running it (`pipeline.device_workers`), or Ray (`pipeline.ray_engine`).
"""

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from pipeline.generators import MaskGenerator
from pipeline.mask_labelling import ImageRecord, MasksConfig, decode_or_error, generate_outcomes, read_records
from pipeline.shard_outputs import Outcome, Output, Plan, Rows, ShardReport, write_outputs

PREFETCH_PER_WORKER = 4


def _decoded_batches(
    image_shard: Path, pool: ThreadPoolExecutor, lookahead: int, batch_size: int, max_label_map_bytes: int
) -> Iterator[list[tuple[ImageRecord, Future]]]:
    """The shard's records in batches of `batch_size`, decoded on `pool` at least `lookahead` images ahead."""
    queue: deque[tuple[ImageRecord, Future]] = deque()
    for record in read_records(image_shard):
        queue.append((record, pool.submit(decode_or_error, record, max_label_map_bytes)))
        if len(queue) >= max(lookahead, batch_size):
            yield [queue.popleft() for _ in range(batch_size)]
    while queue:
        yield [queue.popleft() for _ in range(min(batch_size, len(queue)))]


def _image_rows(outputs: list[Output], record: ImageRecord, outcome: Outcome) -> list[Rows]:
    return [output.row(record, outcome) for output in outputs]


def _local_rows(
    generator: MaskGenerator, outputs: list[Output], image_shard: Path, pool: ThreadPoolExecutor, lookahead: int,
    max_label_map_bytes: int, progress: tqdm,
) -> Iterator[list[Rows]]:
    """Each image's rows in order, a batch at a time; threads decode the next images and apply the
    label-map rule and encode the previous batch's rows while the generator works."""
    encoding: deque[list[Future]] = deque()
    for batch in _decoded_batches(image_shard, pool, lookahead, generator.batch_size, max_label_map_bytes):
        records = [record for record, _ in batch]
        outcomes = generate_outcomes(generator, records, [future.result() for _, future in batch])
        encoding.append([pool.submit(_image_rows, outputs, record, outcome) for record, outcome in zip(records, outcomes)])
        while len(encoding) > 1:
            for future in encoding.popleft():
                yield future.result()
                progress.update(1)
    for futures in encoding:
        for future in futures:
            yield future.result()
            progress.update(1)


def run_local(config: MasksConfig, generator: MaskGenerator, plan: Plan, checksums: dict[str, str], progress: tqdm) -> list[ShardReport]:
    """The planned shards with one generator in this process, decoding and encoding on `workers` threads."""
    reports = []
    lookahead = config.workers * PREFETCH_PER_WORKER
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        for shard, outputs in plan:
            rows = _local_rows(generator, outputs, shard, pool, lookahead, config.max_label_map_bytes, progress)
            reports += write_outputs(outputs, shard.name, rows, config.row_group_bytes, checksums[shard.name])
    return reports
