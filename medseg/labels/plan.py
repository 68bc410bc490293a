"""The label plan: one owner for support values, output values, names, colours, terminology.

A run segments some structures of the support label. Each gets an output value 1..N in
the order asked for, a name and a colour (given, read from the label file, or generated,
and flagged as such), and the terminology the support carried. Every output (labelmap,
colour tables, ``.seg.nrrd``, DICOM-SEG, report, QC picture) reads the plan, so names and
colours cannot drift from the values they belong to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from ..errors import InputError, UsageError
from ..options import check_name
from .record import SliceRecord

# Colours of common structures (Slicer's General Anatomy palette), else a fixed cycle.
NAMED_COLORS: dict[str, tuple[int, int, int]] = {
    "liver": (221, 130, 101), "spleen": (157, 108, 162), "kidney": (185, 102, 83),
    "right kidney": (185, 102, 83), "left kidney": (185, 102, 83), "stomach": (216, 132, 105),
    "pancreas": (249, 180, 111), "aorta": (224, 97, 76), "tumor": (253, 135, 192),
    "tumour": (253, 135, 192), "heart": (206, 110, 84), "lung": (197, 165, 145),
}


CYCLE = [
    (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
    (221, 130, 101), (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0),
]


@dataclass(frozen=True)
class SegmentInfo:
    """What a label input says about one structure (all optional but the value)."""

    value: int
    name: str | None = None
    color: tuple[int, int, int] | None = None  # 0-255
    terminology: str | None = None  # Slicer terminology entry (DICOM codes)
    segment_id: str | None = None
    record: SliceRecord | None = None  # a medseg result's slice record (drawn / estimated)
    name_auto: bool = False  # the file says its name was generated (Slicer's flag)
    color_auto: bool = False  # ... and its colour


@dataclass(frozen=True)
class PlanEntry:
    """One structure of the run."""

    support_value: int
    output_value: int
    name: str
    color: tuple[int, int, int]
    name_auto: bool  # generated, not given
    color_auto: bool
    terminology: str | None = None

    def as_dict(self) -> dict:
        return {**asdict(self), "color": list(self.color)}


@dataclass(frozen=True)
class LabelPlan:
    """The structures of a run, in output order (output values 1..N)."""

    entries: tuple[PlanEntry, ...]

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def support_values(self) -> list[int]:
        return [e.support_value for e in self.entries]

    @property
    def output_values(self) -> list[int]:
        return [e.output_value for e in self.entries]

    @property
    def dtype(self) -> str:
        """Smallest unsigned type of the output labelmap."""
        return "uint8" if len(self.entries) <= 255 else "uint16"

    def by_support(self, value: int) -> PlanEntry:
        return next(e for e in self.entries if e.support_value == value)

    def by_name(self, name: str) -> PlanEntry:
        return next(e for e in self.entries if e.name == name)

    def by_output(self, value: int) -> PlanEntry:
        return next(e for e in self.entries if e.output_value == value)

    def as_list(self) -> list[dict]:
        return [e.as_dict() for e in self.entries]

    @classmethod
    def from_entries(cls, rows: Sequence[Mapping]) -> LabelPlan:
        """Rebuild from :meth:`as_list` output (e.g. a saved report)."""
        return cls(tuple(PlanEntry(**{**r, "color": tuple(r["color"])}) for r in rows))


def label_name(text: object, source: str) -> str:
    """A structure name read from a file, checked as ``--names`` are (no control
    characters); ``source`` names the file and field in the one-line error."""
    try:
        return check_name(str(text), source=source)
    except UsageError as exc:
        raise InputError(str(exc)) from None


def _resolve(token: int | str, present: Mapping[int, SegmentInfo], source: str) -> int:
    """A ``labels`` item (value or segment name) -> support value."""
    text = str(token).strip()
    if re.fullmatch(r"[+-]?\d+", text):
        v = int(text)
        if v not in present:
            raise InputError(f"{source}: value {v} not present; values present: "
                             f"{_listing(present)}", option="labels")
        return v
    hits = [v for v, s in present.items() if s.name and s.name.casefold() == text.casefold()]
    if not hits:
        raise InputError(f"{source}: no segment named {text!r}; present: {_listing(present)}",
                         option="labels")
    return hits[0]


def _listing(present: Mapping[int, SegmentInfo]) -> str:
    return ", ".join(f"{v} ({s.name})" if s.name else str(v) for v, s in sorted(present.items()))


def make_plan(present: Mapping[int, SegmentInfo], labels: Sequence[int | str] | None = None,
              names: Sequence[str] | None = None, source: str = "support label") -> LabelPlan:
    """The plan for ``labels`` (values or names; default all present, ascending)."""
    values = [_resolve(t, present, source) for t in labels] if labels else sorted(present)
    dup = sorted({v for v in values if values.count(v) > 1})
    if dup:
        raise UsageError(f"labels: value(s) {dup} listed twice; each structure once",
                         option="labels")
    if names is not None and len(names) != len(values):
        raise UsageError(f"names: {len(names)} names for {len(values)} labels", option="names")
    given = [check_name(n) for n in names] if names else None
    if given and len({n.casefold() for n in given}) < len(given):
        raise UsageError(f"names: {given} repeats a name; names must be distinct", option="names")
    entries = []
    for i, v in enumerate(values):
        info = present.get(v, SegmentInfo(v))
        name = given[i] if given else (info.name or f"label_{v}")
        named = NAMED_COLORS.get(name.casefold().replace("_", " "))
        color = info.color or named or CYCLE[i % len(CYCLE)]
        entries.append(PlanEntry(
            support_value=v, output_value=i + 1, name=name, color=tuple(int(c) for c in color),
            name_auto=not given and (not info.name or info.name_auto),
            color_auto=(info.color is None and named is None) or
            (info.color is not None and info.color_auto),
            terminology=info.terminology))
    return LabelPlan(tuple(entries))
