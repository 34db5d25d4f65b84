"""Shared fixtures: real shard directories built from the offline sample photos."""

from pathlib import Path

import pytest

from pipeline.ingest import IngestConfig, ingest


@pytest.fixture(scope="session")
def sample_image_shards(tmp_path_factory) -> Path:
    """Image shard directory of the ten sample photos (original bytes) in three shards, with manifest.

    Session-scoped and shared: treat it as read-only.
    """
    out = tmp_path_factory.mktemp("sample_image_shards")
    ingest(IngestConfig(source="sample", out=out, shard_bytes=1_500_000, row_group_bytes=400_000))
    return out
