"""The batch source the trainer consumes: a ``DataLoader`` over ``ImageTextStream`` with
persistent worker processes, a known number of steps per epoch and exact mid-epoch resume.

::

    loader = Loader(StreamConfig(data=builder, batch_size=256, ...), rank=rank, world=world)
    loader.load_state_dict(checkpoint["stream"])      # optional: resume
    for step, batch in zip(range(start, total_steps), loader):   # epochs follow each other
        ...
        checkpoint["stream"] = loader.state_dict()

Iterating never ends: it yields the remaining batches of the current epoch, then every batch of
the next epoch, and so on; the trainer stops at its step budget (``len(loader)`` steps make an
epoch). ``epoch_batches()`` yields only the rest of the current epoch. Within an epoch the order
is fixed (worker ``w``'s batch ``i`` comes at the step ``plan.interleave`` gives it, whatever
order the processes finish in). ``state_dict()`` is ``{epoch, step}`` plus the settings the
order depends on; it is the same on every rank, so a checkpoint written by rank 0 resumes all
ranks. Loading a mid-epoch state made with other settings (seed, world size, workers, batch
size, shuffle buffer, samples per epoch, split, the data's shard and record counts) is refused;
an end-of-epoch state loads under any settings. (Data rewritten with the same counts is not
told apart.)
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import multiprocessing
import os
import re
import signal
import threading
import time
import weakref
from dataclasses import dataclass, field

import torch

from clipa_data.core.errors import ClipaError
from clipa_train import epoch_plan as plan
from clipa_train.batch import BatchShapes
from clipa_train.shards import open_split
from clipa_train.stream import ImageTextStream, StreamConfig

STATE_FORMAT = "clipa-stream/1"
FINGERPRINT = {
    "seed": "--seed",
    "world": "processes",
    "workers": "--workers (0 counts as 1)",
    "batch_size": "batch per process",
    "shuffle_buffer": "--shuffle-buffer",
    "steps_per_epoch": "steps per epoch",
    "samples_per_epoch": "--samples-per-epoch",
    "split": "--split",
    "num_shards": "shards of the data",
    "num_records": "records of the data",
}
"""State entries that must match to resume mid-epoch, and what the user calls them."""
KEPT_MESSAGES = 20
DEATH_WAIT_S = 2.0
"""How long a failed wait for a batch looks for a dead worker before it re-raises as it is."""


def as_is(batch: dict) -> dict:
    """The collate function: workers already yield finished batches of tensors."""
    return batch


@dataclass
class StreamStats:
    """What the stream skipped since this loader was created (not part of the state)."""

    batches: int = 0
    """Batches delivered."""
    bad_images: int = 0
    """Records whose image did not decode (each counted once, however many epochs read it)."""
    unreadable: int = 0
    """Records that could not be read from their shard (each counted once)."""
    filled: int = 0
    """Batch slots filled with a copy of another record because theirs was bad."""
    pillow: int = 0
    """Images decoded by Pillow because they were not JPEGs simplejpeg reads (e.g. PNG)."""
    messages: list[str] = field(default_factory=list)
    """The first bad-record messages, naming shard and record (each record once)."""
    seen: dict[str, str] = field(default_factory=dict, repr=False)
    """The bad records counted so far: place -> kind (``bad_images`` or ``unreadable``)."""

    def add(self, meta: dict) -> None:
        self.batches += 1
        for name in ("filled", "pillow"):
            setattr(self, name, getattr(self, name) + meta[name])
        self._count(meta["bad"], meta["messages"])

    def _count(self, bad: list[tuple[str, str]], messages: list[str]) -> None:
        """Count the records in ``bad`` (kind, place) not counted yet; keep their messages."""
        new = set()
        for kind, where in bad:
            if where not in self.seen:
                self.seen[where] = kind
                new.add(where)
                setattr(self, kind, getattr(self, kind) + 1)
        # A message starts with its record's place ("record 5 ... of shard ...: reason"); a key
        # may hold ": " itself, so the place is matched, not split off.
        fresh = [text for text in messages if any(text.startswith(f"{w}: ") for w in new)]
        self.messages.extend(fresh[: max(0, KEPT_MESSAGES - len(self.messages))])

    @classmethod
    def over_ranks(cls, per_rank: list[StreamStats]) -> StreamStats:
        """The stats of every rank's loader as one run's (a record read by two ranks, as later
        epochs may deal its shard to another, counted once; messages in rank order)."""
        merged = cls()
        for stats in per_rank:
            merged.batches += stats.batches
            merged.filled += stats.filled
            merged.pillow += stats.pillow
            merged._count([(kind, where) for where, kind in stats.seen.items()], stats.messages)
        return merged


def ignore_interrupts(worker: int) -> None:
    """Loader workers ignore Ctrl-C and SIGTERM, which a terminal and torchrun send to the whole
    process group: the main process goes on to the step where the ranks agree to stop (under
    torchrun the next log step), saves and shuts them down. A worker killed by the signal left
    the ranks without data before that step, and the run stopped unsaved. (A worker stuck at
    shutdown outlives PyTorch's terminate then, until its watchdog sees the main process gone.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class WorkerLost(ClipaError):
    """A loader worker process died (killed by a signal, e.g. the kernel's out-of-memory killer):
    the run stops with a checkpoint of its last finished step and resumes exactly."""


def start_worker(pids, worker: int) -> None:
    """Each worker's init: record its pid (so the main process can tell which one died and how)
    and ignore Ctrl-C (``ignore_interrupts``)."""
    pids[worker] = os.getpid()
    ignore_interrupts(worker)


def dead_workers(pids) -> list[str]:
    """``worker W (pid P) was killed by SIGKILL`` for each worker that ended abnormally (its exit
    status is read without reaping it: the DataLoader still owns the process)."""
    dead: list[str] = []
    if not hasattr(os, "waitid"):  # macOS: no way to look without reaping; PyTorch's error stands
        return dead
    for worker, pid in enumerate(pids):
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) if pid else None
        except ChildProcessError:
            continue
        if info is None or (info.si_code == os.CLD_EXITED and info.si_status == 0):
            continue
        how = (
            f"exited with status {info.si_status}"
            if info.si_code == os.CLD_EXITED
            else f"was killed by {signal.Signals(info.si_status).name}"
        )
        dead.append(f"loader worker {worker} (pid {pid}) {how}")
    return dead


