"""One byte budget for everything the app computes per input: a process-wide, thread-safe LRU cache bounded by the
bytes of the NumPy arrays its values hold (``held_bytes``), not by a count of entries.

Every session shares it, so a result is computed once for all visitors; concurrent requests for one key compute
once (the first computes, the others wait for its value). An entry larger than the whole budget is computed and
returned but not kept. Pure Python and NumPy, in ``encoder/`` below every layer that uses it (the app's caches,
the long views' head images); the app wraps it with Streamlit's spinner (``ui.cache``).

Example:
    >>> cache = ByteBudgetCache(max_bytes=2**20)
    >>> cache.get(("zeros", 10), lambda: np.zeros(10)).nbytes
    80
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def held_bytes(value: Any) -> int:
    """Bytes of the NumPy arrays, strings and bytes ``value`` holds, through dataclass fields, dicts, tuples and
    lists; each buffer counted once, and a view as the whole array it keeps alive (an (L, H, T, T) slice of a batch
    holds the batch); a string as its length (large ones are ASCII JSON). Other objects (numbers) count 0."""
    total, seen, stack = 0, set(), [value]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray):
            owner = item
            while isinstance(owner.base, np.ndarray):
                owner = owner.base
            if owner is item or id(owner) not in seen:
                seen.add(id(owner))
                total += owner.nbytes
        elif isinstance(item, str | bytes):
            total += len(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return total


class _Abandoned(Exception):
    """The computing thread stopped without a value or an error of its own (its script was stopped or rerun):
    a waiter computes the value itself."""


class ByteBudgetCache:
    """LRU cache whose values together hold at most ``max_bytes`` bytes of NumPy arrays (``held_bytes``).

    Thread-safe; ``get`` computes a missing value outside the lock, once per key however many threads ask.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()  # least recently used first
        self._pending: dict[Hashable, Future] = {}
        self._lock = threading.Lock()
        self._bytes = 0

    def get(self, key: Hashable, compute: Callable[[], T],
            waiting: Callable[[], AbstractContextManager] = nullcontext) -> T:
        """The value of ``key``: kept, being computed by another thread (wait for it, inside ``waiting()``), or
        ``compute()`` now. An exception from ``compute`` reaches every thread waiting for it and is not kept."""
        while True:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return self._entries[key][0]
                future = self._pending.get(key)
                if future is None:
                    future = self._pending[key] = Future()
                    break
            with waiting():
                try:
                    return future.result()
                except _Abandoned:
                    continue  # the computing thread was stopped: compute it here
        try:
            value = compute()
        except BaseException as error:
            with self._lock:
                del self._pending[key]
            future.set_exception(error if isinstance(error, Exception) else _Abandoned())
            raise
        with self._lock:
            self._keep(key, value)
            del self._pending[key]
        future.set_result(value)
        return value

    def peek(self, key: Hashable) -> Any | None:
        """The value kept for ``key`` (now the most recently used), or None: never computed, nor waited for."""
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return self._entries[key][0]

    def _keep(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` (lock held), dropping least recently used entries until the budget holds."""
        size = held_bytes(value)
        if size > self.max_bytes:
            return
        self._entries[key] = (value, size)
        self._bytes += size
        self._trim()

    def _trim(self) -> None:
        while self._bytes > self.max_bytes and self._entries:
            _, (_, size) = self._entries.popitem(last=False)
            self._bytes -= size

    def resize(self, max_bytes: int) -> None:
        """A new budget (dropping the least recently used entries that no longer fit)."""
        with self._lock:
            self.max_bytes = max_bytes
            self._trim()

    @property
    def kept_bytes(self) -> int:
        """Bytes the kept values hold together (<= ``max_bytes``)."""
        return self._bytes

    def kept_keys(self) -> list[Hashable]:
        """The kept keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries
