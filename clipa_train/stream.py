"""The training stream: a torch ``IterableDataset`` whose workers yield whole, fixed-shape batches.

What a worker does in an epoch is a pure function of (seed, epoch, rank, world, worker,
workers) and the split's shard lengths (``clipa_train.epoch_plan``):

- it reads its shards (file-level split, no overlap, no loss) as passes through a seeded
  shuffle buffer over record positions (``clipa_train.shuffle``);
- its batch ``i`` is made of its output positions ``i*B .. i*B+B-1``; each record's crop,
  jitter and masks come from a generator keyed by (seed, epoch, rank, worker, position)
  (``clipa_train.seeding``);
- so resuming at step ``s`` only needs (epoch, s): each worker works out how many of its
  batches come before ``s``, replays its shuffle order that far without reading or decoding,
  reads the records still buffered and goes on. That state is the same on every rank.

Bad records: a record that cannot be read (truncated shard, checksum mismatch with
``check_crc``, no image) or whose image does not decode is skipped and counted; its slot gets a
copy of the next good record of the same batch (or, if the whole batch is bad, of the first
good record after it), so batches stay full and positions never shift. When a worker's bad
records exceed ``max_bad_fraction`` of those it has read (counting at least ``bad_grace``
records), the stream stops with a message naming the last bad record.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np
import torch

from clipa_data.core.errors import ClipaError
from clipa_train import epoch_plan as plan
from clipa_train import seeding
from clipa_train.batch import BatchArrays, BatchShapes
from clipa_train.image import ImageConfig, ImageError, transform_into
from clipa_train.reduce import PatchMaskConfig, PatchMasker, TextReducer, TextReductionConfig
from clipa_train.shards import TEXT_SOURCES, Fields, Record, ShardReader, TextSource, Unreadable
from clipa_train.shuffle import ShuffleOrder

MAX_MESSAGES = 5
"""Bad-record messages a batch carries back to the main process."""
READ_THROUGH_GAP = 64
"""Records a forward read in the open shard reads through rather than re-opening the shard
(which walks its headers from the start: per gap, a resume's fast-forward was quadratic)."""


@dataclass(frozen=True)
class StreamConfig:
    """Everything that decides what the training stream yields."""

    data: str
    """The builder directory (``clipa-data convert`` output; local path or fsspec URL)."""
    batch_size: int
    """Samples per batch on each rank."""
    image: ImageConfig = field(default_factory=ImageConfig)
    """Image decode, crop and augmentation."""
    patch_mask: PatchMaskConfig = field(default_factory=PatchMaskConfig)
    """Image token reduction (``patch_keep``)."""
    text: TextReductionConfig = field(default_factory=TextReductionConfig)
    """Text token reduction and length."""
    split: str = "train"
    """Split of the builder directory."""
    seed: int = 0
    """Seed of the shard order, shuffle buffers, crops and masks."""
    workers: int = 2
    """Worker processes per rank (0: read in the main process, like one worker)."""
    shuffle_buffer: int = 8192
    """Records each worker holds for shuffling (the original reader's default)."""
    samples_per_epoch: int | None = None
    """Samples per epoch over all ranks (default: the split's record count)."""
    check_crc: bool = False
    """Verify every record's payload checksum (the length checksum is always checked)."""
    max_bad_fraction: float = 0.01
    """Stop when a worker's unusable records exceed this share of those it has read."""
    bad_grace: int = 1000
    """The share is taken over at least this many records (early bad records are tolerated)."""
    text_source: TextSource = "auto"
    """Token ids from ``sidecar``s, from the ``caption`` (tokenised here), or ``auto``."""
    fields: Fields = field(default_factory=Fields)
    """Feature names of key, image and caption."""
    prefetch: int = 2
    """Batches each worker prepares ahead."""
    pin_memory: bool | None = None
    """Pin batches for fast host-to-GPU copies (default: when CUDA is available)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ClipaError(f"batch size must be positive, got {self.batch_size}")
        if self.workers < 0:
            raise ClipaError(f"workers must be >= 0, got {self.workers}")
        if self.shuffle_buffer < 1:
            raise ClipaError(f"shuffle buffer must be >= 1, got {self.shuffle_buffer}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ClipaError(f"samples per epoch must be positive, got {self.samples_per_epoch}")
        if not 0 <= self.max_bad_fraction < 1:
            raise ClipaError(f"max bad fraction must be in [0, 1), got {self.max_bad_fraction}")
        if self.bad_grace < 1:
            raise ClipaError(f"bad grace must be >= 1, got {self.bad_grace}")
        if self.prefetch < 1:
            raise ClipaError(f"prefetch must be >= 1, got {self.prefetch}")
        if self.text_source not in TEXT_SOURCES:
            raise ClipaError(
                f"unknown text source {self.text_source!r}; choose one of {', '.join(TEXT_SOURCES)}"
            )
        if self.text.needs_sidecars and self.text_source == "caption":
            raise ClipaError(
                f"the {self.text.mask} text mask reads POS tags from sidecars: use text source auto"
            )
        PatchMasker(self.patch_mask, self.image.size)  # image size must fit the patch size

    @property
    def readers(self) -> int:
        """Readers per rank (the main process counts as one when ``workers`` is 0)."""
        return max(1, self.workers)

    def shapes(self) -> BatchShapes:
        """The fixed shapes of this stream's batches."""
        keep = PatchMasker(self.patch_mask, self.image.size).keep
        size = self.image.size
        return BatchShapes(
            image=(self.batch_size, size, size, 3),
            patch_keep=None if keep is None else (self.batch_size, keep),
            text=(self.batch_size, self.text.length),
        )


class ImageTextStream(torch.utils.data.IterableDataset):
    """Yields this worker's batches for the (epoch, step) in ``position``, each with a
    ``_meta`` entry (worker, batch number, bad-record counts) that the loader removes."""

    def __init__(
        self,
        config: StreamConfig,
        reader: ShardReader,
        *,
        rank: int,
        world: int,
        steps: int,
        position,
    ) -> None:
        self.config = config
        self.reader = reader
        self.rank = rank
        self.world = world
        self.steps = steps
        self.position = position
        """Shared ``[epoch, step]`` the loader sets before each pass (read by the workers)."""

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        if info is not None:
            import cv2

            cv2.setNumThreads(1)
        worker = 0 if info is None else info.id
        epoch, step = int(self.position[0]), int(self.position[1])
        return WorkerEpoch(self, worker, epoch, step, shared=info is not None).batches()


class WorkerInput:
    """A worker's input records in order: its shards pass after pass (later passes reshuffled),
    from the first record of the first shard or, given ``rotation``, from a seeded record of
    them on, wrapping around to the records before it."""

    def __init__(
        self,
        reader: ShardReader,
        shards: tuple[int, ...],
        random: seeding.CounterRandom,
        rotation: seeding.CounterRandom | None = None,
    ):
        self.reader = reader
        self.shards = np.asarray(shards, dtype=np.int64)
        self.lengths = np.asarray(reader.lengths, dtype=np.int64)[self.shards]
        self.records = int(self.lengths.sum())
        self.first = 0
        """Where each pass starts (an index into the pass; 0 without ``rotation``)."""
        if rotation is not None and self.records:
            self.first = int(rotation.at(0).random() * self.records)
        self._random = random
        self._passes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._open = None
        self._open_shard = -1
        self._next_record = -1

    def _pass(self, number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard order, first input index, end input index) of each shard in a pass."""
        if number not in self._passes:
            order = np.arange(len(self.shards))
            if number:
                order = self._random.at(number).permutation(len(self.shards))
            ends = np.cumsum(self.lengths[order])
            self._passes = {number: (self.shards[order], ends - self.lengths[order], ends)}
        return self._passes[number]

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, record) of input record ``index``."""
        number, offset = divmod(index, self.records)
        offset = (offset + self.first) % self.records
        shards, starts, ends = self._pass(number)
        slot = int(np.searchsorted(ends, offset, side="right"))
        return int(shards[slot]), offset - int(starts[slot])

    def read(self, index: int) -> Record | Unreadable:
        """Input record ``index`` (reads forward in the open shard stay in it)."""
        shard, record = self.locate(index)
        gap = record - self._next_record
        if shard != self._open_shard or not 0 <= gap <= READ_THROUGH_GAP:
            self._open = self.reader.records(shard, record)
            self._open_shard = shard
        else:
            for _ in range(gap):  # a resume reads the buffered records: a few gaps per record
                next(self._open)
        self._next_record = record + 1
        return next(self._open)


class WorkerEpoch:
    """One worker's batches of one epoch, from a given step on."""

    def __init__(self, stream: ImageTextStream, worker: int, epoch: int, step: int, shared: bool):
        config = stream.config
        self.config = config
        self.worker = worker
        self.stream = stream
        self.shared = shared
        shares = plan.plan_rank(
            stream.reader.lengths,
            seed=config.seed,
            epoch=epoch,
            rank=stream.rank,
            world=stream.world,
            workers=config.readers,
            steps=stream.steps,
        )
        self.share = shares[worker]
        self.first = plan.batches_before([s.batches for s in shares], step)[worker]
        key = (config.seed, epoch, stream.rank, worker)
        # An epoch that reads part of the worker's shards starts at a seeded record of them:
        # from the first, the records past (budget + shuffle buffer) of a shard longer than
        # that were never drawn in any epoch. Only under --samples-per-epoch: otherwise the
        # part left is under a batch (the remainder of the global batches), and the shard
        # order changes every epoch.
        rotation = None
        budget = self.share.batches * config.batch_size
        if config.samples_per_epoch is not None and budget < self.share.records:
            rotation = seeding.CounterRandom(*key, seeding.ROTATIONS)
        self.input = WorkerInput(
            stream.reader,
            self.share.shards,
            seeding.CounterRandom(*key, seeding.PASSES),
            rotation,
        )
        self.order = None
        if self.share.batches:
            shuffle_random = seeding.CounterRandom(*key, seeding.SHUFFLE)
            self.order = ShuffleOrder(self.input.records, config.shuffle_buffer, shuffle_random)
        self.random = seeding.CounterRandom(*key, seeding.RECORDS)
        self.masker = PatchMasker(config.patch_mask, config.image.size)
        self.text = TextReducer(config.text)
        self.shapes = config.shapes()
        self.pending: dict[int, Record | Unreadable] = {}
        self.ahead: collections.deque = collections.deque()
        self.read = 0
        self.bad = 0

    def batches(self):
        """Yield batch dicts (with ``_meta``); a fatal problem is yielded as ``_meta.error``."""
        try:
            if self.first >= self.share.batches:
                return
            self._fast_forward(self.first * self.config.batch_size)
            for number in range(self.first, self.share.batches):
                yield self._batch(number)
        except (ClipaError, OSError) as error:
            yield {"_meta": {"worker": self.worker, "error": str(error)}}

    def _fast_forward(self, positions: int) -> None:
        """Skip ``positions`` outputs with no I/O, then read the records still buffered."""
        self.order.skip(positions)
        for index in sorted(self.order.buffered):
            self.pending[index] = self.input.read(index)

    def _advance(self) -> tuple[int, Record | Unreadable]:
        admitted, emitted = self.order.advance()
        for index in admitted:
            self.pending[index] = self.input.read(index)
        return self.order.position - 1, self.pending.pop(emitted)

    def _take(self) -> tuple[int, Record | Unreadable]:
        return self.ahead.popleft() if self.ahead else self._advance()

    def _peek(self, distance: int) -> tuple[int, Record | Unreadable]:
        while len(self.ahead) < distance:
            self.ahead.append(self._advance())
        return self.ahead[distance - 1]

    def _fill(self, arrays: BatchArrays, slot: int, position: int, item, counts) -> bool:
        """Decode and reduce one record into ``slot``; False (and counted) if it is unusable."""
        if isinstance(item, Unreadable):
            counts["unreadable"] += 1
            counts["messages"].append(f"{item.where()}: {item.reason}")
            counts["bad"].append(("unreadable", item.where()))
            return False
        rng = self.random.at(position)
        try:
            counts["pillow"] += transform_into(
                arrays.image[slot], item.image, self.config.image, rng
            )
        except ImageError as error:
            counts["bad_images"] += 1
            counts["messages"].append(f"{item.where()}: {error}")
            counts["bad"].append(("bad_images", item.where()))
            return False
        keep = self.masker.draw(rng)
        if keep is not None:
            arrays.patch_keep[slot] = keep
        arrays.text[slot] = self.text(item.caption, item.rows, item.index, rng)
        arrays.keys[slot] = item.key
        return True

    def _batch(self, number: int) -> dict:
        arrays = BatchArrays(self.shapes, shared=self.shared)
        # "bad": (kind, record) of each bad record, so that the main process counts a record
        # once however many epochs read it.
        counts = {"bad_images": 0, "unreadable": 0, "pillow": 0, "messages": [], "bad": []}
        good = [self._fill(arrays, slot, *self._take(), counts) for slot in range(len(arrays.keys))]
        bad = good.count(False)
        self.read += len(good)
        self.bad += bad
        if bad and self.bad > self.config.max_bad_fraction * max(self.read, self.config.bad_grace):
            raise ClipaError(
                f"{self.bad} of the {self.read} records read by worker {self.worker} of rank "
                f"{self.stream.rank} are unusable: more than --max-bad-fraction "
                f"{self.config.max_bad_fraction:g} allows (a share of at least "
                f"{self.config.bad_grace} records); restore the data or raise "
                f"--max-bad-fraction; last: {counts['messages'][-1]}"
            )
        if bad:
            self._fill_bad_slots(arrays, good)
        meta = {
            "worker": self.worker,
            "batch": number,
            "filled": bad,
            **counts,
            "messages": counts["messages"][:MAX_MESSAGES],
        }
        return {**arrays.to_batch(), "_meta": meta}

    def _fill_bad_slots(self, arrays: BatchArrays, good: list[bool]) -> None:
        """Give every bad slot a copy of the next good slot (cyclically) of the batch."""
        if not any(good):
            good[0] = self._borrow(arrays)
        size = len(good)
        for slot in range(size):
            if not good[slot]:
                source = next(s % size for s in range(slot + 1, slot + size) if good[s % size])
                arrays.copy_slot(source, slot)

    def _borrow(self, arrays: BatchArrays) -> bool:
        """Decode the first good record after this batch into slot 0 (it is not consumed)."""
        ignored = {"bad_images": 0, "unreadable": 0, "pillow": 0, "messages": [], "bad": []}
        for distance in range(1, self.config.bad_grace + 1):
            if self._fill(arrays, 0, *self._peek(distance), ignored):
                return True
        raise ClipaError(
            f"worker {self.worker} of rank {self.stream.rank} found no usable record in "
            f"{self.config.bad_grace} records after a fully bad batch; last: "
            f"{ignored['messages'][-1]}"
        )
