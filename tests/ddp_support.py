"""Runs test code on several processes at once: a torch.distributed world over loopback (gloo).

``Ranks(world_size)`` starts one process per rank (spawned, one torch thread each), each in the
same process group (``init_process_group("gloo", init_method="file://...")`` with a short
timeout; ``backend="nccl"``: one GPU per rank), and keeps them for many tests:
``ranks.run(fn, *args)`` calls the module-level function ``fn(*args)`` on every rank at once and
returns each rank's result, in rank order.

Nothing can hang a test: every wait for a rank is bounded (``timeout_s``); a rank that does not
answer in time fails the test, and all the processes are killed (the ``ranks`` fixture starts
fresh ones for the next test). An exception on a rank comes back as :class:`RankError` (or, with
``run(..., errors=True)``, as the rank's result, for tests that expect it).
"""

import atexit
import datetime
import os
import queue
import tempfile
import time
import traceback
from dataclasses import dataclass

import pytest
import torch
import torch.multiprocessing as mp

WORLD_SIZE = 2
PROCESS_GROUP_TIMEOUT_S = 20  # gloo's collective timeout inside the workers
TASK_TIMEOUT_S = 120  # how long one call may take on every rank, start-up included


@dataclass
class RankDied:
    """A rank whose process ended without answering."""

    exitcode: int


@dataclass
class RankError:
    """What a rank raised: the exception's type name, message and traceback."""

    type: str
    message: str
    traceback: str


def _worker(rank, world_size, store, pg_timeout_s, backend, tasks, results):
    torch.set_num_threads(1)
    import torch.distributed as dist

    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank,
                            world_size=world_size,
                            timeout=datetime.timedelta(seconds=pg_timeout_s))
    while True:
        task = tasks.get()
        if task is None:
            break
        fn, args = task
        try:
            results.put((rank, fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results.put((rank, RankError(type(exc).__name__, str(exc), traceback.format_exc())))
    dist.destroy_process_group()


class Ranks:
    """``world_size`` processes in one gloo process group, running test functions."""

    def __init__(self, world_size=WORLD_SIZE, pg_timeout_s=PROCESS_GROUP_TIMEOUT_S,
                 backend="gloo"):
        self.world_size = world_size
        self._folder = tempfile.TemporaryDirectory(prefix="torchext-ddp-")
        context = mp.get_context("spawn")
        self._tasks = [context.Queue() for _ in range(world_size)]
        self._results = context.Queue()
        store = os.path.join(self._folder.name, "store")
        self._processes = [
            context.Process(target=_worker, daemon=True,
                            args=(r, world_size, store, pg_timeout_s, backend,
                                  self._tasks[r], self._results))
            for r in range(world_size)]
        for p in self._processes:
            p.start()
        self.broken = False

    @property
    def folder(self):
        """A temporary folder shared by the test and the ranks."""
        return self._folder.name

    def run(self, fn, *args, errors=False, timeout_s=TASK_TIMEOUT_S, wait_for=None):
        """[fn(*args) on rank 0, on rank 1, ...]; see the module doc for errors and timeouts.

        A rank whose process ends without answering gives :class:`RankDied`. With
        ``wait_for`` (ranks), only those are waited for; the others are then killed and
        give None.
        """
        for tasks in self._tasks:
            tasks.put((fn, args))
        wanted = set(range(self.world_size) if wait_for is None else wait_for)
        results = {}
        start = time.monotonic()
        while not wanted <= set(results):
            if time.monotonic() - start > timeout_s:
                self.kill()
                pytest.fail(f"rank(s) {sorted(wanted - set(results))} did not finish "
                            f"{fn.__name__} within {timeout_s} s (their processes were killed)")
            try:
                rank, value = self._results.get(timeout=0.2)
                results[rank] = value
            except queue.Empty:
                for rank, p in enumerate(self._processes):
                    if rank not in results and not p.is_alive():
                        self.broken = True
                        results[rank] = RankDied(p.exitcode)
        if wait_for is not None:
            self.kill()
        out = [results.get(r) for r in range(self.world_size)]
        if not errors:
            for rank, value in enumerate(out):
                if isinstance(value, (RankError, RankDied)):
                    pytest.fail(f"rank {rank} failed in {fn.__name__}: "
                                f"{getattr(value, 'traceback', value)}")
        return out

    def kill(self):
        self.broken = True
        for p in self._processes:
            if p.is_alive():
                p.kill()
        for p in self._processes:
            p.join(timeout=10)

    def close(self):
        if not self.broken:
            for tasks in self._tasks:
                tasks.put(None)
            for p in self._processes:
                p.join(timeout=30)
        self.kill()
        self._folder.cleanup()


_shared = {}


@pytest.fixture
def ranks():
    """Two ranks kept across the tests of a session (restarted after a failure)."""
    current = _shared.get("ranks")
    if current is None or current.broken:
        if current is not None:
            current.close()
        current = _shared["ranks"] = Ranks()
    yield current


@atexit.register
def _close_shared():
    if "ranks" in _shared:
        _shared.pop("ranks").close()
