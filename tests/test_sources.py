"""Every source kind yields the original encoded bytes under a stable id, in a fixed order."""

import shutil

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sample import sample_photo_paths
from pipeline.shards import list_shards, read_rows
from pipeline.sources import FolderSource, HuggingFaceSource, ParquetSource, SampleSource, open_source
from pipeline.sources.huggingface import parse_spec


def collect(spec: str) -> dict[str, bytes]:
    return {record.id: record.read() for record in open_source(spec).records()}


def test_folder_in_imagenet_layout_ids_are_relative_paths(tmp_path):
    photos = sample_photo_paths()
    (tmp_path / "n01440764").mkdir()
    (tmp_path / "n02102040").mkdir()
    shutil.copy(photos[0], tmp_path / "n02102040" / "n02102040_7.JPEG")
    shutil.copy(photos[3], tmp_path / "n01440764" / "n01440764_10.JPEG")
    (tmp_path / "n01440764" / "LOC_synset_mapping.txt").write_text("not an image")
    source = open_source(str(tmp_path))
    assert isinstance(source, FolderSource)
    assert collect(str(tmp_path)) == {
        "n01440764/n01440764_10.JPEG": photos[3].read_bytes(),
        "n02102040/n02102040_7.JPEG": photos[0].read_bytes(),
    }
    assert [record.id for record in source.records()] == sorted(collect(str(tmp_path)))


def test_flat_flickr_style_folder(tmp_path):
    for photo in sample_photo_paths()[:3]:
        shutil.copy(photo, tmp_path / f"flickr_{photo.name}")
    assert list(collect(str(tmp_path))) == ["flickr_astronaut.png", "flickr_chelsea.png", "flickr_coffee.png"]


def test_sample_ids_are_file_names():
    source = open_source("sample")
    assert isinstance(source, SampleSource)
    records = list(source.records())
    assert [record.id for record in records] == [path.name for path in sample_photo_paths()]
    assert records[2].read() == sample_photo_paths()[2].read_bytes()


def test_our_own_shards_keep_their_ids(sample_image_shards):
    source = open_source(str(sample_image_shards))
    assert isinstance(source, ParquetSource)
    rows = [row for path in list_shards(sample_image_shards) for row in read_rows(path)]
    expected = {row["id"]: row["image"]["bytes"] for row in rows}
    assert collect(str(sample_image_shards)) == expected


def test_foreign_parquet_without_ids_is_addressed_by_file_and_row(tmp_path):
    photos = sample_photo_paths()[:2]
    values = [{"bytes": photo.read_bytes(), "path": photo.name} for photo in photos]
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"label": [3, 4], "picture": pa.array(values, struct)}), tmp_path / "train.parquet")
    expected = {"train.parquet:0": values[0]["bytes"], "train.parquet:1": values[1]["bytes"]}
    assert collect(f"parquet:{tmp_path}") == expected
    assert collect(str(tmp_path / "train.parquet")) == collect(f"parquet:{tmp_path}")


def test_hugging_face_dataset_is_streamed_with_original_bytes(tmp_path):
    photos = sample_photo_paths()[:3]
    dataset = datasets.Dataset.from_dict(
        {"label": [0, 1, 2], "img": [{"bytes": photo.read_bytes(), "path": photo.name} for photo in photos]}
    ).cast_column("img", datasets.Image())
    (tmp_path / "hub" / "data").mkdir(parents=True)
    dataset.to_parquet(str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"))
    source = open_source(f"hf:{tmp_path / 'hub'}:train")
    assert isinstance(source, HuggingFaceSource)
    assert source.column == "img"
    assert collect(f"hf:{tmp_path / 'hub'}") == {str(index): photo.read_bytes() for index, photo in enumerate(photos)}


def test_hugging_face_spec_parsing():
    assert parse_spec("hf:user/flickr30k") == ("user/flickr30k", "train")
    assert parse_spec("hf:user/flickr30k:validation") == ("user/flickr30k", "validation")
    assert parse_spec("hf:/data/sets/imagenet") == ("/data/sets/imagenet", "train")
    with pytest.raises(ValueError, match="hf:NAME"):
        parse_spec("hf:")


def test_unknown_source_lists_the_accepted_forms(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such file or folder .*sample"):
        open_source(str(tmp_path / "nowhere"))
    (tmp_path / "notes.txt").write_text("not images")
    with pytest.raises(ValueError, match="notes.txt: not a source .*sample"):
        open_source(str(tmp_path / "notes.txt"))


def test_parquet_rows_with_paths_and_no_bytes_read_the_files_beside_them(tmp_path):
    photos = sample_photo_paths()
    (tmp_path / "data" / "images").mkdir(parents=True)
    shutil.copy(photos[1], tmp_path / "data" / "images" / photos[1].name)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([
        {"bytes": None, "path": f"images/{photos[1].name}"},  # relative to the Parquet file, as `datasets` writes it
        {"bytes": None, "path": str(photos[2])},  # absolute
        {"bytes": None, "path": "images/missing.png"},
    ], type=image_type)})
    pq.write_table(table, tmp_path / "data" / "train.parquet")
    records = list(open_source(str(tmp_path / "data")).records())
    assert records[0].read() == photos[1].read_bytes() and records[1].read() == photos[2].read_bytes()
    with pytest.raises(ValueError, match="images/missing.png is not a file"):
        records[2].read()


def test_hidden_parquet_files_are_not_read(tmp_path, sample_image_shards):
    shutil.copytree(sample_image_shards, tmp_path / "set")
    shutil.copytree(sample_image_shards, tmp_path / "set" / ".trash")
    assert len(list(open_source(str(tmp_path / "set")).records())) == 10
