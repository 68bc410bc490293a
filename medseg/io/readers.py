"""Image formats behind one contract, chosen by a registry (as nnU-Net's ``imageio``).

Each format is an :class:`ImageIO`: the paths it claims (:meth:`ImageIO.claims`), how it
reads them (:meth:`ImageIO.read`) and, where medseg writes it, how it writes.
:func:`read_image` asks the registry (:data:`IMAGE_IO`) for the first format that claims a
path; every user-side problem becomes an :class:`~medseg.errors.InputError` of one line.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import lazy_import
from ..errors import InputError
from . import dicom, nifti
from .volume import Volume

sitk = lazy_import("SimpleITK")

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".nhdr", ".mha", ".mhd")
ORTHONORMAL_TOL = 1e-4


def suffix_of(path: Path) -> str:
    """The file's format suffix (``.nii.gz`` and ``.seg.nrrd`` as one)."""
    name = path.name.lower()
    for s in (".seg.nrrd", ".nii.gz"):
        if name.endswith(s):
            return s
    return path.suffix.lower()


class ImageIO(ABC):
    """One image format: the paths it claims and how it reads them."""

    name: str = ""

    @abstractmethod
    def claims(self, path: Path) -> bool:
        """Whether this format reads ``path`` (by suffix, or by looking inside)."""

    @abstractmethod
    def read(self, path: Path, series: str | None, name: str
             ) -> tuple[Any, dict[str, Any], np.ndarray | None]:
        """(SimpleITK image, metadata, where a NaN/inf was read as 0 or None)."""


class NiftiIO(ImageIO):
    """NIfTI-1/2 (``.nii``, ``.nii.gz``) through SimpleITK, with NIfTI's own checks."""

    name = "nifti"

    def claims(self, path: Path) -> bool:
        return path.is_file() and suffix_of(path) in NIFTI_SUFFIXES

    def read(self, path, series, name):
        _readable(path, name)
        nifti.check_complete(path, name)
        img = _itk_read(path, name)
        meta: dict[str, Any] = {}
        used = nifti.transform_check(path, img)
        if used:
            meta["nifti_transform_used"] = used
        return img, meta, nifti.nonfinite(path, img)


class ItkFileIO(ImageIO):
    """NRRD, MetaImage and any other single file SimpleITK can read (the last resort)."""

    name = "itk"

    def claims(self, path: Path) -> bool:
        return path.is_file()

    def read(self, path, series, name):
        _readable(path, name)
        return _itk_read(path, name), {}, None


class DicomSeriesIO(ImageIO):
    """A DICOM image series: its folder, or one of its files (the whole series is read)."""

    name = "dicom"

    def claims(self, path: Path) -> bool:
        return path.is_dir() or (path.is_file() and suffix_of(path) not in IMAGE_SUFFIXES
                                 and dicom.series_files_of(path) is not None)

    def read(self, path, series, name):
        if path.is_dir():
            img, meta = dicom.read_series(path, series, name)
        else:
            img, meta = dicom.read_series_of_file(path, series, name)
        return img, meta, None


IMAGE_IO: list[ImageIO] = [NiftiIO(), DicomSeriesIO(), ItkFileIO()]  # first claim wins


def image_io_for(path: Path) -> ImageIO | None:
    """The first registered format that claims ``path``."""
    return next((io for io in IMAGE_IO if io.claims(path)), None)


def read_image(path: str | os.PathLike, *, series: str | None = None, name: str = "image"
               ) -> Volume:
    """Read a NIfTI/NRRD/MHA file or a DICOM series (folder, or one of its files).

    Args:
        path: the image file or DICOM folder.
        series: the DICOM SeriesInstanceUID to read where a folder holds several.
        name: what the image is to the user (``"query"``, ``"support"``), for messages.

    Returns:
        The volume with its exact geometry (a 4D image with one volume is squeezed).

    Raises:
        InputError: a one-line message for every user-side problem.
    """
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise InputError(f"{name} {p}: a broken or looping symbolic link")
    if not p.exists():
        raise InputError(f"{name} {p}: no such file or folder")
    _regular(p, name)
    io = image_io_for(p)
    if io is None:
        raise InputError(_explain_read_error(p, "", name))
    img, meta, nonfinite = io.read(p, series, name)
    img = _as_3d(img, p, name, meta)
    _check_geometry(img, p, name)
    _check_direction(np.array(img.GetDirection()).reshape(3, 3), str(p))
    vol = Volume.from_sitk(img, path=str(p), **meta)
    if nonfinite is not None:
        arr = vol.array.astype(np.float32, copy=True)
        arr[nonfinite.reshape(arr.shape)] = np.nan  # ITK's NIfTI reader turns NaN into 0
        vol = vol.with_array(arr)
    return vol


