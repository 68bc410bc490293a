"""3D Slicer segmentations (``.seg.nrrd``) in every form Slicer writes: one shared labelmap
layer or several (overlapping segments), full extent or cropped to the painted extent.
Names, colours and terminology are kept; headers are read as UTF-8, as Slicer writes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._lazy import lazy_import
from ..errors import InputError
from ..io import Volume
from .plan import SegmentInfo, label_name
from .record import TAG, SliceRecord
from .support import SupportLabel, _integer_array, on_image_grid

nrrd = lazy_import("nrrd", install="pip install pynrrd")


def is_slicer_seg(p: Path) -> bool:
    """A NRRD whose header holds Slicer's segmentation fields (read as bytes, so a file
    whose header is broken is still recognised and refused with a clear message)."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(1 << 16).split(b"\n\n", 1)[0]
    except OSError:
        return False
    return head.startswith(b"NRRD") and (b"Segment0_ID:=" in head
                                         or b"Segmentation_MasterRepresentation" in head)


def read_slicer_seg(p: Path, image: Volume, resample: bool, name: str) -> SupportLabel:
    """A ``.seg.nrrd`` in any form Slicer writes (3D shared layer or 4D layers, cropped)."""
    try:
        data, header = nrrd.read(str(p), index_order="C")
    except Exception as exc:
        raise InputError(f"{name} {p}: cannot read the Slicer segmentation ({exc})") from exc
    header.update(utf8_custom_fields(p))  # pynrrd drops non-ASCII bytes of segment names
    data = _layers_first(data, header, p)
    geo = _nrrd_geometry(header, p)
    segments, where = {}, {}
    metas = _segment_headers(header, p, len(data))
    collide = len({(m["layer"], m["value"]) for m in metas}) < len(metas) or \
        len({m["value"] for m in metas}) < len(metas)
    for i, m in enumerate(metas):
        value = i + 1 if collide else m["value"]
        segments[value] = SegmentInfo(value, m["name"], m["color"], m["terminology"], m["id"],
                                      m["record"], m["name_auto"], m["color_auto"])
        where[value] = (m["layer"], m["value"])
    layers, notes = [], []
    for layer in data:
        vol, note = on_image_grid(Volume(np.ascontiguousarray(layer), **geo, path=str(p)), image,
                                  resample, name)
        layers.append(_integer_array(vol, name))
        if note and note not in notes:
            notes.append(note)
    if collide:
        notes.append("label values repeat across layers: segments numbered 1..N in file order")
    empty = [v for v in segments if not (layers[where[v][0]] == where[v][1]).any()]
    for v in empty:  # painted nothing (or nothing inside the image)
        segments.pop(v)
    if not segments:
        raise InputError(f"{name} {p}: every segment is empty; paint the structure first")
    return SupportLabel(layers, segments, where, str(p), "slicer", notes)


def _layers_first(data: np.ndarray, header: dict, p: Path) -> np.ndarray:
    """(layers, z, y, x): Slicer writes overlapping segments as a 4D file whose ``list``
    axis (one per layer) is the NRRD's first, i.e. the last axis in C order."""
    if data.ndim == 3:
        return data[None]
    kinds = [str(k).lower() for k in header.get("kinds", [])]
    if data.ndim != 4 or kinds.count("list") != 1:
        raise InputError(f"{p}: a 4D segmentation needs one 'list' axis (kinds: "
                         f"{' '.join(kinds) or 'none'})")
    return np.moveaxis(data, data.ndim - 1 - kinds.index("list"), 0)


def utf8_custom_fields(p: Path) -> dict[str, str]:
    """The ``key:=value`` fields of a NRRD header, decoded as UTF-8 (as Slicer writes them)."""
    out = {}
    with open(p, "rb") as fh:
        for raw in fh:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                break
            if ":=" in line and not line.startswith("#"):
                k, v = line.split(":=", 1)
                out[k.strip()] = v.strip()
    return out


