"""Outputs other tools open directly, written all-or-nothing.

* NIfTI labelmap (0 background, 1..N; uint8, or uint16 beyond 255 structures) on the
  query's exact grid, with a Slicer colour table (``.ctbl``) and an ITK-SNAP label
  description (``_itksnap.txt``) giving names and colours;
* ``.seg.nrrd``: a 3D Slicer segmentation written the way Slicer writes one (per-segment
  extents, generated names/colours flagged, terminology, review status "in progress");
* DICOM-SEG for PACS/OHIF when the query is a DICOM series (:mod:`medseg.dicom`).

One mechanism writes every file: :class:`OutputTransaction`. Each file is first written
to a hidden temporary file beside its destination; when all are complete they are moved
into place together, under a lock on the folder and with Ctrl-C/SIGTERM held back, so a
folder never holds a mixed or partial set. An existing output is replaced only when
asked, and restored if the run fails after all.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .errors import OutputError, UsageError
from .io import Volume
from .labels import LabelPlan
from .options import FORMATS, check_choice

MAX_STEM_BYTES = 120  # leaves room for suffixes and temporary names within 255 bytes
QC_SUFFIXES = (".png", ".pdf", ".svg")

# --- names -----------------------------------------------------------------------------------


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


def output_paths(out_dir: str | os.PathLike, stem: str, formats: Sequence[str] = ("nifti",
                 "seg.nrrd"), report: str | os.PathLike | None = None,
                 qc: str | os.PathLike | None = None) -> dict[str, Path]:
    """Where the outputs of one query go: ``{kind: path}``; refuses paths that collide."""
    out = Path(out_dir)
    for f in formats:
        check_choice(f, FORMATS, "format")
    stem = safe_stem(stem)
    paths: dict[str, Path] = {}
    if "nifti" in formats:
        paths["nifti"] = out / f"{stem}_labels.nii.gz"
        paths["ctbl"] = out / f"{stem}_labels.ctbl"
    if "itk-snap" in formats:
        paths["itk-snap"] = out / f"{stem}_itksnap.txt"
    if "seg.nrrd" in formats:
        paths["seg.nrrd"] = out / f"{stem}.seg.nrrd"
    if "dicom-seg" in formats:
        paths["dicom-seg"] = out / f"{stem}_seg.dcm"
    paths["report"] = Path(report) if report else out / f"{stem}_report.json"
    if qc:
        paths["qc"] = Path(qc)
        if paths["qc"].suffix.lower() not in QC_SUFFIXES:
            raise UsageError(f"qc {qc}: the picture is written as PNG, PDF or SVG; end the name "
                             f"with one of {', '.join(QC_SUFFIXES)}", option="qc")
    seen: dict[Path, str] = {}
    for kind, p in paths.items():
        key = Path(os.path.abspath(p))
        if key in seen:
            raise UsageError(f"{kind} output {p} is also the {seen[key]} output; give them "
                             "different paths", option=kind)
        seen[key] = kind
    return paths


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
    if not os.access(probe, os.W_OK):
        raise OutputError(f"{out}: folder is not writable; choose another output folder with -o")


def prepare_output_dir(out_dir: str | os.PathLike) -> Path:
    """Create the output folder (with parents); clear error if impossible."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; -o takes a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _explain_os_error(out, exc) from exc
    if not os.access(out, os.W_OK):
        raise OutputError(f"{out}: folder is not writable; choose another output folder with -o")
    return out


# --- all-or-nothing writing ------------------------------------------------------------------


def _explain_os_error(path: Path, exc: OSError) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"{path}: no space left on the device; free some space and run again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{path}: folder is not writable; choose another output folder with -o")
    if exc.errno == errno.ENAMETOOLONG:
        return OutputError(f"{path}: file name too long for this file system; use a shorter "
                           "output name or folder")
    return OutputError(f"{path}: cannot write ({exc.strerror or exc})")


