"""Outputs 3D Slicer and ITK-SNAP open directly, written atomically.

* NIfTI labelmap (uint8: 0 background, 1..N) on the query's exact grid;
* ``.seg.nrrd`` (Slicer segmentation: names, colours, label values, layers, extents);
* a colour table (``.ctbl``, Slicer's format; ITK-SNAP reads the same lines) so the
  NIfTI labelmap gets names and colours when loaded as a labelmap.

Every file is first written to a hidden temporary file in the destination folder and then
renamed into place, so an interrupted run never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OutputError
from .io import Volume

# Colours of common structures (Slicer's General Anatomy palette), else a fixed cycle.
NAMED_COLORS: dict[str, tuple[int, int, int]] = {
    "liver": (221, 130, 101),
    "spleen": (157, 108, 162),
    "kidney": (185, 102, 83),
    "right kidney": (185, 102, 83),
    "left kidney": (185, 102, 83),
    "stomach": (216, 132, 105),
    "pancreas": (249, 180, 111),
    "aorta": (224, 97, 76),
    "tumor": (253, 135, 192),
    "tumour": (253, 135, 192),
    "heart": (206, 110, 84),
    "lung": (197, 165, 145),
}
CYCLE = [
    (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
    (221, 130, 101), (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0),
]


@dataclass(frozen=True)
class Segment:
    """One output label."""

    value: int
    name: str
    color: tuple[int, int, int]


def make_segments(values: Sequence[int], names: Sequence[str] | None = None) -> list[Segment]:
    """Segments for output label values 1..N with names and colours."""
    names = list(names) if names else [f"label_{v}" for v in values]
    if len(names) != len(values):
        raise ValueError(f"{len(names)} names for {len(values)} labels")
    segs = []
    for i, (v, n) in enumerate(zip(values, names)):
        color = NAMED_COLORS.get(n.lower().replace("_", " "), CYCLE[i % len(CYCLE)])
        segs.append(Segment(int(v), n, color))
    return segs


# --- atomic writing ------------------------------------------------------------------------


def _publish(tmp: Path, dst: Path) -> None:
    """Give the finished temporary file normal permissions and move it into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, dst)


def _explain_os_error(path: Path, exc: OSError) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"{path}: no space left on the device; free some space and run again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{path}: folder is not writable; choose another output folder with -o")
    return OutputError(f"{path}: cannot write ({exc.strerror or exc})")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    suffix = "".join(path.suffixes) or ".tmp"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _explain_os_error(path, exc) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _publish(tmp_path, path)
    except OSError as exc:
        raise _explain_os_error(path, exc) from exc
    except RuntimeError as exc:  # SimpleITK raises RuntimeError for I/O failures
        raise _explain_runtime_error(path, exc) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then move the result onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data: object) -> Path:
    """JSON with numpy values converted (NaN/inf become null), written atomically."""
    return write_text_atomic(path, json.dumps(_finite(data), indent=2, default=_json_default) + "\n")


def _finite(o: object) -> object:
    if isinstance(o, float) and not np.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