def _nrrd_geometry(header: dict, p: Path) -> dict:
    """Spacing/origin/direction (ITK, LPS) of a Slicer ``.seg.nrrd``'s three domain axes."""
    rows = []
    for r in header.get("space directions", []):  # a 4D file's list axis has "none"
        if r is None or isinstance(r, str):
            continue
        a = np.asarray(r, dtype=float)
        if not np.isnan(a).all():
            rows.append(a)
    if len(rows) != 3:
        raise InputError(f"{p}: the segmentation has no 3D geometry (space directions)")
    vecs = np.stack(rows)  # rows: world vector of index axes i, j, k
    origin = np.asarray(header.get("space origin", [0, 0, 0]), float)
    space = str(header.get("space", "left-posterior-superior")).lower()
    if space in ("right-anterior-superior", "ras"):
        flip = np.array([-1.0, -1.0, 1.0])
        vecs, origin = vecs * flip, origin * flip
    spacing = np.linalg.norm(vecs, axis=1)
    return {"spacing": tuple(spacing), "origin": tuple(origin),
            "direction": (vecs / spacing[:, None]).T}


def _segment_headers(header: dict, p: Path, layers: int) -> list[dict]:
    """Every segment's fields, checked like options: a malformed or impossible field is a
    one-line :class:`InputError` naming the file and the field."""
    out, i = [], 0
    while f"Segment{i}_ID" in header:
        out.append(_segment_fields(header, i, p, layers))
        i += 1
    extra = sorted({k.split("_")[0] for k in header if k.startswith("Segment") and "_" in k
                    and k.split("_")[0][7:].isdigit() and int(k.split("_")[0][7:]) >= i})
    if extra:
        raise InputError(f"{p}: {extra[0]} follows a gap in the segment numbering (no "
                         f"Segment{i}_ID); re-save the segmentation from 3D Slicer")
    names = [m["name"].casefold() for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"{p}: two segments are named {dup[0]!r}; give them distinct names")
    return out


def _segment_fields(header: dict, i: int, p: Path, layers: int) -> dict:
    def g(key: str, default=None):
        return header.get(f"Segment{i}_{key}", default)

    def bad(key: str, why: str) -> InputError:
        return InputError(f"{p}: Segment{i}_{key} {ascii(g(key))}: {why}")

    tags = dict(t.split(":", 1) for t in str(g("Tags", "")).split("|") if ":" in t)
    try:
        value = int(str(g("LabelValue", i + 1)).strip())
    except ValueError:
        raise bad("LabelValue", "not an integer") from None
    if value < 1:
        raise bad("LabelValue", "must be 1 or more (0 is the background)")
    try:
        layer = int(str(g("Layer", 0)).strip())
    except ValueError:
        raise bad("Layer", "not an integer") from None
    if not 0 <= layer < layers:
        raise bad("Layer", f"outside the file's {layers} layer(s)")
    name = label_name(g("Name") or g("ID"), f"{p}: Segment{i}_Name")
    return {"id": g("ID"), "name": name, "value": value, "layer": layer,
            "name_auto": str(g("NameAutoGenerated", "0")).strip() == "1",
            "color_auto": str(g("ColorAutoGenerated", "0")).strip() == "1",
            "color": _colour(g("Color"), bad), "terminology": tags.get("TerminologyEntry"),
            "record": SliceRecord.from_tags({k: v for k, v in tags.items()
                                             if k.startswith(f"{TAG}.")})}


def _colour(text, bad) -> tuple[int, int, int] | None:
    if not text:
        return None
    try:
        rgb = [float(c) for c in str(text).split()[:3]]
    except ValueError:
        raise bad("Color", "three numbers from 0 to 1 expected") from None
    if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
        raise bad("Color", "three numbers from 0 to 1 expected")
    return tuple(int(round(c * 255)) for c in rgb)  # type: ignore[return-value]
