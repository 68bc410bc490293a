"""Which queries a cohort runs and what each output is called: files, DICOM series folders,
folders of scans, globs and ``.txt``/``.csv`` lists; collision-free stems; references."""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Sequence
from pathlib import Path

from .. import export
from ..errors import InputError
from ..io import IMAGE_SUFFIXES
from ..io.dicom import is_dicom
from ..labels import find_label_beside

LIST_SUFFIXES = (".txt", ".csv", ".lst")


def _is_image(p: Path) -> bool:
    name = p.name.lower()
    return p.is_file() and name.endswith(IMAGE_SUFFIXES) and not name.endswith(".seg.nrrd")


def _is_dicom_folder(p: Path) -> bool:
    return p.is_dir() and not any(_is_image(f) for f in p.iterdir()) and is_dicom(p)


def expand_queries(specs: Sequence[str | os.PathLike]) -> list[Path]:
    """Queries from files, DICOM series folders, folders of scans, globs and list files."""
    out: list[Path] = []
    for spec in specs:
        s = str(spec)
        p = Path(s)
        if any(c in s for c in "*?[") and not p.exists():
            hits = sorted(Path(h) for h in glob.glob(s, recursive=True))
            out += [h for h in hits if _is_image(h) or _is_dicom_folder(h)]
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            out += _read_list(p)
        elif p.is_dir() and not _is_dicom_folder(p):
            inside = sorted(p.iterdir())
            out += [f for f in inside if _is_image(f) or _is_dicom_folder(f)]
        else:
            out.append(p)
    if not out:
        raise InputError(f"no query scans found in {', '.join(map(str, specs))}")
    seen: set[str] = set()
    return [q for q in out if not (_key(q) in seen or seen.add(_key(q)))]


def _key(p: Path) -> str:
    try:
        return str(p.resolve())
    except (OSError, RuntimeError):  # a looping link: the reader reports it
        return str(p)


def _read_list(p: Path) -> list[Path]:
    """A ``.txt`` list (one path per line, ``#`` comments) or a ``.csv`` (column ``path``,
    ``query`` or ``image``, else the first); relative paths are relative to the list."""
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        head = [h.strip().lower() for h in rows[0]] if rows else []
        col = next((head.index(k) for k in ("path", "query", "image") if k in head), None)
        items = [r[col or 0] for r in (rows[1:] if col is not None else rows) if r]
    else:
        items = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(p.parent / i).resolve() if not Path(i).is_absolute() else Path(i) for i in items]


def list_files(specs: Sequence[str | os.PathLike]) -> list[str]:
    """The list files among the query specs (inputs of the run like the scans)."""
    return [str(q) for q in specs if Path(q).is_file() and Path(q).suffix.lower() in LIST_SUFFIXES]


def output_stems(queries: Sequence[Path]) -> list[str]:
    """Collision-free output stems: the scan's name; clashes get their folder's name, then
    a number."""
    base = [export.query_stem(str(q)) for q in queries]
    stems = []
    for q, b in zip(queries, base):
        s = b if base.count(b) == 1 else export.safe_stem(f"{q.parent.name}_{b}")
        n, cand = 2, s
        while cand in stems:
            cand, n = f"{s}-{n}", n + 1
        stems.append(cand)
    return stems


def find_references(ref_dir: Path, stems: Sequence[str]) -> dict[str, Path]:
    """Reference label maps in ``ref_dir`` named like the queries (``q.nii.gz``,
    ``q_label.nii.gz``, ``q_seg.nii.gz``, ``q.seg.nrrd``, ...)."""
    found = {}
    for s in stems:
        direct = [ref_dir / f"{s}{suf}" for suf in (".nii.gz", ".nii", ".nrrd", ".mha")]
        hit = next((p for p in direct if p.is_file()), None) or \
            find_label_beside(ref_dir / f"{s}.nii.gz")[0]
        if hit is not None:
            found[s] = hit
    return found
