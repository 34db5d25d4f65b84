"""The training data: aligned crops of image and label map, relabelling, seeded order."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from model.training.config import Partition, TrainConfig, preset_config
from model.training.crops import CropWindow, random_window, relabel, resize_up
from model.training.decoding import decode_image
from pipeline.label_map_format import decode_label_map
from model.training.dataset import EpochSampler, build_training_data, split_records
from model.training.records import index_records
from pipeline.shards import IMAGE_SCHEMA, MASK_SCHEMA, shard_name
from training_runs import mask_row, png_bytes, write_shard


SMALL_TAG = 99


def coordinate_image(height: int, width: int, tag: int = 7) -> np.ndarray:
    """RGB image whose red/green channels hold x/y (blue: a tag): every pixel says where it came from."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs, ys, np.full_like(xs, tag)], axis=-1).astype(np.uint8)


def block_label_map(height: int, width: int, block: int = 8) -> np.ndarray:
    """Label map of block×block squares, ids increasing row-major (16-bit: more than 256 regions)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return ((ys // block) * 1000 + xs // block).astype(np.uint16)


def test_decoders_return_rgb_pixels_and_16_bit_region_ids():
    image = coordinate_image(40, 50)
    labels = block_label_map(40, 50, block=4)
    assert np.array_equal(decode_image(png_bytes(image), "r"), image)
    assert np.array_equal(decode_label_map(png_bytes(labels), "r"), labels)


def test_grayscale_images_decode_to_three_equal_channels():
    gray = coordinate_image(20, 30)[..., 0]
    decoded = decode_image(png_bytes(gray), "r")
    assert decoded.shape == (20, 30, 3)
    assert np.array_equal(decoded[..., 1], gray)


def test_undecodable_bytes_name_the_record():
    with pytest.raises(ValueError, match="record-7"):
        decode_image(b"not an image", "record-7")


@pytest.mark.parametrize("seed", range(6))
def test_random_crop_keeps_image_and_label_map_aligned(seed):
    image, labels = coordinate_image(200, 150), block_label_map(200, 150)
    window = random_window(200, 150, 64, np.random.default_rng(seed))
    crop_image, crop_labels = window.apply(image), window.apply(labels)
    xs, ys = crop_image[..., 0].astype(int), crop_image[..., 1].astype(int)
    assert np.array_equal(crop_labels, labels[ys, xs])


def test_flips_mirror_the_crop():
    image = coordinate_image(64, 64)
    flipped = CropWindow(0, 0, 64, flip_horizontal=True, flip_vertical=True).apply(image)
    assert flipped[0, 0, 0] == 63 and flipped[0, 0, 1] == 63
    assert flipped[63, 63, 0] == 0 and flipped[63, 63, 1] == 0


def test_flips_are_drawn_both_ways():
    windows = [random_window(100, 100, 64, np.random.default_rng(seed)) for seed in range(40)]
    assert {w.flip_horizontal for w in windows} == {True, False}
    assert {w.flip_vertical for w in windows} == {True, False}


def test_small_images_are_resized_up_with_nearest_labels():
    image, labels = coordinate_image(40, 60), block_label_map(40, 60, block=10)
    big_image, big_labels = resize_up(image, labels, 64)
    assert big_image.shape == (64, 96, 3) and big_labels.shape == (64, 96)
    assert set(np.unique(big_labels)) == set(np.unique(labels))


def test_large_images_are_not_resized():
    image = coordinate_image(100, 120)
    assert resize_up(image, None, 64)[0] is image


def test_relabel_numbers_regions_in_sorted_order_of_original_ids():
    labels = np.array([[40, 40, 7], [300, 7, 40]], dtype=np.uint16)
    expected = np.array([[1, 1, 0], [2, 0, 1]])
    relabelled = relabel(labels)
    assert relabelled.dtype == np.int64
    assert np.array_equal(relabelled, expected)
    _, torch_inverse = torch.unique(torch.from_numpy(labels.astype(np.int64)), return_inverse=True)
    assert np.array_equal(relabelled, torch_inverse.numpy())


def test_sampler_order_is_fixed_by_seed_and_epoch():
    first = list(EpochSampler(10, 2, seed=3))
    assert first == list(EpochSampler(10, 2, seed=3))
    assert first != list(EpochSampler(10, 2, seed=4))
    other_epoch = EpochSampler(10, 2, seed=3)
    other_epoch.set_position(1, 0)
    assert [key[0] for key in other_epoch] != [key[0] for key in first]


def test_sampler_resumes_mid_epoch_at_the_same_samples():
    sampler = EpochSampler(10, 2, seed=0)
    full = list(sampler)
    sampler.set_position(0, 3)
    assert list(sampler) == full[6:]
    assert len(sampler) == 4


def test_sampler_reads_row_groups_in_windows_but_covers_every_record():
    groups = [group for group in range(4) for _ in range(3)]
    order = [key[0] for key in EpochSampler(12, 3, seed=5, groups=groups, window=1)]
    assert sorted(order) == list(range(12))
    assert all(len({groups[i] for i in order[start : start + 3]}) == 1 for start in range(0, 12, 3))
    assert order != sorted(order)


def test_sampler_splits_whole_global_batches_across_ranks():
    ranks = [list(EpochSampler(11, 2, seed=0, rank=rank, world_size=2)) for rank in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 4
    assert not {key[0] for key in ranks[0]} & {key[0] for key in ranks[1]}


def test_sampler_refuses_datasets_smaller_than_a_batch():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        EpochSampler(3, 2, seed=0, world_size=2)


def image_row(record_id: str, pixels: np.ndarray) -> dict:
    """An image-shard row holding `pixels` as PNG."""
    height, width = pixels.shape[:2]
    return {"id": record_id, "image": {"bytes": png_bytes(pixels), "path": f"{record_id}.png"}, "width": width, "height": height}


@pytest.fixture
def coordinate_shards(tmp_path) -> tuple[Path, Path]:
    """Seven coordinate images (one smaller than the crop) with block label maps, over two shards."""
    sizes = [(200, 150), (150, 200), (96, 130), (180, 180), (160, 170), (140, 210), (48, 40)]
    tags = {size: SMALL_TAG if min(size) < 64 else 7 for size in sizes}
    for part, chunk in enumerate((sizes[:4], sizes[4:])):
        name = shard_name(part, 2)
        ids = [f"img-{part}-{i}" for i in range(len(chunk))]
        write_shard(tmp_path / "images" / name, IMAGE_SCHEMA, [image_row(i, coordinate_image(*hw, tags[hw])) for i, hw in zip(ids, chunk)])
        write_shard(tmp_path / "masks" / name, MASK_SCHEMA, [mask_row(i, block_label_map(*hw)) for i, hw in zip(ids, chunk)])
    return tmp_path / "images", tmp_path / "masks"


def loader_config(shards: tuple[Path, Path], tmp_path: Path, **overrides) -> TrainConfig:
    settings = {"partition": Partition(shards[1]), "crop": 64, "batch_size": 2, "num_workers": 0, "val_count": 1}
    return preset_config("tiny", shards[0], tmp_path / "run", **{**settings, **overrides})


def test_loader_crops_stay_aligned_and_relabelled(coordinate_shards, tmp_path):
    data = build_training_data(loader_config(coordinate_shards, tmp_path))
    checked = 0
    for epoch in range(3):
        data.sampler.set_position(epoch, 0)
        for batch in data.train:
            assert batch["image"].shape == (2, 3, 64, 64) and batch["image"].dtype == torch.uint8
            for image, label_map in zip(batch["image"].numpy(), batch["label_map"].numpy()):
                xs, ys = image[0].astype(int), image[1].astype(int)
                if image[2, 0, 0] == SMALL_TAG:
                    continue  # the resized-up image: interpolated coordinates, checked below
                expected = block_label_map(256, 256)[ys, xs]
                assert np.array_equal(label_map, relabel(expected))
                assert label_map.min() == 0 and np.array_equal(np.unique(label_map), np.arange(label_map.max() + 1))
                checked += 1
    assert checked >= 12


def test_images_smaller_than_the_crop_are_resized_up_with_their_label_maps(coordinate_shards, tmp_path):
    data = build_training_data(loader_config(coordinate_shards, tmp_path, val_count=0))
    small = next(i for i, record in enumerate(data.train.dataset.records) if record.id == "img-1-2")
    sample = data.train.dataset[(small, 0, 0)]
    assert sample["image"].shape == (3, 64, 64) and sample["label_map"].shape == (64, 64)
    assert int(sample["label_map"].max()) + 1 == len(np.unique(block_label_map(48, 40)))


def test_same_seed_gives_the_same_batches_with_or_without_workers(coordinate_shards, tmp_path):
    def batches(**overrides):
        data = build_training_data(loader_config(coordinate_shards, tmp_path, **overrides))
        return [batch for epoch in range(2) for batch in (data.sampler.set_position(epoch, 0), *data.train)[1:]]

    inline, workers, reseeded = batches(), batches(num_workers=2), batches(seed=1)
    assert len(inline) == len(workers) == 6
    for first, second in zip(inline, workers):
        assert all(torch.equal(first[name], second[name]) for name in first)
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(inline, reseeded))


def test_grid_partition_reads_no_masks(coordinate_shards, tmp_path):
    data = build_training_data(loader_config(coordinate_shards, tmp_path, partition=Partition()))
    assert set(next(iter(data.train))) == {"image"}


def test_validation_holds_out_the_same_ids_and_uses_centre_crops(coordinate_shards, tmp_path):
    records = index_records(*coordinate_shards)
    train, held_out = split_records(records, 2)
    assert {r.id for r in held_out} == {r.id for r in split_records(list(reversed(records)), 2)[1]}
    assert not {r.id for r in train} & {r.id for r in held_out}
    data = build_training_data(loader_config(coordinate_shards, tmp_path, val_count=2))
    first, second = list(data.val), list(data.val)
    assert torch.equal(first[0]["image"], second[0]["image"])


def test_images_the_masks_stage_could_not_label_are_left_out(coordinate_shards, tmp_path):
    images, masks = coordinate_shards
    failed = {**mask_row("img-1-1", np.zeros((140, 210), np.uint8)), "num_regions": 0}  # the failure marker
    rows = [mask_row("img-1-0", block_label_map(160, 170)), failed, mask_row("img-1-2", block_label_map(48, 40))]
    write_shard(masks / shard_name(1, 2), MASK_SCHEMA, rows)
    data = build_training_data(loader_config(coordinate_shards, tmp_path, val_count=0))
    assert data.unlabelled == ["img-1-1"]
    assert "img-1-1" not in {record.id for record in data.train.dataset.records}
    assert len(data.train.dataset) == 6
    assert sum(len(batch["image"]) for batch in data.train) == 6
    grid = build_training_data(loader_config(coordinate_shards, tmp_path, val_count=0, partition=Partition()))
    assert grid.unlabelled == [] and len(grid.train.dataset) == 7


def test_misaligned_mask_shards_name_the_file_and_record(coordinate_shards):
    images, masks = coordinate_shards
    rows = [mask_row(f"img-1-{i}", block_label_map(64, 64)) for i in range(3)]
    write_shard(masks / shard_name(1, 2), MASK_SCHEMA, rows[::-1])
    with pytest.raises(ValueError, match="part-00001-of-00002.parquet.*img-1-"):
        index_records(images, masks)


def test_swapped_shard_directories_are_refused(coordinate_shards):
    images, masks = coordinate_shards
    with pytest.raises(ValueError, match="expected images shards"):
        index_records(masks, images)


def test_label_maps_of_another_size_name_the_record(coordinate_shards, tmp_path):
    images, masks = coordinate_shards
    write_shard(masks / shard_name(1, 2), MASK_SCHEMA, [mask_row(f"img-1-{i}", block_label_map(64, 64)) for i in range(3)])
    data = build_training_data(loader_config(coordinate_shards, tmp_path, val_count=0))
    first = next(i for i, record in enumerate(data.train.dataset.records) if record.id == "img-1-0")
    with pytest.raises(ValueError, match="img-1-0: label map is 64x64"):
        data.train.dataset[(first, 0, 0)]
