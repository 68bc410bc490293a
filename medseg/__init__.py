"""medseg: training-free one-shot segmentation of 3D medical volumes with SAM2.

Paint one slice of a structure in a scan; medseg segments that structure through the rest
of that scan and through new scans, with no training, by prompting Meta's SAM2 video model
(Zu et al. 2025, arXiv 2503.04826). Heavy dependencies (torch, sam2) load only when a
model is needed.

Public API (``help(medseg.segment)`` and so on for each):

* :func:`segment` -- segment one query from a labelled support scan;
* :class:`Segmenter` -- keep SAM2 loaded across queries (``segment``, ``segment_many``);
* :class:`SegmentConfig`, :class:`ModelConfig` -- the settings, one field per option;
* :class:`Result` -- a result: labelmap with the query's geometry, plan, report, ``save``;
* :class:`Volume`, :func:`read_image` -- images with their exact geometry;
* :class:`BankConfig` -- the augmentation bank's settings;
* :func:`evaluate_labelmaps` -- Dice, HD95, ASSD, surface Dice in millimetres;
* :class:`MedsegError` -- every user-side problem (one line; the CLI's exit codes).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = [
    "__version__",
    "BankConfig",
    "MedsegError",
    "ModelConfig",
    "Result",
    "SegmentConfig",
    "Segmenter",
    "Volume",
    "evaluate_labelmaps",
    "read_image",
    "segment",
]

_LAZY = {
    "Volume": ("medseg.io", "Volume"),
    "read_image": ("medseg.io", "read_image"),
    "segment": ("medseg.api", "segment"),
    "Segmenter": ("medseg.api", "Segmenter"),
    "SegmentConfig": ("medseg.config", "SegmentConfig"),
    "ModelConfig": ("medseg.config", "ModelConfig"),
    "BankConfig": ("medseg.config", "BankConfig"),
    "Result": ("medseg.result", "Result"),
    "evaluate_labelmaps": ("medseg.metrics", "evaluate_labelmaps"),
    "MedsegError": ("medseg.errors", "MedsegError"),
}

if TYPE_CHECKING:  # pragma: no cover
    from .api import Segmenter, segment
    from .config import BankConfig, ModelConfig, SegmentConfig
    from .errors import MedsegError
    from .io import Volume, read_image
    from .metrics import evaluate_labelmaps
    from .result import Result


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