def _regular(p: Path, name: str) -> None:
    """Reads that could block forever are refused: a FIFO, a device, or a header (``.nhdr``,
    ``.mhd``) whose data file is one."""
    if not (p.is_dir() or p.is_file()):
        raise InputError(f"{name} {p}: not a regular file (a pipe or a device?); give the "
                         "image file itself")
    if p.is_file() and suffix_of(p) in (".nhdr", ".mhd"):
        for data in _data_files(p):
            if data.exists() and not data.is_file():
                raise InputError(f"{name} {p}: its data file {data} is not a regular file (a "
                                 "pipe or a device?)")


def _data_files(header: Path) -> list[Path]:
    """The data files a detached NRRD or MetaImage header names."""
    out = []
    try:
        with open(header, "rb") as fh:
            text = fh.read(1 << 16).decode("latin-1")
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":" if header.suffix.lower() == ".nhdr" else "=")
        if key.strip().lower() in ("data file", "datafile", "elementdatafile"):
            value = value.strip()
            if value and not value.upper().startswith(("LIST", "LOCAL")):
                out.append(header.parent / value.split()[0])
    return out


def _readable(p: Path, name: str) -> None:
    if not os.access(p, os.R_OK):
        raise InputError(f"{name} {p}: not readable (check permissions)")
    if p.stat().st_size == 0:
        raise InputError(f"{name} {p}: file is empty")


def _itk_read(p: Path, name: str):
    try:
        return sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise InputError(_explain_read_error(p, str(exc), name)) from exc


SPACING_MM = (1e-3, 1e4)  # voxel sizes outside this are a broken header, not a scan


def _check_geometry(img, p: Path, name: str) -> None:
    """Refuse geometry no scan has: non-finite numbers, absurd voxel sizes, complex voxels."""
    if "complex" in img.GetPixelIDTypeAsString().lower():
        raise InputError(f"{name} {p}: holds complex-valued voxels; medseg needs a real-valued "
                         "(magnitude) image")
    for what, values in (("spacing", img.GetSpacing()), ("origin", img.GetOrigin()),
                         ("direction", img.GetDirection())):
        if not np.all(np.isfinite(values)):
            raise InputError(f"{name} {p}: its {what} holds NaN or infinity "
                             f"({', '.join(f'{v:g}' for v in values)}); fix the header")
    lo, hi = SPACING_MM
    bad = [s for s in img.GetSpacing() if not lo <= s <= hi]
    if bad:
        raise InputError(f"{name} {p}: voxel spacing {', '.join(f'{s:g}' for s in img.GetSpacing())}"
                         f" mm is outside {lo:g}-{hi:g} mm; the header's pixel size is broken")


def _check_direction(direction: np.ndarray, path: str) -> None:
    if not np.allclose(direction.T @ direction, np.eye(3), atol=ORTHONORMAL_TOL):
        raise InputError(
            f"{path}: direction cosines are not orthonormal "
            f"({np.round(direction, 4).ravel().tolist()}); fix the header (e.g. re-save it "
            "from 3D Slicer) before segmenting"
        )


def _as_3d(img, p: Path, name: str, meta: dict[str, Any]):
    """A scalar 3D image (a 4D image with one volume is squeezed), or a clear error."""
    if "complex" in img.GetPixelIDTypeAsString().lower():
        raise InputError(f"{name} {p}: holds complex-valued voxels; medseg needs a real-valued "
                         "(magnitude) image")
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


def _explain_read_error(p: Path, msg: str, name: str) -> str:
    low = msg.lower()
    suffix = suffix_of(p)
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


def write_image(vol: Volume, path: str | os.PathLike, *, compress: bool = True) -> None:
    """Write a volume through SimpleITK (callers handle atomicity, see ``export``)."""
    sitk.WriteImage(vol.to_sitk(), str(path), useCompression=compress)
