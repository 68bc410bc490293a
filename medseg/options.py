"""Every option vocabulary, defined once: the library checks against these tuples and the
command line derives its choices from them."""

from __future__ import annotations

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
PLACEMENT = ("auto", "world", "search", "centre")  # where the support structure sits in-plane


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
