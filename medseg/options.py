"""Every option vocabulary, defined once: the library checks against these tuples and the
command line derives its choices from them."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from .errors import UsageError

MODES = ("pair", "volume")  # SAM2 prompting: 2-frame clips, or propagation through the stack
MATCHERS = ("sam2", "ssim", "ncc")  # query frame <-> support member distance
METHODS = ("sam2", "transfer")  # transfer: matched member's mask, no SAM2
AXES = ("axial", "coronal", "sagittal")
MODALITIES = ("auto", "ct", "mr")
MODELS = ("tiny", "small", "base-plus", "large")  # SAM2.1 sizes
PRECISIONS = ("auto", "bf16", "fp32")
FORMATS = ("nifti", "seg.nrrd", "dicom-seg", "itk-snap")
PRESENCE = ("auto", "off")  # empty masks on frames judged not to hold the structure
CORRESPONDENCE = ("auto", "off")  # relate query slices to support slices (off: by order only)
PLACEMENT = ("auto", "world", "body", "search", "centre")  # where the support sits in-plane
OVERLAP = ("first", "keep")  # overlapping structures: the first listed wins, or both kept


def check_choice(value: str, choices: Sequence[str], option: str) -> str:
    """``value`` if it is one of ``choices``, else a :class:`UsageError` naming them."""
    if value not in choices:
        raise UsageError(f"{option} {value!r}: choose one of {', '.join(choices)}", option=option)
    return value


def split_list(spec: str | Sequence[str] | None) -> list[str] | None:
    """``"a,b"`` or a sequence -> ``["a", "b"]`` (None stays None)."""
    if spec is None:
        return None
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [str(s).strip() for s in items if str(s).strip()]


def check_image_size(size: int | None) -> int | None:
    """SAM2 input size: a multiple of 32 from 64 to 2048 (None: the checkpoint's)."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 64 or size > 2048 \
            or size % 32:
        raise UsageError(f"image_size {size!r}: use a multiple of 32 from 64 to 2048 (official "
                         "checkpoints: 1024)", option="image_size")
    return size


def check_int(value: int, option: str, low: int, high: int | None = None) -> int:
    """An integer option within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or \
            (high is not None and value > high):
        bound = f">= {low}" if high is None else f"from {low} to {high}"
        raise UsageError(f"{option} {value!r}: must be an integer {bound}", option=option)
    return value


def check_positive(value: float, option: str) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UsageError(f"{option} {value!r}: must be a positive number", option=option)
    return float(value)


def check_device(spec: str | None) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``gpu`` or ``mps`` (availability is checked
    when the model is loaded)."""
    s = (spec or "auto").strip().lower()
    if not re.fullmatch(r"auto|cpu|gpu|mps|cuda(:\d+)?", s):
        raise UsageError(f"device {spec!r}: use auto, cpu, cuda, cuda:N or mps", option="device")
    return s


def check_range_syntax(spec: str | None) -> str | None:
    """``START:STOP`` frame indices (either may be empty)."""
    if spec and not re.fullmatch(r"\s*-?\d*\s*:\s*-?\d*\s*", spec):
        raise UsageError(f"z_range {spec!r}: use START:STOP frame indices, e.g. 10:80",
                         option="z_range")
    return spec