def reaped_workers(pids, error: BaseException) -> list[str]:
    """``dead_workers`` for the workers PyTorch has already reaped (its ``is_alive`` check after
    a failed wait does that, so their exit status is gone): each worker whose pid the error (or
    an error it came from) names, with how it ended when PyTorch said so ("is killed by signal:
    Killed")."""
    chain, seen = [], error
    while seen is not None and len(chain) < 8:
        chain.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    said = " ".join(chain)
    names = {signal.strsignal(number): number.name for number in signal.Signals}
    killed = re.search(r"is killed by signal: ([^.]+)\.", said)
    how = f"was killed by {names.get(killed.group(1), killed.group(1))}" if killed else "died"
    dead = []
    for worker, pid in enumerate(pids):
        if not pid or not re.search(rf"\bpid(?:\(s\))? [\d, ]*\b{pid}\b", said):
            continue
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped: it ended, and PyTorch's error names it
            dead.append(f"loader worker {worker} (pid {pid}) {how}")
    return dead


class WorkerWatch:
    """Notices a dead loader worker where the run can stop cleanly: while it waits for a batch.

    PyTorch's SIGCHLD handler raises in whatever the main process is doing when a worker dies,
    which can be the middle of an optimiser step (half-updated weights: no checkpoint could be
    trusted). Installed over it (main thread only), the check runs only inside :meth:`waiting`,
    where nothing is half-done; a death noticed earlier is raised when the wait starts. Whatever
    a dead worker makes the wait raise (PyTorch's RuntimeError, a reset connection while a batch
    was being received) becomes one ``WorkerLost`` naming the worker and how it ended.
    """

    def __init__(self, workers: int) -> None:
        self.pids = multiprocessing.RawArray("q", max(1, workers))
        """Each worker's pid, written by the worker itself (``start_worker``)."""
        self._installed, self._previous = False, None
        self._armed, self._pending = False, False

    def install(self) -> None:
        """Take over SIGCHLD (after the DataLoader installed its handler); idempotent."""
        if not self._installed and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGCHLD, self._handle)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGCHLD, self._previous or signal.SIG_DFL)
            self._installed = False

    def _handle(self, number: int, frame: object) -> None:
        if self._armed:
            self._check(number, frame)
        else:
            self._pending = True

    def _check(self, number: int, frame: object) -> None:
        self._pending = False
        if callable(self._previous):
            self._previous(number, frame)

    @contextlib.contextmanager
    def waiting(self):
        """Inside: a worker's death raises ``WorkerLost``."""
        try:
            self._armed = True
            if self._pending:
                self._check(signal.SIGCHLD, None)
            yield
        except Exception as error:
            self._armed = False  # PyTorch's handler must not raise again while we look
            if isinstance(error, ClipaError):
                raise
            # A killed worker's connections close a moment before it can be waited for.
            deadline = time.monotonic() + DEATH_WAIT_S
            dead = dead_workers(self.pids) or reaped_workers(self.pids, error)
            while not dead and time.monotonic() < deadline:
                time.sleep(0.01)
                dead = dead_workers(self.pids) or reaped_workers(self.pids, error)
            if not dead:
                raise
            raise WorkerLost(
                f"{'; '.join(dead)} (the kernel's out-of-memory killer is a common cause: see "
                "dmesg, or use fewer --workers)"
            ) from None
        finally:
            self._armed = False


