"""The masks stage feeds generators batches of images and writes what one image at a time writes."""

import pytest
from tqdm import tqdm
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.generators.base import build_generator
from pipeline.generators.grid import GridConfig, GridGenerator
from pipeline.local_engine import run_local
from pipeline.masks import MasksConfig, image_shard_checksums, make_masks
from pipeline.shards import list_shards, read_rows


class BatchingGrid(GridGenerator):
    """`grid` that takes three images per call, records each call, and fails on one image id."""

    batch_size = 3

    def __init__(self, fail_on: str = "") -> None:
        super().__init__(GridConfig(grid=3))
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def regions_batch(self, images, image_ids):
        self.calls.append(list(image_ids))
        if self.fail_on in image_ids:
            raise ValueError(f"cannot segment {self.fail_on}")
        return super().regions_batch(images, image_ids)


def shard_bytes(directory) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in list_shards(directory)}


def run_with(generator, images, out) -> None:
    config = MasksConfig(images=images, out=out, generator="grid", options=(("grid", "3"),))
    with tqdm(disable=True) as progress:
        plan = [(shard, config.outputs(generator)) for shard in list_shards(images)]
        run_local(config, generator, plan, image_shard_checksums(images), progress)


def test_batches_write_the_shards_of_one_image_at_a_time(sample_image_shards, tmp_path):
    make_masks(MasksConfig(images=sample_image_shards, out=tmp_path / "single", generator="grid", options=(("grid", "3"),)))
    batching = BatchingGrid()
    assert batching.settings_hash == build_generator("grid", {"grid": "3"}).settings_hash
    run_with(batching, sample_image_shards, tmp_path / "batched")
    assert shard_bytes(tmp_path / "batched") == shard_bytes(tmp_path / "single")
    rows_per_shard = [len(list(read_rows(path, ["id"]))) for path in list_shards(sample_image_shards)]
    expected_calls = [min(3, rows - start) for rows in rows_per_shard for start in range(0, rows, 3)]
    assert [len(call) for call in batching.calls] == expected_calls


def test_a_failing_image_costs_only_its_own_row_in_a_batch(sample_image_shards, tmp_path):
    first_shard = list_shards(sample_image_shards)[0]
    ids = [row["id"] for row in read_rows(first_shard, ["id"])]
    batching = BatchingGrid(fail_on=ids[1])
    run_with(batching, sample_image_shards, tmp_path)
    rows = list(read_rows(tmp_path / first_shard.name))
    assert [row["num_regions"] for row in rows[:3]] == [9, 0, 9]
    assert batching.calls[:4] == [ids[:3], [ids[0]], [ids[1]], [ids[2]]]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--devices", "cuda:0"], "--devices needs a generator with a device setting"),
        (["--devices", "cuda:0,", "--generator", "sam2"], "--devices has an empty entry"),
        (["--devices", "cuda:0", "--engine", "ray"], "--devices is for the local engine"),
    ],
)
def test_wrong_devices_are_refused_in_one_line(sample_image_shards, tmp_path, options, message):
    args = ["masks", str(sample_image_shards), "--out", str(tmp_path / "out"), "--generator", "grid", *options]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and result.output.startswith("error: ") and message in result.output
    assert not (tmp_path / "out").exists()

