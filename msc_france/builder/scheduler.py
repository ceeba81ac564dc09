"""Where shard tasks run: local threads (the default: no network listener), a process
LocalCluster bound to 127.0.0.1, or an existing dask.distributed scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from msc_france.errors import BadInputError, first_line


class ThreadClient:
    """The local default: shard tasks on a thread pool in this process.

    A dask LocalCluster, even with threads and ``dashboard_address=None``, opens HTTP servers
    on every interface (0.0.0.0:8787); a local build needs no network listener at all. This
    offers the part of the ``distributed.Client`` API the build uses.
    """

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="msc-build")

    def nthreads(self) -> dict[str, int]:
        """Threads per worker (one worker: this process)."""
        return {"local": self.threads}

    def submit(self, fn: Callable[..., Any], *args: Any, key: str, **_: Any) -> Future:
        """Run ``fn(*args)`` on the pool; the future carries ``key`` like a dask future."""
        fut = self.pool.submit(fn, *args)
        fut.key = key  # type: ignore[attr-defined]
        return fut

    def close(self) -> None:
        """Wait for running tasks and stop the pool."""
        self.pool.shutdown(wait=True)


class Completed:
    """``distributed.as_completed`` for concurrent.futures: iterate in completion order, ``add`` more."""

    def __init__(self, futures: list[Future]) -> None:
        self.pending = set(futures)

    def add(self, fut: Future) -> None:
        """Wait for ``fut`` too."""
        self.pending.add(fut)

    def __iter__(self) -> Iterator[Future]:
        while self.pending:
            done, _ = wait(self.pending, return_when=FIRST_COMPLETED)
            for f in done:
                self.pending.discard(f)
                yield f


@contextmanager
def dask_client(scheduler: str | None, workers: int) -> Iterator[Any]:
    """Where shard tasks run: local threads (default, no listener), a process LocalCluster bound
    to 127.0.0.1, or a remote dask.distributed scheduler.

    Args:
        scheduler: None or "threads" (local threads), "processes" (a LocalCluster of ``workers``
            single-threaded processes), or a ``tcp://host:port`` scheduler address.
        workers: threads or processes for local schedulers.
    """
    if scheduler not in (None, "threads", "processes") and not str(scheduler).startswith(("tcp://", "tls://",
                                                                                         "inproc://")):
        raise BadInputError(f"unknown scheduler '{scheduler}': use threads, processes or tcp://HOST:PORT")
    if scheduler in (None, "threads"):
        client = ThreadClient(workers)
        try:
            yield client
        finally:
            client.close()
        return
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler != "processes":
        try:
            remote = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as e:
            raise BadInputError(f"cannot reach dask scheduler {scheduler}: {first_line(e)}") from None
        try:
            yield remote
        finally:
            remote.close()
        return
    # Workers must talk to the scheduler: bind everything to loopback, never 0.0.0.0.
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=logging.ERROR)
    dclient = Client(cluster)
    try:
        yield dclient
    finally:
        dclient.close()
        cluster.close()


def check_scheduler(scheduler: str | None) -> None:
    """Refuse an unknown scheduler, or an unreachable cluster, before anything is written."""
    if scheduler in (None, "threads", "processes"):
        return
    if not scheduler.startswith(("tcp://", "tls://")):
        raise BadInputError(f"unknown scheduler '{scheduler}': use threads, processes or tcp://HOST:PORT")
    from distributed import Client

    try:
        Client(scheduler, timeout="5s").close()
    except (OSError, TimeoutError) as e:
        raise BadInputError(f"cannot reach dask scheduler {scheduler}: {first_line(e)}") from None
