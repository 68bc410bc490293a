"""DICOM support labels: DICOM-SEG and RTSTRUCT on the support image's grid.

* A DICOM-SEG (one file, or a folder holding one) becomes one layer per segment; names,
  colours and coded types are kept.
* An RTSTRUCT: each ROI's closed planar contours are filled on the image slices they lie
  on (even-odd rule, pixel centres), one layer per ROI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._lazy import lazy_import
from ..errors import InputError
from ..io import Volume
from ..io.dicom import read_dataset
from . import terminology
from .plan import SegmentInfo, label_name
from .support import SupportLabel, on_image_grid

mpl_path = lazy_import("matplotlib.path")
hd_color = lazy_import("highdicom.color")
hd_seg = lazy_import("highdicom.seg")


def _single_file(path: Path) -> Path:
    return path if path.is_file() else next(f for f in sorted(path.iterdir()) if f.is_file())


def read_label(path: Path, kind: str, image: Volume, name: str) -> SupportLabel:
    """A DICOM-SEG or RTSTRUCT as a support label on ``image``'s grid."""
    f = _single_file(path)
    return _read_seg(f, image, name) if kind == "SEG" else _read_rtstruct(f, image, name)


def _read_seg(path: Path, image: Volume, name: str) -> SupportLabel:
    """A DICOM-SEG of any type (BINARY, FRACTIONAL, LABELMAP) read through highdicom, each
    segment on the image grid (an exact sub-grid is embedded; another grid is refused)."""
    try:
        seg = hd_seg.segread(str(path))
    except Exception as exc:
        raise InputError(f"{name} {path}: cannot read as a DICOM-SEG ({_first_line(exc)})") from exc
    _same_frame(seg, image, path, name)
    numbers = list(seg.segment_numbers)
    try:
        vol = seg.get_volume(segment_numbers=numbers, combine_segments=False,
                             rescale_fractional=True, allow_missing_positions=True)
    except Exception as exc:
        raise InputError(f"{name} {path}: its frames do not form one volume "
                         f"({_first_line(exc)})") from exc
    layers, segments, where = [], {}, {}
    for k, n in enumerate(numbers):
        arr = vol.array[..., k] if vol.array.ndim == 4 else vol.array
        grid = _volume(np.asarray(arr) > 0.5, np.asarray(vol.affine, float), path)
        placed, _ = on_image_grid(grid, image, False, name)
        layers.append(placed.array.astype(np.uint8))
        desc = seg.get_segment_description(n)
        label = label_name(getattr(desc, "SegmentLabel", f"segment {n}"),
                           f"{path}: segment {n} SegmentLabel")
        term = terminology.from_dicom(desc)
        segments[n] = SegmentInfo(n, label, _seg_colour(desc),
                                  term.slicer() if term else None, f"Segment_{n}")
        where[n] = (len(layers) - 1, 1)
    return _nonempty(SupportLabel(layers, segments, where, str(path), "dicom-seg", []), path, name)


def _volume(mask: np.ndarray, affine: np.ndarray, path: Path) -> Volume:
    """A highdicom volume (slice, row, column axes; LPS affine) as a medseg Volume: its
    array is already (z, y, x) with x the column."""
    cols = affine[:3, :3]  # columns: world step of slice, row, column index
    spacing = np.linalg.norm(cols, axis=0)
    direction = np.stack([cols[:, 2] / spacing[2], cols[:, 1] / spacing[1],
                          cols[:, 0] / spacing[0]], axis=1)
    return Volume(mask.astype(np.uint8), (spacing[2], spacing[1], spacing[0]),
                  tuple(affine[:3, 3]), direction, path=str(path))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _same_frame(ds, image: Volume, path: Path, name: str) -> None:
    """A DICOM label of another frame of reference than its (DICOM) image is refused."""
    mine = image.meta.get("dicom_frame_of_reference")
    theirs = str(getattr(ds, "FrameOfReferenceUID", "") or "")
    if not theirs:  # RTSTRUCT: in its referenced frame of reference
        refs = getattr(ds, "ReferencedFrameOfReferenceSequence", None) or []
        theirs = str(getattr(refs[0], "FrameOfReferenceUID", "") or "") if refs else ""
    if mine and theirs and mine != theirs:
        raise InputError(f"{name} {path}: belongs to another frame of reference ({theirs}) "
                         f"than the support image ({mine}); give the label of this scan")


