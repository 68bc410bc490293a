"""NIfTI forensics: what ITK reads silently and users should know about.

* a truncated file (ITK may read it zero-filled): caught from the header's expected size;
* qform and sform that disagree: a warning naming the one used;
* NaN/inf voxels in a float NIfTI (ITK reads them as 0): found and kept as NaN.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np

from .._lazy import lazy_import
from ..errors import InputError

nib = lazy_import("nibabel")
sitk = lazy_import("SimpleITK")


def transform_check(path: Path, img) -> str | None:
    """Warn when a NIfTI's qform and sform disagree, naming the one SimpleITK used."""
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


def nonfinite(p: Path, img) -> np.ndarray | None:
    """Where a floating-point NIfTI holds NaN/inf (ITK reads them as 0), in (z, y, x)."""

    if img.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return None
    try:

        data = np.asanyarray(nib.load(str(p)).dataobj)
    except Exception:
        return None
    bad = ~np.isfinite(data)
    if not bad.any():
        return None
    return np.ascontiguousarray(bad.reshape(bad.shape[:3]).transpose(2, 1, 0))


def _decompressed_size(p: Path) -> int:
    """Bytes a gzip file decompresses to (every member), 0 when it is damaged."""
    total = 0
    try:
        with gzip.open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                total += len(block)
    except (OSError, EOFError):
        return 0
    return total


def check_complete(p: Path, name: str) -> None:
    """Catch truncated NIfTI files, which ITK may read without complaint (zero-filled).

    The expected size comes from the header; for gzip files the stream's trailer stores the
    uncompressed size (mod 2**32), so usually no decompression is needed.
    """
    with open(p, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"  # by content: names can lie either way
    try:
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
        # the trailer is the last member's; a multi-member (bgzip-style) file is decompressed
        ok = isize == expected % (1 << 32) or _decompressed_size(p) >= expected
    else:
        ok = p.stat().st_size >= expected
    if not ok:
        raise InputError(
            f"{name} {p}: cannot read: file is truncated or corrupt (re-copy or re-export it)"
        )