class OutputTransaction:
    """All-or-nothing writing of several files.

    Each ``add`` writes to a hidden temporary file beside its destination; leaving the
    ``with`` block without error renames them all into place. On any error or Ctrl-C the
    temporaries, and any file this transaction already moved into place, are removed.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []
        self._done: list[Path] = []

    def __enter__(self) -> OutputTransaction:
        return self

    def add(self, path: str | os.PathLike, writer: Callable[[Path], object]) -> None:
        path = Path(path)
        suffix = "".join(path.suffixes) or ".tmp"
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}",
                                       dir=path.parent)
            os.close(fd)
        except OSError as exc:
            raise _explain_os_error(path, exc) from exc
        self._staged.append((Path(tmp), path))
        try:
            writer(Path(tmp))
        except OSError as exc:
            raise _explain_os_error(path, exc) from exc
        except RuntimeError as exc:
            raise _explain_runtime_error(path, exc) from exc

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                for tmp, dst in self._staged:
                    _publish(tmp, dst)
                    self._done.append(dst)
                self._staged.clear()
                return None
            except BaseException:
                self._rollback()
                raise
        self._rollback()
        return None

    def _rollback(self) -> None:
        for tmp, _ in self._staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        for dst in self._done:
            with contextlib.suppress(FileNotFoundError):
                dst.unlink()
        self._staged.clear()
        self._done.clear()


def _explain_runtime_error(path: Path, exc: RuntimeError) -> OutputError:
    if "No space" in str(exc):
        return OutputError(f"{path}: no space left on the device; free some space and run again")
    return OutputError(f"{path}: cannot write ({str(exc).splitlines()[0]})")


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


def check_outputs(
    paths: Sequence[Path], *, overwrite: bool, inputs: Sequence[str | os.PathLike] = ()
) -> None:
    """Refuse to overwrite without ``overwrite`` and never write onto an input file."""
    resolved_inputs = {Path(p).resolve() for p in inputs if p}
    for p in paths:
        if p.resolve() in resolved_inputs:
            raise OutputError(f"{p}: is one of the inputs; choose another output folder with -o")
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise OutputError(
            f"output exists: {', '.join(existing)}; pass --overwrite to replace it or choose "
            "another folder with -o"
        )


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


# --- writers --------------------------------------------------------------------------------


def labelmap_volume(labels: np.ndarray, reference: Volume) -> Volume:
    """A uint8 labelmap volume with the reference's geometry."""
    if labels.shape != reference.shape:
        raise ValueError(f"labelmap shape {labels.shape} != reference {reference.shape}")
    if labels.size and int(labels.max()) > 255:
        raise ValueError("more than 255 labels do not fit a uint8 labelmap")
    return Volume(
        labels.astype(np.uint8, copy=False), reference.spacing, reference.origin,
        reference.direction.copy(),
    )


def write_nifti_labelmap(labels: np.ndarray, reference: Volume, path: str | os.PathLike) -> Path:
    """uint8 NIfTI labelmap on the reference's grid, written atomically."""
    import SimpleITK as sitk

    img = labelmap_volume(labels, reference).to_sitk()
    return write_atomic(path, lambda p: sitk.WriteImage(img, str(p), useCompression=True))


def write_color_table(segments: Sequence[Segment], path: str | os.PathLike) -> Path:
    """Slicer colour table (``.ctbl``): ``value name R G B A`` per line, 0 = background."""
    lines = ["# medseg colour table: value name R G B A", "0 background 0 0 0 0"]
    lines += [f"{s.value} {s.name.replace(' ', '_')} {s.color[0]} {s.color[1]} {s.color[2]} 255"
              for s in segments]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def seg_nrrd_header(labels: np.ndarray, reference: Volume, segments: Sequence[Segment]) -> dict:
    """The NRRD header of a Slicer segmentation with one shared labelmap layer."""
    nz, ny, nx = labels.shape
    space_dirs = (reference.direction * np.asarray(reference.spacing)[None, :]).T  # rows = axes
    header: dict = {
        "type": "unsigned char",
        "dimension": 3,
        "space": "left-posterior-superior",
        "sizes": [nx, ny, nz],
        "space directions": space_dirs,
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
        "space origin": np.asarray(reference.origin, dtype=float),
    }
    full_extent = f"0 {nx - 1} 0 {ny - 1} 0 {nz - 1}"
    for i, s in enumerate(segments):
        header[f"Segment{i}_Color"] = " ".join(f"{c / 255:.6g}" for c in s.color)
        header[f"Segment{i}_ColorAutoGenerated"] = "0"
        header[f"Segment{i}_Extent"] = full_extent
        header[f"Segment{i}_ID"] = f"Segment_{s.value}"
        header[f"Segment{i}_LabelValue"] = str(s.value)
        header[f"Segment{i}_Layer"] = "0"
        header[f"Segment{i}_Name"] = s.name
        header[f"Segment{i}_NameAutoGenerated"] = "0"
        header[f"Segment{i}_Tags"] = "Segmentation.Status:completed|"
    header["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
    header["Segmentation_MasterRepresentation"] = "Binary labelmap"
    header["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    return header


def write_seg_nrrd(
    labels: np.ndarray, reference: Volume, segments: Sequence[Segment], path: str | os.PathLike
) -> Path:
    """Slicer ``.seg.nrrd`` on the reference's grid (valid for empty predictions too)."""
    import nrrd

    header = seg_nrrd_header(labels, reference, segments)
    # NRRD's fastest axis first: write the (z, y, x) array in Fortran order as (x, y, z).
    data = np.ascontiguousarray(labels.astype(np.uint8)).transpose(2, 1, 0)
    return write_atomic(
        path,
        lambda p: nrrd.write(str(p), data, header, index_order="F", compression_level=6),
    )
