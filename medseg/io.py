"""Reading and writing 3D volumes with exact geometry (SimpleITK is the single authority).

A :class:`Volume` holds the voxel array in ``(z, y, x)`` order (SimpleITK's array order)
and the geometry in ITK's ``(x, y, z)`` convention: ``spacing``, ``origin`` and a 3x3
``direction`` whose columns are the world (LPS) directions of the index axes.

For slicing, :func:`to_canonical` permutes/flips the array (never resamples) so that the
index axes point along L, P, S; :func:`from_canonical` undoes it exactly, so masks built
in canonical space overlay the original image voxel for voxel.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr", ".seg.nrrd")
IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".nhdr", ".mha", ".mhd")
ORTHONORMAL_TOL = 1e-4


@dataclass(eq=False)
class Volume:
    """A 3D image: ``array`` is (z, y, x); geometry follows ITK (x, y, z) conventions.

    Two volumes are equal when their voxels are and their geometry agrees to 1e-4
    (what NIfTI keeps of it); paths and metadata aside.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if self.array.ndim != 3:
            raise InputError(f"a Volume needs a 3D array, got shape {self.array.shape}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Volume):
            return NotImplemented
        return not same_geometry(self, other) and np.array_equal(self.array, other.array)

    __hash__ = None  # type: ignore[assignment]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in array-axis order, as metrics need it."""
        return self.spacing[::-1]  # type: ignore[return-value]

    def with_array(self, array: np.ndarray, **meta: Any) -> Volume:
        """Same geometry, new voxels (shape must match)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from {self.array.shape}")
        return replace(self, array=array, meta={**self.meta, **meta})

    def geometry(self) -> dict[str, Any]:
        """Geometry as plain lists (for reports and error messages)."""
        return {
            "size_xyz": list(self.array.shape[::-1]),
            "spacing": [round(s, 6) for s in self.spacing],
            "origin": [round(o, 4) for o in self.origin],
            "direction": np.round(self.direction, 6).ravel().tolist(),
        }

    def to_sitk(self):
        """A SimpleITK image with this geometry."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, img, path: str | None = None, **meta: Any) -> Volume:
        """Wrap a 3D SimpleITK image."""
        import SimpleITK as sitk

        return cls(
            array=sitk.GetArrayFromImage(img),
            spacing=img.GetSpacing(),
            origin=img.GetOrigin(),
            direction=np.array(img.GetDirection()).reshape(3, 3),
            path=path,
            meta=meta,
        )

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous (x, y, z) index -> world (LPS mm)."""
        ijk = np.asarray(ijk, dtype=float)
        return np.asarray(self.origin) + (self.direction @ (ijk * np.asarray(self.spacing)).T).T


def same_geometry(a: Volume, b: Volume, tol: float = 1e-4) -> list[str]:
    """Differences in size/spacing/origin/direction between two volumes (empty if none)."""
    diffs = []
    if a.shape != b.shape:
        diffs.append(f"size {list(a.shape[::-1])} vs {list(b.shape[::-1])}")
    if not np.allclose(a.spacing, b.spacing, rtol=tol, atol=tol):
        diffs.append(f"spacing {np.round(a.spacing, 5).tolist()} vs {np.round(b.spacing, 5).tolist()}")
    if not np.allclose(a.origin, b.origin, atol=max(tol, 1e-3 * min(a.spacing))):
        diffs.append(f"origin {np.round(a.origin, 3).tolist()} vs {np.round(b.origin, 3).tolist()}")
    if not np.allclose(a.direction, b.direction, atol=tol):
        diffs.append(
            f"direction {np.round(a.direction, 4).ravel().tolist()} vs "
            f"{np.round(b.direction, 4).ravel().tolist()}"
        )
    return diffs


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".seg.nrrd", ".nii.gz"):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _check_direction(direction: np.ndarray, path: str) -> None:
    if not np.allclose(direction.T @ direction, np.eye(3), atol=ORTHONORMAL_TOL):
        raise InputError(
            f"{path}: direction cosines are not orthonormal "
            f"({np.round(direction, 4).ravel().tolist()}); fix the header (e.g. re-save it "
            "from 3D Slicer) before segmenting"
        )


def _nifti_transform_check(path: Path, img) -> str | None:
    """Warn when a NIfTI's qform and sform disagree, naming the one SimpleITK used."""
    try:
        import nibabel as nib
    except ImportError:  # pragma: no cover - nibabel is a dependency
        return None
    try:
        hdr = nib.load(str(path)).header
        qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
        if qcode <= 0 or scode <= 0:
            return None
        q, s = hdr.get_qform(), hdr.get_sform()
    except Exception:  # header oddities are reported by SimpleITK's own read
        return None
    if np.allclose(q, s, atol=1e-3):
        return None
    # ITK works in LPS; nibabel affines are RAS. Compare the origin SimpleITK chose.
    origin_ras = np.array(img.GetOrigin()) * np.array([-1, -1, 1])
    used = "sform" if np.allclose(s[:3, 3], origin_ras, atol=1e-2) else "qform"
    msg = (
        f"{path}: NIfTI qform and sform disagree; using the {used} (as SimpleITK/ITK does). "
        "Check the image in a viewer if the position looks wrong."
    )
    warnings.warn(msg, stacklevel=3)
    return used


def _series_flag(name: str) -> str:
    return "--support-series (Python: support_series=UID)" if name.startswith("support") \
        else "--series (Python: query_series=UID)"


def _read_dicom_series(path: Path, series: str | None, name: str = "image"
                       ) -> tuple[Any, dict[str, Any]]:
    import SimpleITK as sitk

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
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True,
                         specific_tags=["StudyInstanceUID", "FrameOfReferenceUID"])
    return {k: str(getattr(ds, tag)) for k, tag in (("dicom_study", "StudyInstanceUID"),
                                                      ("dicom_frame_of_reference",
                                                       "FrameOfReferenceUID")) if tag in ds}


