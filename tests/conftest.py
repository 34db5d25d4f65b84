"""Fixtures shared by several test files: real shard directories built from the offline sample photos, a
lock held by another process, one torch thread."""

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from pipeline.ingest import IngestConfig, ingest
from pipeline.shards import MASK_SCHEMA, list_shards, read_rows
from training_runs import blocks, mask_row, write_shard


@pytest.fixture(scope="session")
def sample_image_shards(tmp_path_factory) -> Path:
    """Image shard directory of the ten sample photos (original bytes) in three shards, with manifest.

    Session-scoped and shared: treat it as read-only.
    """
    out = tmp_path_factory.mktemp("sample_image_shards")
    ingest(IngestConfig(source="sample", out=out, shard_bytes=1_500_000, row_group_bytes=400_000))
    return out


@pytest.fixture(scope="module")
def shards(sample_image_shards, tmp_path_factory) -> tuple[Path, Path]:
    """The sample image shards and aligned mask shards of 48-pixel block label maps (`training_runs.blocks`)."""
    masks = tmp_path_factory.mktemp("block_masks")
    for shard in list_shards(sample_image_shards):
        rows = read_rows(shard, ["id", "width", "height"])
        write_shard(masks / shard.name, MASK_SCHEMA, [mask_row(row["id"], blocks(row["height"], row["width"])) for row in rows])
    return sample_image_shards, masks


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two shared cores: one torch thread per test process keeps small convolutions fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


HOLD_LOCK = """
import sys, time
from pathlib import Path
from pipeline.output_folder import locked_output
with locked_output(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def lock_held_by_another_process() -> Callable:
    """`with lock_held_by_another_process(out):` a second process holds OUT's lock for the block."""

    @contextmanager
    def hold(out: Path) -> Iterator[None]:
        out.mkdir(parents=True, exist_ok=True)
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            yield
        finally:
            holder.kill()
            holder.wait()

    return hold
