"""Support labels in the forms users have them, put on the support image's grid.

* a label map (NIfTI, NRRD, MHA; integer values, 0 background), any value range;
* a 3D Slicer segmentation (``.seg.nrrd``): full extent, cropped to the painted extent
  (accepted when it is an exact sub-grid of the image), or multi-layer (overlapping
  segments); names, colours and terminology are kept;
* DICOM-SEG and RTSTRUCT files (see :mod:`medseg.dicom`).

Every form becomes a :class:`SupportLabel`: integer layers on the image grid, and per
structure its value, layer and what the file says about it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import Volume, read_image, same_geometry
from .labels import SegmentInfo

SUBGRID_TOL = 1e-3  # voxels: how far a cropped grid's origin may sit from an image voxel


@dataclass
class SupportLabel:
    """Structures of a support label on the support image's grid."""

    layers: list[np.ndarray]  # (z, y, x) integer arrays
    segments: dict[int, SegmentInfo]  # medseg value -> what is known about the structure
    where: dict[int, tuple[int, int]]  # medseg value -> (layer, voxel value in that layer)
    path: str | None = None
    kind: str = "labelmap"
    notes: list[str] = field(default_factory=list)

    @property
    def values(self) -> list[int]:
        return sorted(self.segments)

    def mask(self, value: int) -> np.ndarray:
        layer, v = self.where[value]
        return self.layers[layer] == v

    def describe(self) -> dict:
        return {"path": self.path, "kind": self.kind, "notes": self.notes,
                "segments": [{"value": v, "name": s.name} for v, s in sorted(self.segments.items())]}


def read_support_label(path: str | os.PathLike | Volume, image: Volume, *, resample: bool = False,
                       name: str = "support label") -> SupportLabel:
    """Read any supported label form and put it on ``image``'s grid."""
    if isinstance(path, Volume):
        return from_labelmap(path, image, resample, name)
    p = Path(path)
    if not p.exists():
        raise InputError(f"{name} {p}: no such file or folder")
    if p.is_file() and p.name.lower().endswith(".nrrd") and _is_slicer_seg(p):
        return read_slicer_seg(p, image, resample, name)
    from . import dicom

    kind = dicom.dicom_kind(p)
    if kind in ("SEG", "RTSTRUCT"):
        return dicom.read_label(p, kind, image, name)
    return from_labelmap(read_image(p, name=name), image, resample, name)


def from_labelmap(label: Volume, image: Volume, resample: bool, name: str) -> SupportLabel:
    """An integer label volume (values become structures) on the image grid."""
    label, note = on_image_grid(label, image, resample, name)
    arr = _integer_array(label, name)
    values = [v for v in label_values(arr) if v != 0]
    if not values:
        raise InputError(f"{name} {label.path}: is empty (all zero); label the structure first")
    return SupportLabel([arr], {v: SegmentInfo(v) for v in values}, {v: (0, v) for v in values},
                        label.path, "labelmap", [note] if note else [])


