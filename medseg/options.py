"""Every option vocabulary and check, defined once: the settings (:mod:`medseg.config`)
check against these and the command line derives its choices from them. Light on
purpose (no numpy): the command line imports it to build its help."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

from .errors import UsageError

MODES = ("pair", "volume")  # SAM2 prompting: 2-frame clips, or propagation through the stack
MATCHERS = ("sam2", "ssim", "ncc")  # query frame <-> support member distance
METHODS = ("sam2", "transfer")  # transfer: matched member's mask, no SAM2
AXES = ("axial", "coronal", "sagittal")
MODALITIES = ("auto", "ct", "mr")
MODELS = ("tiny", "small", "base-plus", "large")  # SAM2.1 sizes
PRECISIONS = ("auto", "bf16", "fp32")
FORMATS = ("nifti", "seg.nrrd", "dicom-seg", "rtstruct", "itk-snap")
COMPLETE = ("auto", "on", "off")  # complete a structure painted on a few slices in 3D
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


# (low, high) in HU
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (-125.0, 275.0),  # the benchmark convention (W400 L75)
    "soft-tissue": (-160.0, 240.0),  # W400 L40
    "lung": (-1350.0, 150.0),  # W1500 L-600
    "bone": (-450.0, 1050.0),  # W1500 L300
    "brain": (0.0, 80.0),  # W80 L40
}


def parse_window(spec: str | None) -> tuple[float, float] | None:
    """``None`` | preset name | ``"L,W"`` -> (low, high) in HU."""
    if spec is None or spec == "auto":
        return None
    if spec in CT_WINDOWS:
        return CT_WINDOWS[spec]
    try:
        level, width = (float(v) for v in spec.split(","))
        if not (math.isfinite(level) and math.isfinite(width)):
            raise ValueError
    except ValueError:
        raise UsageError(
            f"window {spec!r}: use a preset ({', '.join(CT_WINDOWS)}) or 'LEVEL,WIDTH' "
            "in HU (finite numbers), e.g. '40,400'", option="window") from None
    if width <= 0:
        raise UsageError(f"window {spec!r}: width must be positive", option="window")
    return (level - width / 2.0, level + width / 2.0)


def check_window(spec: str | None) -> str | None:
    """A window preset or ``LEVEL,WIDTH`` (checked, kept as given)."""
    parse_window(spec)
    return spec


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_name(name: str, option: str = "names", source: str | None = None) -> str:
    """A structure name every output can carry: any Unicode, no control characters
    (``source`` names the file and field a name came from)."""
    where = source or option
    text = unicodedata.normalize("NFC", str(name)).strip()
    if not text:
        raise UsageError(f"{where}: an empty name", option=option)
    if _CONTROL.search(text):
        raise UsageError(f"{where}: {ascii(text)} holds a control character (newline, tab, "
                         "escape, ...)", option=option)
    return text


def check_names(names: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Output names: each checked with :func:`check_name`, distinct (ignoring case)."""
    items = split_list(names)
    if items is None:
        return None
    out = tuple(check_name(n) for n in items)
    if len({n.casefold() for n in out}) < len(out):
        raise UsageError(f"names: {list(out)} repeats a name; names must be distinct",
                         option="names")
    return out


def check_text(value: str, option: str) -> str:
    """A plain one-line value (a UID, an address): no control characters."""
    text = str(value).strip()
    if not text or _CONTROL.search(text):
        raise UsageError(f"{option} {ascii(value)}: give a one-line value", option=option)
    return text


def check_ray_address(value: str) -> str:
    """A Ray cluster's address: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` (reachability
    is checked before any work, see :func:`medseg.cohort.cluster.check_reachable`)."""
    text = check_text(value, "ray_address")
    if text == "auto":
        return text
    m = re.fullmatch(r"(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})", text)
    if not m or not 0 < int(m.group(3)) < 65536:
        raise UsageError(f"ray_address {ascii(value)}: give auto, HOST:PORT or ray://HOST:PORT "
                         "(e.g. 10.0.0.5:6379)", option="ray_address")
    return text


def check_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """Output formats, each one of :data:`FORMATS`, at least one."""
    items = split_list(formats) or []
    for f in items:
        check_choice(f, FORMATS, "format")
    if not items:
        raise UsageError(f"format: give at least one of {', '.join(FORMATS)}", option="format")
    return tuple(dict.fromkeys(items))