def _check_slice_positions(files: list[str], path: Path, name: str) -> None:
    """Refuse a series with missing or unevenly spaced slices (it has no single grid)."""
    if len(files) < 3:
        return
    import pydicom

    pos, normal = [], None
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[
            "ImagePositionPatient", "ImageOrientationPatient"])
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            return  # not a cross-sectional series with positions: nothing to check
        if normal is None:
            o = np.asarray(ds.ImageOrientationPatient, float)
            normal = np.cross(o[:3], o[3:])
        pos.append(float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
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


def _dicom_file_series(p: Path, series: str | None, name: str) -> tuple[Any, dict] | None:
    """One file of a DICOM image series given: read the whole series it belongs to."""
    from .dicom import series_files_of

    found = series_files_of(p)
    if found is None:
        return None
    folder, uid = found
    img, meta = _read_dicom_series(folder, series or uid, name)
    if meta["dicom_files"] > 1:
        warnings.warn(f"{name} {p}: one file of a {meta['dicom_files']}-slice DICOM series; "
                      f"reading the whole series {uid} from {folder}", stacklevel=3)
    return img, meta


def read_image(path: str | os.PathLike, *, series: str | None = None, name: str = "image") -> Volume:
    """Read a NIfTI/NRRD/MHA file or a DICOM series (folder, or one of its files) into a 3D
    :class:`Volume`. Raises :class:`InputError` with a one-line message for every user-side
    problem."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise InputError(f"{name} {p}: a broken or looping symbolic link")
    if not p.exists():
        raise InputError(f"{name} {p}: no such file or folder")
    nonfinite = None
    dicom_file = None if p.is_dir() or _suffix(p) in IMAGE_SUFFIXES else \
        _dicom_file_series(p, series, name)
    if p.is_dir():
        img, meta = _read_dicom_series(p, series, name)
    elif dicom_file is not None:
        img, meta = dicom_file
    else:
        img, meta, nonfinite = _read_file(p, name)
    img = _as_3d(img, p, name, meta)
    _check_direction(np.array(img.GetDirection()).reshape(3, 3), str(p))
    vol = Volume.from_sitk(img, path=str(p), **meta)
    if nonfinite is not None:
        arr = vol.array.astype(np.float32, copy=True)
        arr[nonfinite.reshape(arr.shape)] = np.nan  # ITK's NIfTI reader turns NaN into 0
        vol = vol.with_array(arr)
    return vol


def _read_file(p: Path, name: str) -> tuple[Any, dict[str, Any], np.ndarray | None]:
    """(image, metadata, where a NIfTI holds NaN/inf) of one image file."""
    import SimpleITK as sitk

    if not os.access(p, os.R_OK):
        raise InputError(f"{name} {p}: not readable (check permissions)")
    if p.stat().st_size == 0:
        raise InputError(f"{name} {p}: file is empty")
    nifti = _suffix(p) in NIFTI_SUFFIXES
    if nifti:
        _check_nifti_complete(p, name)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise InputError(_explain_read_error(p, str(exc), name)) from exc
    meta: dict[str, Any] = {}
    if not nifti:
        return img, meta, None
    used = _nifti_transform_check(p, img)
    if used:
        meta["nifti_transform_used"] = used
    return img, meta, _nifti_nonfinite(p, img)


def _as_3d(img, p: Path, name: str, meta: dict[str, Any]):
    """A scalar 3D image (a 4D image with one volume is squeezed), or a clear error."""
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} {p}: has {img.GetNumberOfComponentsPerPixel()} components "
                         "per voxel (RGB or vector image); medseg needs a scalar (grey-value) "
                         "volume")
    dim = img.GetDimension()
    if dim == 2:
        raise InputError(f"{name} {p}: is a 2D image of size {list(img.GetSize())}; medseg "
                         "needs a 3D volume (a single-slice 3D volume is fine)")
    if dim == 4:
        size = list(img.GetSize())
        if size[3] != 1:
            raise InputError(f"{name} {p}: is 4D ({size[3]} volumes of {size[:3]}); extract the "
                             "one you want first, e.g. with `fslroi` or SimpleITK's Extract")
        meta["squeezed_4d"] = True
        return sitk.Extract(img, size[:3] + [0], [0, 0, 0, 0])
    if dim != 3:
        raise InputError(f"{name} {p}: has {dim} dimensions; medseg reads 3D volumes")
    return img


def _nifti_nonfinite(p: Path, img) -> np.ndarray | None:
    """Where a floating-point NIfTI holds NaN/inf (ITK reads them as 0), in (z, y, x)."""
    import SimpleITK as sitk

    if img.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return None
    try:
        import nibabel as nib

        data = np.asanyarray(nib.load(str(p)).dataobj)
    except Exception:
        return None
    bad = ~np.isfinite(data)
    if not bad.any():
        return None
    return np.ascontiguousarray(bad.reshape(bad.shape[:3]).transpose(2, 1, 0))


def _check_nifti_complete(p: Path, name: str) -> None:
    """Catch truncated NIfTI files, which ITK may read without complaint (zero-filled).

    The expected size comes from the header; for gzip files the stream's trailer stores the
    uncompressed size (mod 2**32), so no decompression is needed.
    """
    import gzip
    import io
    import struct

    with open(p, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"  # by content: names can lie either way
    try:
        import nibabel as nib

        opener = gzip.open if gzipped else open
        with opener(p, "rb") as fh:
            raw = fh.read(540)
        sizeof_hdr = struct.unpack("<i", raw[:4])[0]
        if sizeof_hdr not in (348, 540):
            sizeof_hdr = struct.unpack(">i", raw[:4])[0]
        cls = nib.Nifti2Header if sizeof_hdr == 540 else nib.Nifti1Header
        hdr = cls.from_fileobj(io.BytesIO(raw))
        expected = int(hdr["vox_offset"]) + int(np.prod(hdr.get_data_shape())) * int(
            hdr.get_data_dtype().itemsize)
    except Exception:
        return  # not parseable here: let SimpleITK report it
    if gzipped:
        with open(p, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", fh.read(4))
        ok = isize == expected % (1 << 32)
    else:
        ok = p.stat().st_size >= expected
    if not ok:
        raise InputError(
            f"{name} {p}: cannot read: file is truncated or corrupt (re-copy or re-export it)"
        )


def _explain_read_error(p: Path, msg: str, name: str) -> str:
    low = msg.lower()
    suffix = _suffix(p)
    first = next((ln.strip() for ln in msg.splitlines() if "description" in ln.lower()), "")
    first = first.split(":", 1)[-1].strip() if first else ""
    if "orthonormal" in low or "orthogonal" in low:
        return (
            f"{name} {p}: direction cosines are not orthonormal; fix the header "
            "(e.g. re-save it from 3D Slicer) before segmenting"
        )
    if suffix not in IMAGE_SUFFIXES and suffix not in (".dcm", ""):
        return (
            f"{name} {p}: not a supported medical image ({suffix or 'no suffix'}); "
            "give a NIfTI (.nii/.nii.gz), NRRD (.nrrd) or a DICOM series folder"
        )
    if suffix == ".nii.gz" or "gz" in low or "zlib" in low or "inflate" in low:
        return f"{name} {p}: cannot read: file is truncated or corrupt (re-copy or re-export it)"
    return f"{name} {p}: cannot read as a medical image" + (f" ({first})" if first else "")


def check_not_label(vol: Volume, name: str) -> Volume:
    """Refuse a label map given where an image is expected (a few integer values only)."""
    arr = vol.array
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        return vol
    sample = arr.ravel()[:: max(1, arr.size // 1_000_000)]
    values = np.unique(sample)
    if values.size <= 16 and values.min() >= 0 and 0 in values:
        raise InputError(
            f"{name} {vol.path}: looks like a label map (only the values "
            f"{', '.join(map(str, values[:8]))}{' ...' if values.size > 8 else ''}), not an "
            f"image; give the scan as the {name} and the labels as the support label")
    return vol


def check_finite(vol: Volume, name: str = "image") -> Volume:
    """Replace NaN/inf voxels by the lowest finite value (with a warning); refuse constant images."""
    arr = vol.array
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        n_bad = int(bad.sum())
        if n_bad == arr.size:
            raise InputError(f"{name} {vol.path}: every voxel is NaN or inf")
        if n_bad:
            fill = float(np.min(arr[~bad]))
            warnings.warn(
                f"{name} {vol.path}: {n_bad} NaN/inf voxels replaced by the lowest finite value "
                f"({fill:g})",
                stacklevel=2,
            )
            arr = np.where(bad, fill, arr)
            vol = vol.with_array(arr, nonfinite_replaced=n_bad)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if lo == hi:
        raise InputError(
            f"{name} {vol.path}: image is constant (every voxel = {lo:g}); nothing to segment"
        )
    return vol


# --- canonical orientation -------------------------------------------------------------


@dataclass(frozen=True)
class Orientation:
    """How to permute/flip a (z, y, x) array so its index axes run along L, P, S.

    ``perm[k]`` is the source array axis that becomes canonical array axis ``k``;
    ``flip[k]`` says whether canonical axis ``k`` is reversed after the permutation.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    def apply(self, arr: np.ndarray) -> np.ndarray:
        out = np.transpose(arr, self.perm)
        for k, f in enumerate(self.flip):
            if f:
                out = np.flip(out, axis=k)
        return out

    def invert(self, arr: np.ndarray) -> np.ndarray:
        out = arr
        for k, f in enumerate(self.flip):
            if f:
                out = np.flip(out, axis=k)
        return np.transpose(out, np.argsort(self.perm))


def orientation_code(direction: np.ndarray) -> str:
    """Three-letter code (ITK/DICOM "to" convention, e.g. 'LPS') of the index axes x, y, z."""
    letters = (("L", "R"), ("P", "A"), ("S", "I"))
    code = ""
    for col in np.asarray(direction).T:
        w = int(np.argmax(np.abs(col)))
        code += letters[w][0 if col[w] > 0 else 1]
    return code


def canonical_orientation(direction: np.ndarray) -> Orientation:
    """The permutation/flip that maps index axes to the nearest L, P, S world axes."""
    d = np.asarray(direction, dtype=float)
    # world axis for each ITK index axis (x, y, z), resolving ties deterministically
    order = np.argsort(-np.abs(d).max(axis=0), kind="stable")
    world_of = [-1, -1, -1]
    used: set[int] = set()
    for idx_axis in order:
        for w in np.argsort(-np.abs(d[:, idx_axis]), kind="stable"):
            if int(w) not in used:
                world_of[idx_axis] = int(w)
                used.add(int(w))
                break
    # canonical ITK axis w (0=L,1=P,2=S) comes from ITK index axis a with world_of[a] == w;
    # in array order (z, y, x) ITK axis a is array axis 2 - a, canonical axis w is 2 - w.
    perm = [0, 0, 0]
    flip = [False, False, False]
    for a, w in enumerate(world_of):
        perm[2 - w] = 2 - a
        flip[2 - w] = bool(d[w, a] < 0)
    return Orientation(tuple(perm), tuple(flip))  # type: ignore[arg-type]


def to_canonical(vol: Volume) -> tuple[np.ndarray, Orientation]:
    """The array with index axes along (S, P, L) in (z, y, x) order, plus how to undo it."""
    orient = canonical_orientation(vol.direction)
    return orient.apply(vol.array), orient


def canonical_spacing_zyx(vol: Volume, orient: Orientation) -> tuple[float, float, float]:
    """Spacing of the canonical array, in its (z, y, x) axis order."""
    sp = np.asarray(vol.spacing_zyx)
    return tuple(float(s) for s in sp[list(orient.perm)])  # type: ignore[return-value]


def from_canonical(arr: np.ndarray, orient: Orientation) -> np.ndarray:
    """Undo :func:`to_canonical` exactly (same voxels, original array layout)."""
    return np.ascontiguousarray(orient.invert(arr))


def write_image(vol: Volume, path: str | os.PathLike, *, compress: bool = True) -> None:
    """Write a volume through SimpleITK (callers handle atomicity, see ``export``)."""
    import SimpleITK as sitk

    sitk.WriteImage(vol.to_sitk(), str(path), useCompression=compress)
