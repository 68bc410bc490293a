"""Whether outputs written earlier are whole and belong to the run asking (``--resume``).

:func:`check_outputs_done` reads every output end to end -- compressed streams inflated to
their last byte and their checksums checked, DICOM pixel data decoded, tables parsed --
checks that the grid outputs lie on the query's grid recorded in the report, and that the
report was made from the same settings and the same input contents (fingerprints). It
returns why the outputs cannot be kept, or None when they can.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import lazy_import
from ..io.fingerprint import fingerprint

nrrd = lazy_import("nrrd", install="pip install pynrrd")
nib = lazy_import("nibabel")
pydicom = lazy_import("pydicom")
sitk = lazy_import("SimpleITK")
Image = lazy_import("PIL.Image", install="pip install pillow")

GRID_TOLERANCE = 1e-4  # relative, as for every other grid comparison


class Damaged(Exception):
    """An output that cannot be kept: the message says why."""


def _nifti(p: Path) -> dict:
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)  # every member's CRC and length checked
    img = nib.Nifti1Image.from_bytes(raw)
    np.asarray(img.dataobj)  # every voxel present
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    reader.ReadImageInformation()
    return _grid(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(),
                 reader.GetDirection())


def _seg_nrrd(p: Path) -> dict:
    data, h = nrrd.read(str(p), index_order="F")  # inflates and checks the stream's length
    dims = [i for i, k in enumerate(h.get("kinds", ["domain"] * 3)) if str(k).lower() != "list"]
    dirs = np.asarray(h["space directions"], float)[dims]
    spacing = np.linalg.norm(dirs, axis=1)
    direction = (dirs / spacing[:, None]).T
    lps = np.array([-1.0, -1.0, 1.0]) if "right" in str(h.get("space", "")).lower() else 1.0
    size = [data.shape[i] for i in dims]
    return _grid(size, spacing, np.asarray(h["space origin"], float) * lps,
                 (direction * np.asarray(lps).reshape(-1, 1)).ravel())


def _dicom(p: Path) -> dict:
    ds = pydicom.dcmread(str(p))
    if "PixelData" in ds:
        ds.pixel_array  # noqa: B018 - decoded: every frame present
    for roi in getattr(ds, "ROIContourSequence", []):
        for c in getattr(roi, "ContourSequence", []):
            if len(c.ContourData) % 3:
                raise Damaged("a contour's points are not triples")
    return {}


def _table(p: Path) -> dict:
    lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines or not lines[-1].strip():
        raise Damaged("empty")
    return {}


def _csv(p: Path) -> dict:
    with open(p, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows or len({len(r) for r in rows}) != 1:
        raise Damaged("ragged or empty table")
    return {}


def _json(p: Path) -> dict:
    json.loads(p.read_text(encoding="utf-8"))
    return {}


def _picture(p: Path) -> dict:
    if p.suffix.lower() == ".png":
        with Image.open(p) as im:
            im.load()
    elif p.suffix.lower() == ".pdf" and b"%%EOF" not in p.read_bytes()[-1024:]:
        raise Damaged("the PDF does not end")
    elif p.suffix.lower() == ".svg" and b"</svg>" not in p.read_bytes()[-256:]:
        raise Damaged("the SVG does not end")
    return {}


READERS: dict[str, Callable[[Path], dict]] = {
    "nifti": _nifti, "seg.nrrd": _seg_nrrd, "dicom-seg": _dicom, "rtstruct": _dicom,
    "ctbl": _table, "itk-snap": _table, "statistics.csv": _csv, "statistics.json": _json,
    "report": _json, "qc": _picture,
}


def _grid(size, spacing, origin, direction) -> dict:
    return {"size_xyz": [int(v) for v in size], "spacing": [float(v) for v in spacing],
            "origin": [float(v) for v in origin], "direction": [float(v) for v in direction]}


def grid_differs(a: dict, b: dict) -> str | None:
    """Which part of two recorded grids differs (None: the same grid)."""
    if list(a.get("size_xyz", [])) != list(b.get("size_xyz", [])):
        return f"size {a.get('size_xyz')} vs {b.get('size_xyz')}"
    sp = np.asarray(b["spacing"], float)
    for key, atol in (("spacing", GRID_TOLERANCE), ("direction", GRID_TOLERANCE),
                      ("origin", max(GRID_TOLERANCE, 1e-3 * float(sp.min())))):
        x, y = np.asarray(a[key], float), np.asarray(b[key], float)
        if x.shape != y.shape or not np.allclose(x, y, rtol=GRID_TOLERANCE, atol=atol):
            return f"{key} {np.round(x, 4).tolist()} vs {np.round(y, 4).tolist()}"
    return None


def check_outputs_done(paths: dict[str, Path], config: dict, inputs: dict[str, Any]
                       ) -> str | None:
    """Why the outputs at ``paths`` cannot be kept for a run with these settings (the
    report's ``config`` form) and inputs (``{"support": [paths], "support_label": [paths],
    "query": path}``); None when every one is whole and belongs to it."""
    try:
        rep = json.loads(paths["report"].read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"no readable report ({type(exc).__name__})"
    if not isinstance(rep, dict) or not rep.get("medseg_version"):
        return "the report is not medseg's"
    listed = {k: Path(v) for k, v in (rep.get("outputs") or {}).items()}
    if any(listed.get(k) != p for k, p in paths.items()):
        return "the report lists other outputs"
    why = _same_run(rep, config, inputs)
    if why:
        return why
    query_grid = rep.get("inputs", {}).get("query", {})
    for kind, p in paths.items():
        try:
            grid = READERS.get(kind, _table)(p)
        except Exception as exc:  # anything unreadable: redo the query
            return f"{p.name} is damaged ({type(exc).__name__}: {str(exc)[:80]})"
        if grid and (diff := grid_differs(grid, query_grid)):
            return f"{p.name} is not on the query's grid ({diff})"
    return None


def _same_run(rep: dict, config: dict, inputs: dict[str, Any]) -> str | None:
    """Why the report's settings or inputs are not those of this run (None: they are)."""
    if json.loads(json.dumps(config, default=str)) != rep.get("config"):
        return "made with other settings"
    got = rep.get("inputs", {})
    pairs = got.get("supports") or [{"path": got.get("support", {}).get("path"),
                                     "label": got.get("support_label", {}).get("path"),
                                     "fingerprint": got.get("support", {}).get("fingerprint"),
                                     "label_fingerprint": got.get("support_label", {}).get(
                                         "fingerprint")}]
    want = list(zip(inputs["support"], inputs["support_label"]))
    if len(pairs) != len(want):
        return "made from other supports"
    for rec, (s, lab) in zip(pairs, want):
        if not _same_file(rec.get("path"), rec.get("fingerprint"), s):
            return f"made from another support than {s} (or it changed)"
        if not _same_file(rec.get("label"), rec.get("label_fingerprint"), lab):
            return f"made from another label than {lab} (or it changed)"
    q = got.get("query", {})
    if not _same_file(q.get("path"), q.get("fingerprint"), inputs["query"]):
        return "made from another query (or it changed)"
    return None


def _same_file(recorded: str | None, printed: str | None, path: str | Path) -> bool:
    """The recorded input is ``path`` and its content is unchanged."""
    if not recorded or not printed:
        return False
    try:
        same = Path(recorded).resolve() == Path(path).resolve()
    except (OSError, RuntimeError):
        return False
    return same and printed == fingerprint(path)
