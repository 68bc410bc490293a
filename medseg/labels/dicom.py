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
from .plan import SegmentInfo
from .support import SupportLabel

mpl_path = lazy_import("matplotlib.path")
hd_color = lazy_import("highdicom.color")


def _single_file(path: Path) -> Path:
    return path if path.is_file() else next(f for f in sorted(path.iterdir()) if f.is_file())


def read_label(path: Path, kind: str, image: Volume, name: str) -> SupportLabel:
    """A DICOM-SEG or RTSTRUCT as a support label on ``image``'s grid."""
    f = _single_file(path)
    return _read_seg(f, image, name) if kind == "SEG" else _read_rtstruct(f, image, name)


def _read_seg(path: Path, image: Volume, name: str) -> SupportLabel:
    """Each segment's frames are placed by their position into the image grid."""
    ds = read_dataset(path, stop=False)
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise InputError(f"{name} {path}: cannot decode the DICOM-SEG pixel data ({exc})") from exc
    pixels = pixels.reshape(-1, *pixels.shape[-2:])
    layers, segments, where = [], {}, {}
    for desc in ds.SegmentSequence:
        n = int(desc.SegmentNumber)
        layers.append(np.zeros(image.shape, np.uint8))
        label = str(getattr(desc, "SegmentLabel", f"segment {n}"))
        segments[n] = SegmentInfo(n, label, _seg_colour(desc), None, f"Segment_{n}")
        where[n] = (len(layers) - 1, 1)
    index_of = {n: where[n][0] for n in where}
    shared = ds.SharedFunctionalGroupsSequence[0]
    for fi, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ident = frame if "SegmentIdentificationSequence" in frame else shared
        seg_n = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        plane = frame if "PlanePositionSequence" in frame else shared
        pos = [float(v) for v in plane.PlanePositionSequence[0].ImagePositionPatient]
        k = _slice_of(image, pos, path, name)
        if seg_n in index_of and 0 <= k < image.shape[0]:
            layers[index_of[seg_n]][k] |= (pixels[fi] > 0).astype(np.uint8)
    _check_in_plane(ds, image, path, name)
    return _nonempty(SupportLabel(layers, segments, where, str(path), "dicom-seg", []), path, name)


def _seg_colour(desc) -> tuple[int, int, int] | None:
    lab = getattr(desc, "RecommendedDisplayCIELabValue", None)
    if lab is None:
        return None
    try:
        rgb = hd_color.CIELabColor.from_dicom_value([int(v) for v in lab]).to_rgb()
        return tuple(int(c) for c in rgb)  # type: ignore[return-value]
    except Exception:  # an unusual value: fall back to a generated colour
        return None


def _slice_of(image: Volume, pos: list[float], path: Path, name: str) -> int:
    """Array z index of the image slice a frame at ``pos`` (LPS mm) lies on."""
    idx = np.linalg.solve(image.direction * np.asarray(image.spacing), np.asarray(pos) -
                          np.asarray(image.origin))
    if not np.allclose(idx[:2], np.round(idx[:2]), atol=1e-2) or \
            not np.isclose(idx[2], round(idx[2]), atol=1e-2):
        raise InputError(f"{name} {path}: its frames do not lie on the support image's slices "
                         "(a segmentation of another series?)")
    return int(round(idx[2]))


def _check_in_plane(ds, image: Volume, path: Path, name: str) -> None:
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    sp = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    ok = (np.allclose(iop[:3], image.direction[:, 0], atol=1e-3)
          and np.allclose(iop[3:], image.direction[:, 1], atol=1e-3)
          and np.allclose(sp[::-1], image.spacing[:2], rtol=1e-4)
          and (int(ds.Rows), int(ds.Columns)) == image.shape[1:])
    if not ok:
        raise InputError(f"{name} {path}: the DICOM-SEG grid is not the support image's grid "
                         "(orientation, pixel spacing or size differ)")


def _read_rtstruct(path: Path, image: Volume, name: str) -> SupportLabel:
    """Fill each ROI's closed planar contours on the slices they lie on."""
    ds = read_dataset(path, stop=False)
    names = {int(r.ROINumber): str(r.ROIName) for r in getattr(ds, "StructureSetROISequence", [])}
    layers, segments, where = [], {}, {}
    for roi in getattr(ds, "ROIContourSequence", []):
        n = int(roi.ReferencedROINumber)
        mask = np.zeros(image.shape, bool)
        for c in getattr(roi, "ContourSequence", []):
            if str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue
            pts = np.asarray(c.ContourData, float).reshape(-1, 3)
            _fill_contour(mask, image, pts, path, name)
        colour = getattr(roi, "ROIDisplayColor", None)
        layers.append(mask.astype(np.uint8))
        segments[n] = SegmentInfo(n, names.get(n, f"ROI {n}"),
                                  tuple(int(v) for v in colour) if colour else None, None,
                                  f"ROI_{n}")
        where[n] = (len(layers) - 1, 1)
    return _nonempty(SupportLabel(layers, segments, where, str(path), "rtstruct", []), path, name)


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
