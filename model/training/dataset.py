"""Training and validation data: shard records -> aligned (image, label map) crops -> batches.

Randomness is keyed, not streamed: the sampler hands each sample its (epoch, position)
and the crop is drawn from a generator seeded by (seed, epoch, position). The same seed
therefore gives the same batches whatever the number of worker processes, and a resumed
run continues from a position instead of replaying a random stream.
"""

import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from model.training.config import TrainConfig
from model.training.crops import centre_window, random_window, relabel, resize_up
from model.training.decoding import decode_image
from model.training.records import (
    IMAGE_COLUMN,
    MASK_COLUMN,
    ROW_GROUPS_IN_MEMORY,
    RowReader,
    TrainingRecord,
    index_records,
)
from pipeline.label_map_format import decode_label_map

LOADER_PREFETCH = 4
"""Batches each loader worker prepares ahead."""

SampleKey = tuple[int, int, int]
"""(record index, epoch, position in the epoch's global order): everything a sample depends on."""


Decoded = tuple[np.ndarray, np.ndarray | None]
"""A decoded record, already resized up to the crop: (H, W, 3) uint8 image, (H, W) label map or None."""


class DecodedCache:
    """Least-recently-used decoded (image, label map) pairs, bounded in bytes, one per process.

    Training visits every image once per epoch; on data sets that fit the budget (the
    sample, small fine-tuning sets) decoding then happens once instead of once per epoch.
    Larger sets simply cycle through it.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[int, Decoded] = OrderedDict()

    def get(self, index: int) -> Decoded | None:
        entry = self._entries.get(index)
        if entry is not None:
            self._entries.move_to_end(index)
        return entry

    def put(self, index: int, entry: Decoded) -> None:
        size = sum(array.nbytes for array in entry if array is not None)
        if size > self.budget_bytes:
            return
        self._entries[index] = entry
        self.used_bytes += size
        while self.used_bytes > self.budget_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.used_bytes -= sum(array.nbytes for array in evicted if array is not None)


class CropDataset(Dataset):
    """Crops of shard records: (3, c, c) uint8 image and, with masks, a (c, c) int64 label map.

    `pixels_to_unit` turns a batch of images into the model's float [0, 1] input.
    """

    def __init__(
        self, records: Sequence[TrainingRecord], crop: int, seed: int, train: bool, cache_bytes: int = 0
    ) -> None:
        self.records = list(records)
        self.crop = crop
        self.seed = seed
        self.train = train
        self._images = RowReader(IMAGE_COLUMN)
        self._label_maps = RowReader(MASK_COLUMN)
        self._decoded = DecodedCache(cache_bytes)

    def __len__(self) -> int:
        return len(self.records)

    def _decode(self, index: int) -> Decoded:
        record = self.records[index]
        image = decode_image(self._images.read_bytes(record.image), record.id)
        label_map = None
        if record.label_map is not None:
            label_map = decode_label_map(self._label_maps.read_bytes(record.label_map), record.id)
            if label_map.shape != image.shape[:2]:
                raise ValueError(
                    f"record {record.id}: label map is {label_map.shape[1]}x{label_map.shape[0]}, "
                    f"image is {image.shape[1]}x{image.shape[0]}"
                )
        return resize_up(image, label_map, self.crop)

    def __getitem__(self, key: SampleKey | int) -> dict[str, torch.Tensor]:
        index, epoch, position = key if isinstance(key, tuple) else (key, 0, key)
        decoded = self._decoded.get(index)
        if decoded is None:
            decoded = self._decode(index)
            self._decoded.put(index, decoded)
        image, label_map = decoded
        height, width = image.shape[:2]
        if self.train:
            window = random_window(height, width, self.crop, np.random.default_rng([self.seed, epoch, position]))
        else:
            window = centre_window(height, width, self.crop)
        # uint8 until it reaches the device: a quarter of the bytes through worker pipes.
        sample = {"image": torch.from_numpy(window.apply(image)).permute(2, 0, 1)}
        if label_map is not None:
            sample["label_map"] = torch.from_numpy(relabel(window.apply(label_map)))
        return sample


def pixels_to_unit(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 in [0, 1], done after the transfer to the training device."""
    return images.float().div_(255.0)


