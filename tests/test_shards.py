"""The shard format: names, atomic writing, row groups, listing, and Hugging Face compatibility."""

import io

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.shards import (
    IMAGE_SCHEMA,
    MASK_SCHEMA,
    ShardWriter,
    list_shards,
    parse_shard_name,
    read_rows,
    shard_kind,
    shard_name,
)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_row(index: int, size: int = 4000) -> dict:
    payload = np.random.default_rng(index).integers(0, 256, size, dtype=np.uint8).tobytes()
    return {"id": f"img-{index}", "image": {"bytes": payload, "path": None}, "width": 1, "height": 1}


def test_shard_names_say_their_place_and_the_total():
    assert shard_name(2, 10) == "part-00002-of-00010.parquet"
    assert parse_shard_name("part-00002-of-00010.parquet") == (2, 10)
    assert parse_shard_name("part-00002-of-00010.parquet.incomplete") is None
    with pytest.raises(ValueError, match="outside"):
        shard_name(10, 10)


def test_writer_renames_into_place_and_splits_row_groups_by_bytes(tmp_path):
    path = tmp_path / shard_name(0, 1)
    with ShardWriter(path, IMAGE_SCHEMA, row_group_bytes=10_000) as writer:
        for index in range(7):
            writer.write(image_row(index))
            assert not path.exists() and writer.incomplete_path.exists()
    assert not writer.incomplete_path.exists()
    parquet = pq.ParquetFile(path)
    assert parquet.metadata.num_rows == 7
    assert [parquet.metadata.row_group(group).num_rows for group in range(parquet.num_row_groups)] == [3, 3, 1]
    assert [row["id"] for row in read_rows(path, columns=["id"])] == [f"img-{index}" for index in range(7)]
    assert next(read_rows(path))["image"]["bytes"] == image_row(0)["image"]["bytes"]


@pytest.mark.parametrize("schema", [IMAGE_SCHEMA, MASK_SCHEMA], ids=["images", "masks"])
def test_picture_bytes_are_stored_plain_and_the_rest_compressed(schema, tmp_path):
    path = tmp_path / shard_name(0, 1)
    row = image_row(0) if schema is IMAGE_SCHEMA else {
        "id": "m", "mask": {"bytes": b"png", "path": None}, "num_regions": 1, "coverage": 1.0,
        "mean_iou": 0.0, "generator": "grid", "settings_hash": "h",
    }
    with ShardWriter(path, schema) as writer:
        writer.write(row)
    group = pq.ParquetFile(path).metadata.row_group(0)
    columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    payload = columns.pop(f"{schema.names[1]}.bytes")
    assert payload.compression == "UNCOMPRESSED" and "RLE_DICTIONARY" not in payload.encodings
    assert {column.compression for column in columns.values()} == {"SNAPPY"}


def test_writer_leaves_nothing_when_the_block_fails(tmp_path):
    path = tmp_path / shard_name(0, 1)
    with pytest.raises(RuntimeError), ShardWriter(path, IMAGE_SCHEMA) as writer:
        writer.write(image_row(0))
        raise RuntimeError("killed mid-shard")
    assert list(tmp_path.iterdir()) == []


def test_writer_names_the_record_missing_a_column(tmp_path):
    with pytest.raises(ValueError, match="img-0.*width"), ShardWriter(tmp_path / "x.parquet", IMAGE_SCHEMA) as writer:
        writer.write({key: value for key, value in image_row(0).items() if key != "width"})


def test_list_shards_wants_a_complete_set(tmp_path):
    for index in (1, 0):
        with ShardWriter(tmp_path / shard_name(index, 3), IMAGE_SCHEMA) as writer:
            writer.write(image_row(index))
    (tmp_path / (shard_name(2, 3) + ".incomplete")).write_bytes(b"half")
    with pytest.raises(ValueError, match="missing part-00002-of-00003"):
        list_shards(tmp_path)
    with ShardWriter(tmp_path / shard_name(2, 3), IMAGE_SCHEMA) as writer:
        writer.write(image_row(2))
    assert [path.name for path in list_shards(tmp_path)] == [shard_name(index, 3) for index in range(3)]


def test_shard_kind_refuses_foreign_parquet(tmp_path):
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "foreign.parquet")
    with pytest.raises(ValueError, match="not a segpic shard"):
        shard_kind(tmp_path / "foreign.parquet")


def test_load_dataset_decodes_image_shards(sample_image_shards, tmp_path):
    files = [str(path) for path in list_shards(sample_image_shards)]
    loaded = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path))
    assert isinstance(loaded.features["image"], datasets.Image)
    rows = [row for path in list_shards(sample_image_shards) for row in read_rows(path)]
    assert loaded["id"] == [row["id"] for row in rows]
    for decoded, row in zip(loaded, rows):
        assert decoded["image"].size == (row["width"], row["height"])
        assert np.array_equal(np.asarray(decoded["image"]), np.asarray(Image.open(io.BytesIO(row["image"]["bytes"]))))


def test_load_dataset_decodes_8_and_16_bit_label_maps(tmp_path):
    ys, xs = np.mgrid[0:70, 0:90]
    label_maps = {"few": ((ys // 10) * 9 + xs // 10).astype(np.uint8), "many": (ys * 90 + xs).astype(np.uint16)}
    path = tmp_path / "masks" / shard_name(0, 1)
    with ShardWriter(path, MASK_SCHEMA) as writer:
        for name, label_map in label_maps.items():
            regions = int(label_map.max()) + 1
            writer.write(
                {"id": name, "mask": {"bytes": png(label_map), "path": None}, "num_regions": regions,
                 "coverage": 1.0, "mean_iou": 0.5, "generator": "test", "settings_hash": "0"}
            )
    loaded = datasets.load_dataset("parquet", data_files=[str(path)], split="train", cache_dir=str(tmp_path / "cache"))
    for row in loaded:
        assert np.array_equal(np.asarray(row["mask"]).astype(np.int64), label_maps[row["id"]].astype(np.int64))
    assert loaded["num_regions"] == [63, 70 * 90]
