"""Heavy and optional dependencies, imported on first use through one helper.

Modules name what they need at their top, where the import graph can be read::

    sitk = lazy_import("SimpleITK")
    ray = lazy_import("ray", install="pip install 'medseg[ray]'")

and the module is imported when an attribute is first used, so ``import medseg`` and
``medseg --help`` stay light (torch, sam2, SimpleITK, scipy, matplotlib load only when a
stage needs them). A missing optional package becomes a :class:`MissingDependency`
(a one-line :class:`~medseg.errors.MedsegError`) naming what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import types
from typing import Any

from .errors import MedsegError


class MissingDependency(MedsegError):
    """An optional package that a requested feature needs is not installed."""


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
                mod = importlib.import_module(self.__name__)
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
