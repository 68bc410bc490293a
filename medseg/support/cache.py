"""The bank cache: placed support slices and their banks, reused by content.

A cohort's queries often share a grid and a placement: their support banks are then the
same, and so are the banks' encodings in the engine (keyed by the bank's content key).
The cache is owned by the :class:`~medseg.api.Segmenter` and keyed by content -- the
support frame's pixels and masks, the query grid, the placement and the bank settings --
so no module relies on another returning the same object.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from .augment import Bank


class BankCache:
    """Banks by content key, the least recently used dropped beyond ``capacity``."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._banks: OrderedDict[str, Bank] = OrderedDict()
        self.hits = 0
        self._lock = threading.Lock()  # support slices are banked side by side

    def __len__(self) -> int:
        return len(self._banks)

    def get(self, key: str, make: Callable[[], Bank]) -> Bank:
        """The bank for ``key``, made on first use."""
        with self._lock:
            if key in self._banks:
                self._banks.move_to_end(key)
                self.hits += 1
                return self._banks[key]
        bank = make()  # outside the lock: banks of other slices are made meanwhile
        with self._lock:
            self._banks[key] = bank
            while len(self._banks) > self.capacity:
                self._banks.popitem(last=False)
        return bank

    def clear(self) -> None:
        self._banks.clear()
