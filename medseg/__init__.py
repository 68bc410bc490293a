"""medseg: training-free one-shot segmentation of 3D medical volumes with SAM2.

Label one slice of a support scan; medseg segments the same structure through a new query
scan. Heavy dependencies (torch, sam2) load only when a model is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = [
    "__version__",
    "Volume",
    "read_image",
    "segment",
    "Segmenter",
    "SegmentConfig",
    "Result",
    "BankConfig",
    "evaluate_labelmaps",
    "MedsegError",
]

_LAZY = {
    "Volume": ("medseg.io", "Volume"),
    "read_image": ("medseg.io", "read_image"),
    "segment": ("medseg.api", "segment"),
    "Segmenter": ("medseg.api", "Segmenter"),
    "SegmentConfig": ("medseg.api", "SegmentConfig"),
    "Result": ("medseg.api", "Result"),
    "BankConfig": ("medseg.augment", "BankConfig"),
    "evaluate_labelmaps": ("medseg.metrics", "evaluate_labelmaps"),
    "MedsegError": ("medseg.errors", "MedsegError"),
}

if TYPE_CHECKING:  # pragma: no cover
    from .api import Result, SegmentConfig, Segmenter, segment
    from .augment import BankConfig
    from .errors import MedsegError
    from .io import Volume, read_image
    from .metrics import evaluate_labelmaps


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")
