"""Shared fixtures: real shard directories built from the offline sample photos."""

from pathlib import Path

import pytest
import torch

from pipeline.ingest import IngestConfig, ingest


@pytest.fixture(scope="session")
def sample_image_shards(tmp_path_factory) -> Path:
    """Image shard directory of the ten sample photos (original bytes) in three shards, with manifest.

    Session-scoped and shared: treat it as read-only.
    """
    out = tmp_path_factory.mktemp("sample_image_shards")
    ingest(IngestConfig(source="sample", out=out, shard_bytes=1_500_000, row_group_bytes=400_000))
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two shared cores: one torch thread per test process keeps small convolutions fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