def _seg_colour(desc) -> tuple[int, int, int] | None:
    lab = getattr(desc, "RecommendedDisplayCIELabValue", None)
    if lab is None:
        return None
    try:
        rgb = hd_color.CIELabColor.from_dicom_value([int(v) for v in lab]).to_rgb()
        return tuple(int(c) for c in rgb)  # type: ignore[return-value]
    except Exception:  # an unusual value: fall back to a generated colour
        return None


def _read_rtstruct(path: Path, image: Volume, name: str) -> SupportLabel:
    """Fill each ROI's closed planar contours on the slices they lie on; names, colours and
    interpreted types kept; malformed contours and duplicate ROI numbers refused."""
    ds = read_dataset(path, stop=False)
    _same_frame(ds, image, path, name)
    numbers = [int(r.ROINumber) for r in getattr(ds, "StructureSetROISequence", [])]
    dup = sorted({n for n in numbers if numbers.count(n) > 1})
    if dup:
        raise InputError(f"{name} {path}: ROINumber {dup[0]} is used by two ROIs in "
                         "StructureSetROISequence; each ROI needs its own number")
    names = {int(r.ROINumber): label_name(r.ROIName, f"{path}: ROINumber {r.ROINumber} ROIName")
             for r in getattr(ds, "StructureSetROISequence", [])}
    kinds = {int(o.ReferencedROINumber): str(getattr(o, "RTROIInterpretedType", "") or "")
             for o in getattr(ds, "RTROIObservationsSequence", [])}
    layers, segments, where = [], {}, {}
    for roi in getattr(ds, "ROIContourSequence", []):
        n = int(roi.ReferencedROINumber)
        mask = np.zeros(image.shape, bool)
        for i, c in enumerate(getattr(roi, "ContourSequence", [])):
            if str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue
            data = np.asarray(getattr(c, "ContourData", []), float)
            if data.size < 9 or data.size % 3 or not np.isfinite(data).all():
                raise InputError(f"{name} {path}: ROI {n} contour {i} ContourData holds "
                                 f"{data.size} numbers; a closed contour needs 3 or more "
                                 "(x, y, z) points")
            _fill_contour(mask, image, data.reshape(-1, 3), path, name)
        colour = getattr(roi, "ROIDisplayColor", None)
        layers.append(mask.astype(np.uint8))
        label = names.get(n, f"ROI {n}")
        segments[n] = SegmentInfo(n, label, _rt_colour(colour),
                                  terminology.from_rt_type(kinds.get(n), label).slicer(),
                                  f"ROI_{n}")
        where[n] = (len(layers) - 1, 1)
    return _nonempty(SupportLabel(layers, segments, where, str(path), "rtstruct", []), path, name)


def _rt_colour(colour) -> tuple[int, int, int] | None:
    try:
        rgb = tuple(int(v) for v in colour) if colour else None
    except (TypeError, ValueError):
        return None
    return rgb if rgb and len(rgb) == 3 and all(0 <= c <= 255 for c in rgb) else None


def _fill_contour(mask: np.ndarray, image: Volume, pts: np.ndarray, path: Path, name: str) -> None:
    m = image.direction * np.asarray(image.spacing)
    idx = np.linalg.solve(m, (pts - np.asarray(image.origin)).T).T  # (x, y, z) continuous
    k = np.round(idx[:, 2])
    if np.ptp(idx[:, 2]) > 0.1 or not (0 <= k[0] < image.shape[0]):
        return  # not on one image slice, or outside the image
    ny, nx = image.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    inside = mpl_path.Path(idx[:, :2]).contains_points(np.c_[xx.ravel(), yy.ravel()])
    mask[int(k[0])] ^= inside.reshape(ny, nx)  # even-odd: inner contours cut holes


def _nonempty(label: SupportLabel, path: Path, name: str) -> SupportLabel:
    for v in [v for v in label.segments if not label.mask(v).any()]:
        label.segments.pop(v)
    if not label.segments:
        raise InputError(f"{name} {path}: no segment covers any voxel of the support image")
    return label
