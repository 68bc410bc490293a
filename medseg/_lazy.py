"""Heavy and optional dependencies, imported on first use through one helper.

Modules name what they need at their top, where the import graph can be read::

    sitk = lazy_import("SimpleITK")
    ray = lazy_import("ray", install="pip install 'medseg[ray]'")

and the module is imported when an attribute is first used, so ``import medseg`` and
``medseg --help`` stay light (torch, sam2, SimpleITK, scipy, matplotlib load only when a
stage needs them). A missing optional package becomes a :class:`MissingDependency`
(a one-line :class:`~medseg.errors.MedsegError`) naming what to install.

medseg imports in more than one thread (the model loads while the scans are read; the
augmentation library is imported in the background). Python's import machinery does not
make two threads importing parts of one package at once safe: a submodule imported while
another thread is still running the package's ``__init__`` can meet a cross-thread
import deadlock, and the thread that Python picks to fail removes the half-imported
package from ``sys.modules`` under the other (``KeyError: 'scipy'``). So every import that
medseg starts -- a lazy module's first use, :func:`import_in_background` -- holds one
process-wide lock; a thread needing a module another thread is importing waits for it.
The rule that keeps this free of lock-order hangs: no medseg module uses a lazy module at
import time (checked by the tests).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import time
import types
from collections.abc import Iterable
from typing import Any

from .errors import MedsegError


class MissingDependency(MedsegError):
    """An optional package that a requested feature needs is not installed."""


class _ImportLock:
    """A re-entrant lock for imports, at which the background importer gives way.

    The lock is the interpreter's own (C) re-entrant lock, taken and let go only by ``with``:
    a signal handler that raises while a thread waits for it (Ctrl-C, medseg's SIGTERM)
    leaves it whole, where a lock written in Python can be left half-released by an
    exception raised between two of its lines. A plain lock lets the thread releasing it
    take it straight back, so between its modules the background importer waits while
    another thread is asking -- for at most :data:`GIVE_WAY_S`, which bounds the wait should
    an interrupted thread leave its entry behind.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.asking: list[int] = []  # threads (not the background's) waiting or importing

    def give_way(self) -> None:
        """Wait (a while at most) until no other thread is asking for the lock."""
        until = time.monotonic() + GIVE_WAY_S
        while self.asking and time.monotonic() < until:
            time.sleep(0.002)


# the longest the background importer waits for other threads' imports between its own
GIVE_WAY_S = 2.0

# held by every import medseg starts (re-entrant: an import may use a lazy module)
_IMPORTING = _ImportLock()


def _after_fork() -> None:  # a child starts with no import under way
    global _IMPORTING
    _IMPORTING = _ImportLock()


os.register_at_fork(after_in_child=_after_fork)


def import_module(name: str) -> types.ModuleType:
    """``importlib.import_module(name)`` under medseg's import lock (see the module
    docstring): never beside another thread's import that medseg started.

    Args:
        name: the module's dotted name.

    Returns:
        The module.
    """
    mod = sys.modules.get(name)
    if mod is not None and not getattr(getattr(mod, "__spec__", None), "_initializing", False):
        return mod
    turns, me = _IMPORTING, threading.get_ident()
    turns.asking.append(me)  # list operations are atomic
    try:
        with turns.lock:
            return importlib.import_module(name)
    finally:
        turns.asking.remove(me)


def import_in_background(names: Iterable[str]) -> threading.Thread | None:
    """Start importing ``names`` (in turn, each under the import lock) in a daemon thread.

    A failure (memory, a broken install) is left to the thread that needs the module: it
    imports it again and reports it in one line.

    Args:
        names: dotted module names; those already imported are skipped.

    Returns:
        The thread, or None when there was nothing to import.
    """
    todo = [n for n in names if n not in sys.modules]
    if not todo:
        return None
    thread = threading.Thread(target=_quiet_imports, args=todo, daemon=True,
                              name="medseg-imports")
    thread.start()
    return thread


def _quiet_imports(*names: str) -> None:
    for name in names:
        if name in sys.modules:
            continue
        _IMPORTING.give_way()  # a thread that asked meanwhile goes first
        try:
            with _IMPORTING.lock:
                importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - reported where the module is needed
            continue


class LazyModule(types.ModuleType):
    """A stand-in for a module that imports it when one of its attributes is first used."""

    def __init__(self, name: str, install: str | None = None) -> None:
        super().__init__(name)
        self.__dict__["_lazy_install"] = install
        self.__dict__["_lazy_module"] = None

    def _load(self) -> types.ModuleType:
        mod = self.__dict__["_lazy_module"]
        if mod is None:
            try:
                mod = import_module(self.__name__)
            except ImportError as exc:
                hint = self.__dict__["_lazy_install"] or f"pip install {self.__name__.split('.')[0]}"
                raise MissingDependency(f"this needs the package {self.__name__!r}, which is not "
                                        f"installed or broken ({exc}); install it: {hint}"
                                        ) from exc
            self.__dict__["_lazy_module"] = mod
        return mod

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_lazy_module"] is not None else "not loaded yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy_import(name: str, *, install: str | None = None) -> Any:
    """``name`` as a module imported on first attribute use (see the module docstring).

    Args:
        name: the module's dotted name, e.g. ``"scipy.ndimage"``.
        install: what to tell the user when the package is missing (default
            ``pip install <top-level package>``).

    Returns:
        A module-like object.
    """
    return LazyModule(name, install)


def available(name: str) -> bool:
    """Whether ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
