"""Distributed training: two CPU processes on gloo train one model and agree on its weights."""

import json
import os
from pathlib import Path

import pytest

from model.checkpoints import load_codec, weights_hash
from model.training import distributed
from model.training.config import Partition, TrainConfig, preset_config
from model.training.trainer import run


def run_and_report(config: TrainConfig) -> None:
    """One rank: train, then leave the hash of its final weights for the test to compare."""
    summary = run(config).summary
    Path(config.out, f"rank{os.environ['RANK']}.json").write_text(json.dumps(summary))


@pytest.mark.slow
def test_two_gloo_processes_train_identical_replicas(shards, tmp_path):
    images, masks = shards
    config = preset_config(
        "tiny", images, tmp_path, partition=Partition(masks), crop=64, batch_size=2, steps=3, val_every=3,
        checkpoint_every=3, nproc=2, device="cpu", progress=False,
    )
    distributed.spawn(run_and_report, config, config.nproc)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [summary["world_size"] for summary in ranks] == [2, 2]
    assert ranks[0]["weights_hash"] == ranks[1]["weights_hash"]
    assert weights_hash(load_codec(config.checkpoint_path)) == ranks[0]["weights_hash"]
    assert json.loads(config.metrics_path.read_text())["step"] == 3