def _integer_array(label: Volume, name: str) -> np.ndarray:
    arr = label.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError(
                f"{name} {label.path}: holds non-integer values; a label map must hold integers "
                "(0 background, 1, 2, ... structures). Is this an image rather than a label?")
    elif not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        raise InputError(f"{name} {label.path}: unsupported voxel type {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise InputError(f"{name} {label.path}: holds negative values; labels must be >= 0")
    if np.issubdtype(arr.dtype, np.integer):
        return arr  # kept as stored (no copy): only ever compared with its values
    return arr.astype(np.uint8 if arr.dtype == bool else np.int64)


def label_values(arr: np.ndarray) -> list[int]:
    """The values present in a non-negative integer array, ascending (a count per value
    when the values are small, which is much faster than sorting every voxel)."""
    if not arr.size:
        return []
    if int(arr.max()) < 1 << 20 and arr.dtype != np.uint64:  # bincount takes up to int64
        return [int(v) for v in np.flatnonzero(np.bincount(arr.ravel()))]
    return [int(v) for v in np.unique(arr)]


def on_image_grid(label: Volume, image: Volume, resample: bool, name: str
                  ) -> tuple[Volume, str | None]:
    """``label`` on ``image``'s grid: as is, embedded (exact sub-grid), or resampled."""
    diffs = same_geometry(image, label)
    if not diffs:
        return label, None
    offset = subgrid_offset(label, image)
    if offset is not None:
        return embed(label, image, offset), f"cropped grid embedded at voxel offset {offset}"
    if not resample:
        raise InputError(
            f"{name} {label.path} does not match its image {image.path}: " + "; ".join(diffs)
            + " (image first). Fix the files or pass resample_label to resample the label onto "
            "the image grid (nearest neighbour)", option="resample_label")
    import SimpleITK as sitk

    arr = _integer_array(label, name)
    src = label.with_array(arr.astype(np.uint32 if arr.max() < 2**32 else np.int64))
    res = sitk.Resample(src.to_sitk(), image.to_sitk(), sitk.Transform(),
                        sitk.sitkNearestNeighbor, 0)
    return Volume.from_sitk(res, path=label.path), "resampled onto the image grid (nearest)"


def subgrid_offset(label: Volume, image: Volume) -> tuple[int, int, int] | None:
    """(x, y, z) voxel offset if ``label``'s voxels coincide with ``image``'s voxels."""
    if not (np.allclose(label.spacing, image.spacing, rtol=1e-5, atol=1e-6)
            and np.allclose(label.direction, image.direction, atol=1e-5)):
        return None
    d = np.asarray(label.origin) - np.asarray(image.origin)
    idx = (image.direction.T @ d) / np.asarray(image.spacing)
    if not np.allclose(idx, np.round(idx), atol=SUBGRID_TOL):
        return None
    return tuple(int(v) for v in np.round(idx))  # type: ignore[return-value]


def embed(label: Volume, image: Volume, offset: tuple[int, int, int]) -> Volume:
    """Paste a sub-grid label into a zero volume on the image grid (parts outside dropped)."""
    out = np.zeros(image.shape, label.array.dtype)
    src, dst = [], []
    for ax in range(3):  # array axes (z, y, x) <-> offset (x, y, z)
        o, n, size = offset[2 - ax], label.shape[ax], image.shape[ax]
        a, b = max(0, o), min(size, o + n)
        if a >= b:
            return image.with_array(out)
        dst.append(slice(a, b))
        src.append(slice(a - o, b - o))
    out[tuple(dst)] = label.array[tuple(src)]
    return Volume(out, image.spacing, image.origin, image.direction.copy(), path=label.path)


# --- 3D Slicer segmentations ---------------------------------------------------------------


def _is_slicer_seg(p: Path) -> bool:
    import nrrd

    try:
        header = nrrd.read_header(str(p))
    except Exception:
        return False
    return "Segment0_ID" in header or "Segmentation_MasterRepresentation" in header


def read_slicer_seg(p: Path, image: Volume, resample: bool, name: str) -> SupportLabel:
    """A ``.seg.nrrd`` in any form Slicer writes (3D shared layer or 4D layers, cropped)."""
    import nrrd

    try:
        data, header = nrrd.read(str(p), index_order="C")
    except Exception as exc:
        raise InputError(f"{name} {p}: cannot read the Slicer segmentation ({exc})") from exc
    header.update(utf8_custom_fields(p))  # pynrrd drops non-ASCII bytes of segment names
    data = _layers_first(data, header, p)
    geo = _nrrd_geometry(header, p)
    segments, where = {}, {}
    metas = _segment_headers(header)
    collide = len({(m["layer"], m["value"]) for m in metas}) < len(metas) or \
        len({m["value"] for m in metas}) < len(metas)
    for i, m in enumerate(metas):
        value = i + 1 if collide else m["value"]
        segments[value] = SegmentInfo(value, m["name"], m["color"], m["terminology"], m["id"])
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


def _segment_headers(header: dict) -> list[dict]:
    out, i = [], 0
    while f"Segment{i}_ID" in header:
        def g(key: str, default=None, i=i):
            return header.get(f"Segment{i}_{key}", default)

        color = g("Color")
        tags = dict(t.split(":", 1) for t in str(g("Tags", "")).split("|") if ":" in t)
        out.append({
            "id": g("ID"), "name": g("Name") or g("ID"),
            "value": int(g("LabelValue", i + 1)), "layer": int(g("Layer", 0)),
            "color": tuple(int(round(float(c) * 255)) for c in str(color).split()[:3]) if color
            else None,
            "terminology": tags.get("TerminologyEntry"),
        })
        i += 1
    return out


def find_label_beside(support: str | os.PathLike) -> tuple[Path | None, list[Path]]:
    """The support label found by convention next to the support scan, and what was tried.

    For ``s.nii.gz``: ``s_label``, ``s_labels``, ``s_seg``, ``s-label``, ``s-seg``,
    ``s_mask``, ``s.label``, ``s.seg`` with any image suffix, ``s.seg.nrrd``,
    ``Segmentation.seg.nrrd`` in the same folder, and ``labelsTr/s`` beside ``imagesTr/``
    (nnU-Net/MSD layout, the ``_0000`` channel suffix removed).
    """
    p = Path(support)
    folder = p.parent
    stem = _image_stem(p.name)
    suffixes = [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"]
    tried: list[Path] = [folder / f"{stem}.seg.nrrd"]
    for tag in ("_label", "_labels", "_seg", "-label", "-seg", "_mask", ".label", ".seg"):
        tried += [folder / f"{stem}{tag}{s}" for s in suffixes if not (tag == ".seg" and
                                                                       s == ".nrrd")]
    tried.append(folder / "Segmentation.seg.nrrd")
    if folder.name.startswith("images"):
        base = stem[:-5] if stem.endswith("_0000") else stem
        tried += [folder.parent / ("labels" + folder.name[6:]) / f"{base}{s}" for s in suffixes]
    found = [t for t in tried if t.is_file() and t.resolve() != p.resolve()]
    return (found[0] if found else None), tried


def _image_stem(name: str) -> str:
    low = name.lower()
    for suf in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name
