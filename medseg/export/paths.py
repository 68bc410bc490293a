"""Output names and the checks made before any work: where each output goes, that it
replaces no input and (without ``overwrite``) no existing file, that the folder is writable."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from ..errors import OutputError

MAX_STEM_BYTES = 120  # leaves room for suffixes and temporary names within 255 bytes




def safe_stem(name: str) -> str:
    """A file-name stem every file system takes: no separators or control characters, at
    most ``MAX_STEM_BYTES`` bytes (longer names keep their start and a short hash)."""
    s = unicodedata.normalize("NFC", name)
    s = "".join("_" if (c in '/\\:*?"<>|' or unicodedata.category(c)[0] == "C") else c for c in s)
    s = s.strip(" .") or "query"
    if len(s.encode("utf-8")) <= MAX_STEM_BYTES:
        return s
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:10]
    head = s.encode("utf-8")[: MAX_STEM_BYTES - 11].decode("utf-8", "ignore")
    return f"{head}-{digest}"


def query_stem(path: str | os.PathLike | None) -> str:
    """Output stem of a query: its file or folder name without image suffixes."""
    name = Path(str(path or "query").rstrip("/\\")).name
    for suf in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    return safe_stem(name)


def input_files(inputs: Sequence[str | os.PathLike]) -> frozenset[Path]:
    """Every file an input stands for, resolved: a file itself, every file inside a folder
    (a DICOM series); what no output of the run may replace."""
    out: set[Path] = set()
    for p in inputs:
        if not p:
            continue
        r = _resolve(Path(p), strict=False)
        if r is None:
            continue
        out.add(r)
        if r.is_dir():
            with contextlib.suppress(OSError):
                out |= {f.resolve() for f in r.iterdir() if f.is_file()}
    return frozenset(out)


def check_outputs(paths: Sequence[Path], *, overwrite: bool,
                  inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Before any work: never write onto an input, onto a folder, or (without
    ``overwrite``) onto an existing file."""
    resolved = input_files(inputs)
    for p in paths:
        if _resolve(p) in resolved:
            raise OutputError(f"{p}: would replace an input of this run; choose another "
                              "output folder with -o")
        if p.is_dir():
            raise OutputError(f"{p}: is a folder; an output file cannot replace it (remove it "
                              "or choose another output folder)")
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise OutputError(f"output exists: {', '.join(existing)}; pass --overwrite to replace it "
                          "or choose another folder with -o")


def _resolve(p: Path, strict: bool = True) -> Path | None:
    """``p.resolve()``; a looping link is an output error (inputs: skipped, the reader says)."""
    try:
        return p.resolve()
    except (OSError, RuntimeError) as exc:  # a symbolic-link loop
        if not strict:
            return None
        raise OutputError(f"{p}: cannot be resolved ({exc}); is it a looping symbolic link?"
                          ) from exc


def check_output_dir(out_dir: str | os.PathLike) -> None:
    """Before any work, without creating anything: can ``out_dir`` be written to?"""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; -o takes a folder")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: folder is not writable; choose another output folder with -o")
    if probe == out and not os.access(out, os.R_OK):  # what is there must be looked at
        raise OutputError(f"{out}: folder is not readable (write-only); choose another output "
                          "folder with -o, or make it readable")


def prepare_output_dir(out_dir: str | os.PathLike) -> Path:
    """Create the output folder (with parents); clear error if impossible."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; -o takes a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise explain_os_error(out, exc) from exc
    if not os.access(out, os.W_OK):
        raise OutputError(f"{out}: folder is not writable; choose another output folder with -o")
    return out


def explain_os_error(path: Path, exc: OSError) -> OutputError:
    """The one-line error for a failed write."""
    if exc.errno == errno.ENOSPC:
        return OutputError(f"{path}: no space left on the device; free some space and run again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{path}: folder is not writable; choose another output folder with -o")
    if exc.errno == errno.ENAMETOOLONG:
        return OutputError(f"{path}: file name too long for this file system; use a shorter "
                           "output name or folder")
    return OutputError(f"{path}: cannot write ({exc.strerror or exc})")
