"""Fingerprints of input files: what a report records so that a later run can tell whether
the inputs it would use are those a result was made from (``--resume``).

Content, not times: a copied or touched file keeps its fingerprint, an edited one does not.
Files up to :data:`WHOLE_FILE_BYTES` are hashed whole (labels, most scans); larger ones by
their size and first and last :data:`EDGE_BYTES`; a folder (a DICOM series) by its files'
names, sizes and first :data:`DICOM_HEAD_BYTES` (the headers, where positions and UIDs are).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

WHOLE_FILE_BYTES = 64 << 20
EDGE_BYTES = 4 << 20
DICOM_HEAD_BYTES = 64 << 10


def fingerprint(path: str | os.PathLike) -> str | None:
    """``sha256:<hex>`` of a file or folder as described above; None if it cannot be read."""
    p = Path(path)
    try:
        st = p.stat()
        return _cached(str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    except OSError:
        return None


@functools.lru_cache(maxsize=256)
def _cached(path: str, size: int, mtime_ns: int, inode: int) -> str | None:
    """One hash per file state (a cohort's support is hashed once, not once per query)."""
    p = Path(path)
    h = hashlib.sha256()
    try:
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                h.update(f"{f.relative_to(p)}\0{f.stat().st_size}\0".encode())
                _update(h, f, DICOM_HEAD_BYTES)
        else:
            h.update(f"{size}\0".encode())
            _update(h, p, WHOLE_FILE_BYTES if size <= WHOLE_FILE_BYTES else EDGE_BYTES,
                    tail=size > WHOLE_FILE_BYTES)
    except OSError:
        return None
    return "sha256:" + h.hexdigest()


def _update(h, p: Path, n: int, tail: bool = False) -> None:
    with open(p, "rb") as fh:
        while n > 0:
            block = fh.read(min(n, 1 << 20))
            if not block:
                break
            h.update(block)
            n -= len(block)
        if tail:
            fh.seek(-EDGE_BYTES, os.SEEK_END)
            h.update(fh.read(EDGE_BYTES))