def _explain_runtime_error(path: Path, exc: RuntimeError) -> OutputError:
    if "No space" in str(exc):
        return OutputError(f"{path}: no space left on the device; free some space and run again")
    return OutputError(f"{path}: cannot write ({str(exc).splitlines()[0]})")


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while files are moved into place (POSIX main thread)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def _folder_lock(folders: Sequence[Path]) -> Iterator[None]:
    """Exclusive advisory locks on the destination folders (no lock files are created)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks on folders
        yield
        return
    fds = []
    try:
        for d in sorted({f.resolve() for f in folders}):
            fd = os.open(d, os.O_RDONLY)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            os.close(fd)  # closing releases the lock


class OutputTransaction:
    """All-or-nothing writing of several files (the only way medseg writes outputs).

    ``add(path, writer)`` calls ``writer(tmp)`` on a hidden temporary file beside ``path``.
    Leaving the ``with`` block without error moves every file into place; with
    ``overwrite=False`` a destination that appeared meanwhile (another run) is a conflict.
    On any error, Ctrl-C or SIGTERM, temporaries are removed and replaced files restored.
    """

    def __init__(self, overwrite: bool = True, protected: frozenset[Path] = frozenset()) -> None:
        self.overwrite = overwrite
        self.protected = protected  # inputs of the run: never replaced, whatever is asked
        self._staged: list[tuple[Path, Path]] = []

    def __enter__(self) -> OutputTransaction:
        return self

    def add(self, path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
        path = Path(path)
        suffix = "".join(path.suffixes[-2:])[-16:] or ".tmp"
        try:
            fd, tmp = tempfile.mkstemp(prefix=".medseg-", suffix=f".part{suffix}", dir=path.parent)
            os.close(fd)
        except OSError as exc:
            raise _explain_os_error(path, exc) from exc
        self._staged.append((Path(tmp), path))
        try:
            writer(Path(tmp))
        except OSError as exc:
            raise _explain_os_error(path, exc) from exc
        except RuntimeError as exc:  # SimpleITK raises RuntimeError for I/O failures
            raise _explain_runtime_error(path, exc) from exc
        return path

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._publish()
        finally:
            for tmp, _ in self._staged:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            self._staged.clear()

    def _publish(self) -> None:
        done: list[tuple[Path, Path | None]] = []  # (destination, backup of what it replaced)
        with _signals_held(), _folder_lock([d.parent for _, d in self._staged]):
            try:
                for tmp, dst in self._staged:
                    done.append((dst, self._move(tmp, dst)))
            except BaseException:
                for dst, backup in reversed(done):
                    with contextlib.suppress(FileNotFoundError):
                        dst.unlink()
                    if backup is not None:
                        os.replace(backup, dst)
                raise
            for _, backup in done:
                if backup is not None:
                    backup.unlink()

    def _move(self, tmp: Path, dst: Path) -> Path | None:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        backup = None
        if _resolve(dst, strict=False) in self.protected:
            raise OutputError(f"{dst}: would replace an input of this run; nothing was written")
        if dst.exists() or dst.is_symlink():
            if dst.is_dir():
                raise OutputError(f"{dst}: is a folder; an output file cannot replace it")
            if not self.overwrite:
                raise OutputError(f"{dst}: appeared while this run was working (another medseg "
                                  "run writing the same outputs?); nothing was written")
            backup = dst.with_name(f".medseg-{os.getpid()}-{dst.name[-40:]}.bak")
            os.replace(dst, backup)
        try:
            os.replace(tmp, dst)
        except OSError as exc:
            if backup is not None:
                os.replace(backup, dst)
            raise _explain_os_error(dst, exc) from exc
        return backup


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], object],
                 overwrite: bool = True) -> Path:
    """One file through :class:`OutputTransaction`."""
    with OutputTransaction(overwrite) as tx:
        tx.add(path, writer)
    return Path(path)


def write_json(path: str | os.PathLike, data: object) -> Path:
    """JSON with numpy values converted (NaN/inf become null), written atomically."""
    return write_atomic(path, lambda p: json_file(p, data))


def json_file(path: Path, data: object) -> None:
    text = json.dumps(_finite(data), indent=2, default=_json_default, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def _finite(o: object) -> object:
    if isinstance(o, float) and not np.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o: object) -> object:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


# --- writers (to a given path; the transaction makes them atomic) -----------------------------


def labelmap_volume(labels: np.ndarray, reference: Volume, dtype: str = "uint8") -> Volume:
    """A labelmap volume with the reference's geometry."""
    if labels.shape != reference.shape:
        raise ValueError(f"labelmap shape {labels.shape} != reference {reference.shape}")
    return Volume(labels.astype(dtype, copy=False), reference.spacing, reference.origin,
                  reference.direction.copy())


def nifti_labelmap(labels: np.ndarray, reference: Volume, path: Path, dtype: str = "uint8") -> None:
    """Labelmap on the reference's grid (compressed NIfTI)."""
    import SimpleITK as sitk

    sitk.WriteImage(labelmap_volume(labels, reference, dtype).to_sitk(), str(path),
                    useCompression=True)


