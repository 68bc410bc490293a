"""DICOM image series: choosing a series, checking its slices, reading it (SimpleITK/GDCM),
and telling DICOM files apart (image series, SEG, RTSTRUCT)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import lazy_import
from ..errors import InputError

pydicom = lazy_import("pydicom")
sitk = lazy_import("SimpleITK")


def _series_flag(name: str) -> str:
    return "--support-series (Python: support_series=UID)" if name.startswith("support") \
        else "--series (Python: query_series=UID)"


def read_series(path: Path, series: str | None, name: str = "image"
                       ) -> tuple[Any, dict[str, Any]]:

    reader = sitk.ImageSeriesReader()
    ids = list(reader.GetGDCMSeriesIDs(str(path)))
    if not ids:
        raise InputError(f"{name} {path}: folder holds no DICOM image series (and is not an "
                         "image file)")
    files_per = {sid: list(reader.GetGDCMSeriesFileNames(str(path), sid)) for sid in ids}
    if series is not None:
        if series not in files_per:
            raise InputError(
                f"{name} {path}: no DICOM series {series!r}; present: "
                + ", ".join(f"{s} ({len(f)} files)" for s, f in files_per.items()))
        chosen = series
    else:
        # deterministic: most files first, then the series UID in sort order
        chosen = sorted(files_per, key=lambda s: (-len(files_per[s]), s))[0]
        if len(files_per) > 1:
            others = ", ".join(f"{s} ({len(files_per[s])} files)" for s in files_per if s != chosen)
            warnings.warn(
                f"{name} {path}: {len(files_per)} DICOM series found; using {chosen} "
                f"({len(files_per[chosen])} files, the largest). Others: {others}. "
                f"Pick one with {_series_flag(name)}.", stacklevel=3)
    files = files_per[chosen]
    _check_slice_positions(files, path, name)
    reader.SetFileNames(files)
    img = reader.Execute()
    meta = {"dicom_series": chosen, "dicom_files": len(files), "dicom_file_list": files}
    return img, {**meta, **_dicom_ids(files[0])}


def _dicom_ids(path: str) -> dict[str, str]:
    """StudyInstanceUID and FrameOfReferenceUID of a series (from its first file)."""

    ds = pydicom.dcmread(path, stop_before_pixels=True,
                         specific_tags=["StudyInstanceUID", "FrameOfReferenceUID"])
    return {k: str(getattr(ds, tag)) for k, tag in (("dicom_study", "StudyInstanceUID"),
                                                      ("dicom_frame_of_reference",
                                                       "FrameOfReferenceUID")) if tag in ds}


TILT_DEG = 0.5  # slices sheared by more than this (gantry tilt) have no single grid


def _check_slice_positions(files: list[str], path: Path, name: str) -> None:
    """Refuse a series that has no single grid: pixel spacing of 0, slices of different
    orientations, a gantry tilt, missing or unevenly spaced slices."""
    heads = [pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[
        "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"]) for f in files]
    spacing = getattr(heads[0], "PixelSpacing", None)
    if spacing is not None and (len(spacing) != 2 or min(float(v) for v in spacing) <= 0):
        raise InputError(f"{name} {path}: PixelSpacing {list(spacing)} is not a pixel size; "
                         "fix the header")
    if len(files) < 2 or any("ImagePositionPatient" not in d or "ImageOrientationPatient"
                             not in d for d in heads):
        return  # not a cross-sectional series with positions: nothing more to check
    iops = np.array([[float(v) for v in d.ImageOrientationPatient] for d in heads])
    if np.abs(iops - iops[0]).max() > 1e-3:
        k = int(np.argmax(np.abs(iops - iops[0]).max(axis=1)))
        raise InputError(f"{name} {path}: slice {k + 1} of {len(files)} is oriented differently "
                         "(ImageOrientationPatient); the series mixes acquisitions. Re-export "
                         "one acquisition")
    normal = np.cross(iops[0, :3], iops[0, 3:])
    ipps = np.array([[float(v) for v in d.ImagePositionPatient] for d in heads])
    order = np.argsort(ipps @ normal)
    steps = np.diff(ipps[order], axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    if lengths.size and lengths.max() > 0:
        cos = np.abs(steps @ normal) / np.maximum(lengths, 1e-9)
        tilt = float(np.degrees(np.arccos(np.clip(cos.min(), -1, 1))))
        if tilt > TILT_DEG:
            raise InputError(f"{name} {path}: the slices are sheared by {tilt:.1f} degrees "
                             "(gantry tilt); medseg needs an orthogonal grid: resample the "
                             "series first (e.g. dcm2niix corrects gantry tilt)")
    if len(files) >= 3:
        _even(ipps @ normal, files, path, name)


def _even(pos: np.ndarray, files: list[str], path: Path, name: str) -> None:
    gaps = np.diff(np.sort(pos))
    step = float(np.median(gaps))
    bad = np.nonzero(np.abs(gaps - step) > max(0.01 * abs(step), 1e-3))[0]
    if step <= 0 or bad.size:
        i = int(bad[0]) if bad.size else 0
        p = np.sort(pos)
        raise InputError(
            f"{name} {path}: slice positions are not evenly spaced ({len(files)} slices, "
            f"{step:.4g} mm apart, but {gaps[i]:.4g} mm between {p[i]:.4g} and {p[i + 1]:.4g} "
            "mm): slices are missing or the series mixes acquisitions. Re-export the complete "
            "series")


def read_series_of_file(p: Path, series: str | None, name: str) -> tuple[Any, dict] | None:
    """One file of a DICOM image series given: read the whole series it belongs to."""
    found = series_files_of(p)
    if found is None:
        return None
    folder, uid = found
    img, meta = read_series(folder, series or uid, name)
    if meta["dicom_files"] > 1:
        warnings.warn(f"{name} {p}: one file of a {meta['dicom_files']}-slice DICOM series; "
                      f"reading the whole series {uid} from {folder}", stacklevel=3)
    return img, meta


def has_preamble(path: Path) -> bool:
    """The file starts like a DICOM file (``DICM`` after the 128-byte preamble): checked
    before the DICOM library is imported or asked to parse it."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def read_dataset(path: Path, stop: bool = True):
    """The DICOM dataset of a file (None when it is not one)."""
    if not has_preamble(path):
        return None
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=stop)
    except Exception:
        return None


def dicom_kind(path: Path) -> str | None:
    """``"SEG"``, ``"RTSTRUCT"`` (a file, or a folder holding exactly one), else None."""
    files = [path] if path.is_file() else [f for f in sorted(path.iterdir()) if f.is_file()][:50] \
        if path.is_dir() else []
    kinds = {}
    for f in files:
        ds = read_dataset(f)
        if ds is not None and getattr(ds, "Modality", None) in ("SEG", "RTSTRUCT"):
            kinds[f] = ds.Modality
    if len(kinds) == 1 and (path.is_file() or len(files) == len(kinds)):
        return next(iter(kinds.values()))
    return None


def is_dicom(path: str | os.PathLike) -> bool:
    """A DICOM file (``DICM`` preamble), or a folder holding one."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file())[:5] \
        if p.is_dir() else []
    return any(has_preamble(f) for f in files)


def series_files_of(path: str | os.PathLike) -> tuple[Path, str] | None:
    """For one file of a DICOM image series: (its folder, its SeriesInstanceUID)."""
    p = Path(path)
    ds = read_dataset(p) if p.is_file() else None
    uid = getattr(ds, "SeriesInstanceUID", None) if ds is not None else None
    if uid is None or getattr(ds, "Modality", None) in ("SEG", "RTSTRUCT"):
        return None
    return p.parent, str(uid)