class Loader:
    """A batch source: iterable, ``len()`` = steps per epoch, ``state_dict``/``load_state_dict``."""

    def __init__(self, config: StreamConfig, *, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ClipaError(f"rank {rank} is outside a world of {world}")
        self.config = config
        self.rank = rank
        self.world = world
        self.reader = open_split(
            config.data,
            config.split,
            fields=config.fields,
            check_crc=config.check_crc,
            text_source=config.text_source,
            need_sidecars=config.text.needs_sidecars,
            tokenizer=config.text.tokenizer,
        )
        self.steps_per_epoch = plan.steps_per_epoch(
            self.reader.split.num_records, config.batch_size, world, config.samples_per_epoch
        )
        """Batches per epoch, the same on every rank."""
        self._shares(0)  # fails now, not in a worker, if a rank would get no records
        self.epoch = 0
        """The epoch being read."""
        self.step = 0
        """Batches of it already delivered."""
        self.stats = StreamStats()
        self._position = multiprocessing.RawArray("q", 2)
        self._dataset = ImageTextStream(
            config,
            self.reader,
            rank=rank,
            world=world,
            steps=self.steps_per_epoch,
            position=self._position,
        )
        self._dataloader: torch.utils.data.DataLoader | None = None
        self._watch = WorkerWatch(config.workers)
        # A loader still alive at exit (its caller never closed it, or a traceback holds it)
        # is closed before multiprocessing joins its workers, which ignore the SIGTERM that
        # join sends first: Python waited for them forever. Registered after multiprocessing's
        # own handler, so it runs before it; a weak reference, so it keeps nothing alive.
        self._close_at_exit = functools.partial(_close_if_alive, weakref.ref(self))
        atexit.register(self._close_at_exit)

    @property
    def shapes(self) -> BatchShapes:
        """The fixed shapes of every batch."""
        return self.config.shapes()

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _shares(self, epoch: int) -> tuple[plan.WorkerShare, ...]:
        return plan.plan_rank(
            self.reader.lengths,
            seed=self.config.seed,
            epoch=epoch,
            rank=self.rank,
            world=self.world,
            workers=self.config.readers,
            steps=self.steps_per_epoch,
        )

    def _loader(self) -> torch.utils.data.DataLoader:
        if self._dataloader is None:
            workers = self.config.workers
            pin = self.config.pin_memory
            self._dataloader = torch.utils.data.DataLoader(
                self._dataset,
                batch_size=None,
                collate_fn=as_is,
                num_workers=workers,
                persistent_workers=workers > 0,
                prefetch_factor=self.config.prefetch if workers else None,
                pin_memory=torch.cuda.is_available() if pin is None else pin,
                worker_init_fn=functools.partial(start_worker, self._watch.pids),
            )
        return self._dataloader

    def _roll_over(self) -> None:
        if self.step >= self.steps_per_epoch:
            self.epoch += 1
            self.step = 0

    def __iter__(self):
        """Batches without end: the rest of the current epoch, then the following epochs."""
        while True:
            yield from self.epoch_batches()

    def epoch_batches(self):
        """The remaining batches of the current epoch, in their fixed order."""
        self._roll_over()
        self._position[0], self._position[1] = self.epoch, self.step
        order = plan.interleave([share.batches for share in self._shares(self.epoch)])
        with self._watch.waiting():
            arrived = iter(self._loader())
        if self.config.workers:
            self._watch.install()
        waiting: dict[tuple[int, int], tuple[dict, dict]] = {}
        while self.step < self.steps_per_epoch:
            wanted = order[self.step]
            while wanted not in waiting:
                with self._watch.waiting():
                    batch = next(arrived, None)
                if batch is None:
                    raise RuntimeError(
                        f"loader workers stopped before step {self.step} of epoch {self.epoch}"
                    )
                meta = batch.pop("_meta")
                if "error" in meta:
                    raise ClipaError(meta["error"])
                waiting[meta["worker"], meta["batch"]] = (batch, meta)
            batch, meta = waiting.pop(wanted)
            self.stats.add(meta)
            self.step += 1
            yield batch

    def state_dict(self) -> dict:
        """Where the stream stands: resumable on every rank with the same settings."""
        # Not self._roll_over(): a checkpoint at the end of an epoch must not move the epoch
        # under the generator still finishing it (it would read on from a spent iterator).
        epoch, step = self.epoch, self.step
        if step >= self.steps_per_epoch:
            epoch, step = epoch + 1, 0
        return {"format": STATE_FORMAT, "epoch": epoch, "step": step, **self._settings()}

    def _settings(self) -> dict:
        return {
            "seed": self.config.seed,
            "world": self.world,
            "workers": self.config.readers,
            "batch_size": self.config.batch_size,
            "shuffle_buffer": self.config.shuffle_buffer,
            "steps_per_epoch": self.steps_per_epoch,
            "samples_per_epoch": self.config.samples_per_epoch,
            "split": self.config.split,
            "num_shards": len(self.reader.split.shards),
            "num_records": self.reader.split.num_records,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from ``state_dict()``, possibly of another rank)."""
        if state.get("format") != STATE_FORMAT:
            raise ClipaError(
                f"not a stream state of this loader (format {state.get('format')!r}, "
                f"expected {STATE_FORMAT!r})"
            )
        epoch, step = int(state["epoch"]), int(state["step"])
        if step:
            now = self._settings()
            # A setting an earlier clipa did not record, given now: it read another order
            unrecorded = [
                said
                for name, said in FINGERPRINT.items()
                if name not in state and now[name] is not None
            ]
            if unrecorded:
                raise ClipaError(
                    f"the checkpoint stopped in the middle of epoch {epoch} (step {step}) and "
                    f"was saved by an earlier clipa, which read it in another order under "
                    f"{', '.join(unrecorded)}; resume from a checkpoint at the end of an epoch, "
                    "or start the run again"
                )
            changed = [
                f"{said} {state.get(name)} -> {now[name]}"
                for name, said in FINGERPRINT.items()
                if state.get(name) != now[name]
            ]
            if changed:
                raise ClipaError(
                    f"the checkpoint stopped in the middle of epoch {epoch} (step {step}) with "
                    f"other stream settings ({', '.join(changed)}); resume with the same "
                    "settings or from a checkpoint at the end of an epoch"
                )
        self.epoch, self.step = epoch, step

    def close(self) -> None:
        """Stop the worker processes now. Dropping the loader is not enough: something may keep
        an exception whose frames hold it (wandb keeps its failed ``init``'s), and workers still
        alive at exit make Python wait for them forever (they ignore its SIGTERM)."""
        dataloader, self._dataloader = self._dataloader, None
        workers = getattr(dataloader, "_iterator", None)  # the persistent workers' iterator
        if workers is not None and hasattr(workers, "_shutdown_workers"):
            workers._shutdown_workers()
        self._watch.uninstall()
        atexit.unregister(self._close_at_exit)


def _close_if_alive(loader: weakref.ref) -> None:
    """``Loader.close`` at exit, for a loader nobody closed (see ``Loader.__init__``)."""
    alive = loader()
    if alive is not None:
        alive.close()
