"""A finished shard set as the commands that read one take it: complete, of the expected kind, its manifest exact.

Used by the masks stage (image sets), `segpic repaint` and `segpic export-masks` (raw-mask
sets), so each refuses, in one line naming the folder, a folder that holds no such set, holds
another kind, is still being written by a job array, or whose manifest does not list exactly
its shard files.
"""

from pathlib import Path

from pipeline.manifest import MANIFEST_NAME, Manifest, ShardEntry, read_manifest
from pipeline.shards import IMAGE_KIND, MASK_KIND, RAW_KIND, list_shards

NOUNS = {IMAGE_KIND: "image", MASK_KIND: "mask", RAW_KIND: "raw mask"}


def read_complete_set(folder: Path, kind: str, written_by: str) -> tuple[Manifest, dict[str, ShardEntry]]:
    """The manifest and shard entries by name, in shard order, of the complete `kind` set in `folder`.

    `written_by` names what writes such a folder (`segpic ingest`), for the messages.
    """
    noun = NOUNS[kind]
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError as error:
        if Path(folder).is_dir() and any(Path(folder).iterdir()):
            list_shards(folder)  # a folder of image files, not shards, is told to ingest them first
        raise ValueError(f"{folder}: no {MANIFEST_NAME}; give the {noun} shard folder written by {written_by}") from error
    if manifest.kind != kind:
        raise ValueError(f"{folder} holds {manifest.kind} shards, not {noun} shards; give the {noun} shard folder written by {written_by}")
    if not manifest.complete:
        raise ValueError(f"{folder}: the {noun} set is incomplete (jobs of a job array pending)")
    entries = {entry.name: entry for entry in manifest.shards}
    files = [path.name for path in list_shards(folder)]
    if sorted(entries) != files:
        raise ValueError(f"{folder}/{MANIFEST_NAME} does not list exactly the shard files present; run `segpic verify`")
    return manifest, {name: entries[name] for name in files}