def color_table(plan: LabelPlan, path: Path) -> None:
    """Slicer colour table (``.ctbl``): ``value name R G B A`` per line, 0 = background."""
    lines = ["# Color table file (3D Slicer): value name R G B A", "0 background 0 0 0 0"]
    lines += [f"{e.output_value} {e.name.replace(' ', '_')} {e.color[0]} {e.color[1]} "
              f"{e.color[2]} 255" for e in plan]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def itksnap_labels(plan: LabelPlan, path: Path) -> None:
    """ITK-SNAP label description file: ``IDX R G B A VIS MSH "LABEL"`` per line."""
    lines = ["# ITK-SnAP Label Description File",
             '    0     0    0    0        0  0  0    "Clear Label"']
    for e in plan:
        label = e.name.replace('"', "'")
        lines.append(f"{e.output_value:5d} {e.color[0]:5d} {e.color[1]:4d} {e.color[2]:4d}"
                     f"        1  1  1    \"{label}\"")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def seg_nrrd_header(labels: np.ndarray, reference: Volume, plan: LabelPlan,
                    masks: np.ndarray | None = None,
                    layers: Sequence[int] | None = None) -> dict[str, str]:
    """The NRRD header fields of a Slicer segmentation: one shared labelmap layer, or with
    ``layers`` (the layer of each segment) Slicer's 4D form whose first axis lists the
    layers (custom ``key:=value`` fields are the ones with an upper-case first letter)."""
    nz, ny, nx = labels.shape
    dirs = (reference.direction * np.asarray(reference.spacing)[None, :]).T  # rows: i, j, k
    n_layers = max(layers) + 1 if layers else 1
    header = {
        "type": "unsigned char" if plan.dtype == "uint8" else "unsigned short",
        "dimension": "3", "space": "left-posterior-superior", "sizes": f"{nx} {ny} {nz}",
        "space directions": " ".join(_vec(r) for r in dirs),
        "kinds": "domain domain domain", "endian": "little", "encoding": "gzip",
        "space origin": _vec(reference.origin),
    }
    if n_layers > 1:
        header.update({"dimension": "4", "sizes": f"{n_layers} {nx} {ny} {nz}",
                       "space directions": "none " + header["space directions"],
                       "kinds": "list domain domain domain"})
    for i, e in enumerate(plan):
        tags = "Segmentation.Status:inprogress|"  # an automatic result, not yet reviewed
        if e.terminology:
            tags += f"TerminologyEntry:{e.terminology}|"
        mask = labels == e.output_value if masks is None else masks[i]
        header.update({
            f"Segment{i}_Color": " ".join(f"{c / 255:.6g}" for c in e.color),
            f"Segment{i}_ColorAutoGenerated": str(int(e.color_auto)),
            f"Segment{i}_Extent": _extent(mask),
            f"Segment{i}_ID": f"Segment_{e.output_value}",
            f"Segment{i}_LabelValue": str(e.output_value),
            f"Segment{i}_Layer": str(layers[i] if layers else 0),
            f"Segment{i}_Name": e.name,
            f"Segment{i}_NameAutoGenerated": str(int(e.name_auto)),
            f"Segment{i}_Tags": tags,
        })
    header["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
    header["Segmentation_MasterRepresentation"] = "Binary labelmap"
    header["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    return header


def assign_layers(masks: np.ndarray) -> list[int]:
    """Each structure's layer, as Slicer assigns them: the first layer it does not
    overlap, else a new one."""
    used: list[np.ndarray] = []
    layers = []
    for m in masks:
        for i, u in enumerate(used):
            if not (u & m).any():
                u |= m
                layers.append(i)
                break
        else:
            used.append(m.copy())
            layers.append(len(used) - 1)
    return layers


def _vec(v) -> str:
    return "(" + ",".join(repr(float(x)) for x in v) + ")"


def _extent(mask: np.ndarray) -> str:
    """Slicer's per-segment extent ``i0 i1 j0 j1 k0 k1``; ``0 -1 0 -1 0 -1`` when empty."""
    if not mask.any():
        return "0 -1 0 -1 0 -1"
    out = []
    for ax in (2, 1, 0):  # i (x), j (y), k (z)
        hit = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0]
        out += [int(hit[0]), int(hit[-1])]
    return " ".join(map(str, out))


def seg_nrrd(labels: np.ndarray, reference: Volume, plan: LabelPlan, path: Path,
             masks: np.ndarray | None = None) -> None:
    """Slicer ``.seg.nrrd`` on the reference's grid (a full-size volume even when empty).

    With per-structure ``masks`` (N, z, y, x) that overlap, Slicer's multi-layer form: each
    structure in the first layer where it overlaps nothing. Written directly (NRRD0004,
    gzip): the header is UTF-8, as Slicer writes segment names, so names in any script
    survive (pynrrd would only write ASCII).
    """
    import gzip

    layers = assign_layers(masks) if masks is not None else None
    dtype = "<u1" if plan.dtype == "uint8" else "<u2"
    if layers is None:
        data = labels.astype(dtype)
    else:  # (z, y, x, layer) in C order: the layer runs fastest, the NRRD's first axis
        data = np.zeros((*labels.shape, max(layers) + 1), dtype)
        for m, layer, e in zip(masks, layers, plan):
            data[..., layer][m] = e.output_value
        if data.shape[-1] == 1:
            data = data[..., 0]
            layers = None
    lines = ["NRRD0004", "# Complete NRRD file format specification at:",
             "# http://teem.sourceforge.net/nrrd/format.html"]
    for k, v in seg_nrrd_header(labels, reference, plan, masks, layers).items():
        lines.append(f"{k}:={v}" if k[0].isupper() else f"{k}: {v}")
    data = np.ascontiguousarray(data)
    with open(path, "wb") as fh:  # (z, y, x) in C order: x runs fastest, as NRRD's first axis
        fh.write(("\n".join(lines) + "\n\n").encode("utf-8"))
        fh.write(gzip.compress(data.tobytes(), compresslevel=6, mtime=0))  # reproducible