class EpochSampler(Sampler[SampleKey]):
    """Seeded per-epoch order, split across ranks, resumable at any sample position.

    Parquet is read a row group at a time, so the order is shuffled in two levels: row
    groups in random order, then records shuffled within windows of `window` groups.
    Each worker then reads a row group about once per epoch instead of once per sample;
    when all groups fit one window (small sets) it is a plain permutation.
    Only whole global batches are kept (batch × world size), so every rank runs the same
    number of steps; the remainder of an epoch rotates because each epoch reshuffles.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        groups: Sequence[int] | None = None,
        window: int = ROW_GROUPS_IN_MEMORY,
    ) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.groups = torch.as_tensor(groups if groups is not None else [0] * size, dtype=torch.int64)
        self.window = window
        self.epoch = 0
        self.start_batch = 0
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{size} training images are fewer than one global batch "
                f"({batch_size} per process × {world_size} processes)"
            )

    def _order(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        group_ids = torch.unique(self.groups)
        shuffled = group_ids[torch.randperm(len(group_ids), generator=generator)]
        parts = []
        for start in range(0, len(shuffled), self.window):
            members = torch.nonzero(torch.isin(self.groups, shuffled[start : start + self.window])).flatten()
            parts.append(members[torch.randperm(len(members), generator=generator)])
        return torch.cat(parts)

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, start_batch: int) -> None:
        """Where the next iteration starts: the epoch's permutation, skipping batches already trained on."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[SampleKey]:
        order = self._order()[: self.batches_per_epoch * self.batch_size * self.world_size]
        first = self.start_batch * self.batch_size * self.world_size
        for position in range(first + self.rank, len(order), self.world_size):
            yield int(order[position]), self.epoch, position

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def _held_out_rank(record: TrainingRecord) -> str:
    # A hash of the id, not the position: the held-out set survives re-sharding and new images.
    return hashlib.sha1(record.id.encode()).hexdigest()


def split_records(
    records: Sequence[TrainingRecord], val_count: int
) -> tuple[list[TrainingRecord], list[TrainingRecord]]:
    """(training, validation): the `val_count` records with the smallest id hashes are held out."""
    if val_count >= len(records):
        raise ValueError(f"val_count {val_count} leaves no training images out of {len(records)}")
    held = {record.id for record in sorted(records, key=_held_out_rank)[:val_count]}
    return [r for r in records if r.id not in held], [r for r in records if r.id in held]


@dataclass
class TrainingData:
    """The loaders of a run and the sampler that positions the training one."""

    train: DataLoader
    val: DataLoader | None
    sampler: EpochSampler
    unlabelled: list[str]
    """Ids left out because the masks stage could not label them."""


def _loader(
    dataset: CropDataset, batch_size: int, workers: int, sampler: Sampler | None, pin_memory: bool = False
) -> DataLoader:
    # A private generator keeps DataLoader from drawing its worker seed from the global RNG,
    # which the model's training noise uses: loaders must not perturb the training stream.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=False,
        num_workers=workers,
        # Workers outlive an epoch: re-spawning them (and their row-group caches) per epoch costs seconds.
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
        # Page-locked batches let the host-to-device copy run asynchronously (non_blocking=True).
        pin_memory=pin_memory,
        # Each worker keeps a few batches ready so a fast GPU step never waits on decoding.
        prefetch_factor=LOADER_PREFETCH if workers > 0 else None,
    )


def build_training_data(
    config: TrainConfig, rank: int = 0, world_size: int = 1, pin_memory: bool = False
) -> TrainingData:
    """Index the shards, hold out validation images and build the loaders for this rank.

    `pin_memory`: batches go to a GPU (page-locked host memory for asynchronous copies).
    """
    records = index_records(config.images, config.partition.masks_dir)
    held = index_records(config.val_images, config.val_masks) if config.val_images is not None else []
    unlabelled = [record.id for record in records + held if record.unlabelled]
    records = [record for record in records if not record.unlabelled]
    if config.val_images is not None:
        train_records, val_records = records, [record for record in held if not record.unlabelled]
    elif config.val_count:
        train_records, val_records = split_records(records, config.val_count)
    else:
        train_records, val_records = records, []
    groups = {}
    group_of = [groups.setdefault((r.image.shard, r.image.row_group), len(groups)) for r in train_records]
    sampler = EpochSampler(len(train_records), config.batch_size, config.seed, rank, world_size, group_of)
    cache_bytes = config.decoded_cache_mb * 2**20
    train_set = CropDataset(train_records, config.crop, config.seed, train=True, cache_bytes=cache_bytes)
    train = _loader(train_set, config.batch_size, config.num_workers, sampler, pin_memory)
    val = None
    if val_records:
        val_set = CropDataset(val_records, config.crop, config.seed, train=False, cache_bytes=cache_bytes)
        val = _loader(val_set, config.batch_size, 0, None, pin_memory)
    return TrainingData(train, val, sampler, unlabelled)
