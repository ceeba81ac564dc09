"""The build lock: one build at a time per store, and a refused second build says who holds it.

Local stores: an ``flock`` on ``STORE/.build.lock`` (released by the kernel if the holder dies).
Object stores have no locks: a lock object naming its holder, ignored once older than
``REMOTE_LOCK_TTL_S`` (a crashed holder cannot block a store forever).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from msc_france.errors import StoreError
from msc_france.fsutil import exclusive_lock

if TYPE_CHECKING:
    from msc_france.store.core import Store

REMOTE_LOCK_TTL_S = 6 * 3600
LOCK_NAME = ".build.lock"


@contextlib.contextmanager
def build_lock(store: Store) -> Iterator[None]:
    """Hold the store's build lock for the duration of the block."""
    if store.remote:
        with _remote_lock(store):
            yield
        return
    with exclusive_lock(store.path / LOCK_NAME, lambda holder: StoreError(
            f"store {store.path} is being built by {holder}; wait for it or stop it")):
        store.remove_interrupted_writes()
        yield


@contextlib.contextmanager
def _remote_lock(store: Store) -> Iterator[None]:
    if store.exists(LOCK_NAME):
        try:
            held = json.loads(store.read_bytes(LOCK_NAME))
        except json.JSONDecodeError:
            held = {}
        if time.time() - float(held.get("time", 0)) < REMOTE_LOCK_TTL_S:
            raise StoreError(f"store {store.url} is being built by {held.get('holder', 'another process')}; "
                             f"wait for it or stop it")
    me = f"pid {os.getpid()} on {socket.gethostname()}"
    store.write_bytes_atomic(LOCK_NAME, json.dumps({"holder": me, "time": time.time()}).encode())
    try:
        yield
    finally:
        store.remove(LOCK_NAME)
