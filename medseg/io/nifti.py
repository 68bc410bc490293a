"""NIfTI forensics: what ITK reads silently and users should know about.

* a truncated file (ITK may read it zero-filled): caught from the header's expected size;
* qform and sform that disagree: a warning naming the one used;
* NaN/inf voxels in a float NIfTI (ITK reads them as 0): found and kept as NaN.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from pathlib import Path
from zlib import error as zlib_error

import numpy as np

from .._lazy import lazy_import
from ..errors import InputError

nib = lazy_import("nibabel")
sitk = lazy_import("SimpleITK")


def header(p: Path) -> dict | None:
    """The fields of a NIfTI-1/2 header medseg checks, read with :mod:`struct` (no need to
    import a NIfTI library on the read path); None when it does not parse."""
    try:
        with open(p, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(p, "rb") as fh:
            raw = fh.read(540)
        for end in "<>":
            size = struct.unpack(end + "i", raw[:4])[0]
            if size in (348, 540):
                break
        else:
            return None
        if size == 348:
            dim = struct.unpack(end + "8h", raw[40:56])
            dtype, bitpix = struct.unpack(end + "2h", raw[70:74])
            pixdim = struct.unpack(end + "8f", raw[76:108])
            vox = struct.unpack(end + "f", raw[108:112])[0]
            qcode, scode = struct.unpack(end + "2h", raw[252:256])
            quat = struct.unpack(end + "6f", raw[256:280])
            srow = struct.unpack(end + "12f", raw[280:328])
        else:
            dtype, bitpix = struct.unpack(end + "2h", raw[12:16])
            dim = struct.unpack(end + "8q", raw[16:80])
            pixdim = struct.unpack(end + "8d", raw[104:168])
            vox = struct.unpack(end + "q", raw[168:176])[0]
            qcode, scode = struct.unpack(end + "2i", raw[344:352])
            quat = struct.unpack(end + "6d", raw[352:400])
            srow = struct.unpack(end + "12d", raw[400:496])
    except (OSError, EOFError, struct.error, zlib_error):
        return None
    n = max(0, min(int(dim[0]), 7))
    return {"gzipped": gz, "shape": [int(d) for d in dim[1:n + 1]], "bitpix": int(bitpix),
            "datatype": int(dtype), "vox_offset": int(vox), "pixdim": pixdim,
            "qform_code": int(qcode), "sform_code": int(scode), "quatern": quat,
            "sform": np.array(srow, float).reshape(3, 4)}


def qform(h: dict) -> np.ndarray:
    """The qform affine (3 x 4, RAS) from the quaternion, as the NIfTI standard defines it."""
    b, c, d, qx, qy, qz = h["quatern"]
    a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    r = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                  [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                  [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    qfac = -1.0 if h["pixdim"][0] < 0 else 1.0
    zooms = np.array([h["pixdim"][1], h["pixdim"][2], h["pixdim"][3] * qfac])
    return np.column_stack([r * zooms, [qx, qy, qz]])


def transform_check(path: Path, img) -> str | None:
    """Warn when a NIfTI's qform and sform disagree, naming the one SimpleITK used."""
    h = header(path)
    if h is None or h["qform_code"] <= 0 or h["sform_code"] <= 0:
        return None
    q, s = qform(h), h["sform"]
    if np.allclose(q, s, atol=1e-3):
        return None
    # ITK works in LPS; NIfTI affines are RAS. Compare the origin SimpleITK chose.
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
    h = header(p)
    if h is None or not h["shape"]:
        return  # not parseable here: let SimpleITK report it
    gzipped = h["gzipped"]
    expected = h["vox_offset"] + int(np.prod(h["shape"])) * max(h["bitpix"], 8) // 8
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
