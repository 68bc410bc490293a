"""What a plain label map's values mean, from the files that travel with it.

A label map holds numbers only. Its names, colours and (for a medseg result) slice record
come from a description beside it:

* a medseg report (``q_report.json`` beside ``q_labels.nii.gz``): names, colours,
  terminology and the slice record of every structure;
* an nnU-Net / Medical Segmentation Decathlon ``dataset.json`` (``labels``), in the label
  map's folder or the one above (``labelsTr/`` beside ``dataset.json``);
* a 3D Slicer colour table (``.ctbl``) or an ITK-SNAP label description (``.txt``) with
  the label map's stem;
* or a file given with ``--label-names``.

Every name is checked as ``--names`` are (no control characters).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import InputError
from .plan import SegmentInfo, label_name
from .record import SliceRecord

REPORT_SUFFIXES = ("_labels.nii.gz", "_labels.nii", ".seg.nrrd")


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def from_medseg_report(path: Path) -> dict[int, SegmentInfo]:
    """Structures of a medseg labelmap, from the report written beside it (empty if none)."""
    for suf in REPORT_SUFFIXES:
        if path.name.endswith(suf):
            rep = path.with_name(path.name[: -len(suf)] + "_report.json")
            break
    else:
        return {}
    try:
        segs = json.loads(rep.read_text(encoding="utf-8")).get("segments", [])
    except (OSError, ValueError, AttributeError):
        return {}
    out = {}
    for s in segs if isinstance(segs, list) else []:
        try:
            v = int(s["output_value"])
            colour = tuple(int(c) for c in s.get("color") or ()) or None
        except (KeyError, TypeError, ValueError):
            continue
        name = label_name(s.get("name") or f"label_{v}", f"{rep}: segments[{v}].name")
        record = SliceRecord.from_dict(s["slice_record"]) if s.get("slice_record") else None
        out[v] = SegmentInfo(v, name, colour if colour and len(colour) == 3 else None,
                             s.get("terminology"), None, record)
    return out


def from_dataset_json(path: Path) -> dict[int, SegmentInfo]:
    """``labels`` of an nnU-Net (name -> value) or MSD (value -> name) ``dataset.json``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict):
        raise InputError(f"{path}: has no 'labels' mapping")
    out = {}
    for k, v in labels.items():
        if isinstance(v, (list, tuple)):  # nnU-Net region labels: not a single value
            continue
        name, value = (k, v) if str(v).lstrip("-").isdigit() and not str(k).isdigit() else (v, k)
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise InputError(f"{path}: labels[{ascii(k)}] is not an integer value") from None
        if value > 0:
            out[value] = SegmentInfo(value, label_name(name, f"{path}: labels[{ascii(k)}]"))
    return out


def from_ctbl(path: Path) -> dict[int, SegmentInfo]:
    """A 3D Slicer colour table: ``value name R G B A`` per line (0-255)."""
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            value = int(parts[0])
            rgb = tuple(int(c) for c in parts[2:5])
        except (ValueError, IndexError):
            raise InputError(f"{path}: line {n}: expected 'value name R G B A'") from None
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise InputError(f"{path}: line {n}: colour components must be 0-255")
        if value > 0:
            name = label_name(parts[1].replace("_", " "), f"{path}: line {n}")
            out[value] = SegmentInfo(value, name, rgb)  # type: ignore[arg-type]
    return out


_ITKSNAP = re.compile(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+\s+\S+\s+\S+\s+"(.*)"\s*$', re.M)


def from_itksnap(path: Path) -> dict[int, SegmentInfo]:
    """An ITK-SNAP label description: ``IDX R G B A VIS MSH "LABEL"`` per line."""
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _ITKSNAP.match(line)
        if not m:
            raise InputError(f"{path}: line {n}: not an ITK-SNAP label line")
        value, rgb = int(m[1]), (int(m[2]), int(m[3]), int(m[4]))
        if not all(0 <= c <= 255 for c in rgb):
            raise InputError(f"{path}: line {n}: colour components must be 0-255")
        if value > 0:
            out[value] = SegmentInfo(value, label_name(m[5], f"{path}: line {n}"), rgb)
    return out


def read_label_names(path: Path) -> dict[int, SegmentInfo]:
    """A label description file of any of the forms above, by its content."""
    if not path.is_file():
        raise InputError(f"label names {path}: no such file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        return from_dataset_json(path)
    if "ITK-SnAP" in text[:200] or _ITKSNAP.search(text):
        return from_itksnap(path)
    return from_ctbl(path)


def names_beside(path: Path) -> tuple[dict[int, SegmentInfo], Path | None]:
    """The description found beside a label map, and the file it came from."""
    found = from_medseg_report(path)
    if found:
        return found, path
    stem = _stem(path)
    for cand in (path.with_name(f"{stem}.ctbl"), path.with_name(f"{stem}_itksnap.txt"),
                 path.with_name(f"{stem}.txt"), path.parent / "dataset.json",
                 path.parent.parent / "dataset.json"):
        if cand.is_file():
            try:
                return read_label_names(cand), cand
            except (InputError, ValueError, UnicodeDecodeError):
                continue
    return {}, None
