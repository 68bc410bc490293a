"""Every output a result can be saved as, behind one contract and a registry.

Each :class:`Output` names its file (from the query's stem), says which ``--format`` asks
for it and writes it to a path it is given; :func:`output_paths` and :func:`write_all`
walk the registry (:data:`OUTPUTS`), so a new format is one entry here and its writer.
:func:`write_all` writes through one :class:`~medseg.export.transaction.OutputTransaction`:
all files or none, the report last.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import qc
from ..errors import UsageError
from ..options import FORMATS, check_choice
from . import dicom_seg, labelmap, rtstruct, seg_nrrd
from .paths import safe_stem
from .transaction import OutputTransaction, json_file

if TYPE_CHECKING:
    from ..result import Result

QC_SUFFIXES = (".png", ".pdf", ".svg")


@dataclass
class WriteContext:
    """What several writers share, computed once per save."""

    masks: Any = None  # (N, z, y, x) per-structure masks with overlaps kept, or None


@dataclass(frozen=True)
class Output:
    """One kind of output file."""

    kind: str
    format: str | None  # the --format value that asks for it; None: always written
    filename: Callable[[str], str]  # stem -> file name
    write: Callable[[Result, Path, WriteContext], None]
    needs_masks: bool = False  # reads per-structure masks (overlaps kept)


def _nifti(res: Result, p: Path, ctx: WriteContext) -> None:
    labelmap.nifti_labelmap(res.labels.array, res.labels, p, res.plan.dtype)


def _ctbl(res: Result, p: Path, ctx: WriteContext) -> None:
    labelmap.color_table(res.plan, p)


def _itksnap(res: Result, p: Path, ctx: WriteContext) -> None:
    labelmap.itksnap_labels(res.plan, p)


def _seg_nrrd(res: Result, p: Path, ctx: WriteContext) -> None:
    seg_nrrd.seg_nrrd(res.labels.array, res.labels, res.plan, p, ctx.masks,
                      res.segment_tags())


def _dicom_seg(res: Result, p: Path, ctx: WriteContext) -> None:
    dicom_seg.write_dicom_seg(res, p, ctx.masks)


def _rtstruct(res: Result, p: Path, ctx: WriteContext) -> None:
    rtstruct.write_rtstruct(res, p, ctx.masks)


def _statistics_json(res: Result, p: Path, ctx: WriteContext) -> None:
    json_file(p, {"query": res.labels.path, "structures": res.statistics()})


def _statistics_csv(res: Result, p: Path, ctx: WriteContext) -> None:
    rows = res.statistics()
    with open(p, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["name"])
        w.writeheader()
        w.writerows(rows)


def _report(res: Result, p: Path, ctx: WriteContext) -> None:
    json_file(p, res.report.to_dict())


OUTPUTS: dict[str, Output] = {o.kind: o for o in (
    Output("nifti", "nifti", lambda s: f"{s}_labels.nii.gz", _nifti),
    Output("ctbl", "nifti", lambda s: f"{s}_labels.ctbl", _ctbl),
    Output("itk-snap", "itk-snap", lambda s: f"{s}_itksnap.txt", _itksnap),
    Output("seg.nrrd", "seg.nrrd", lambda s: f"{s}.seg.nrrd", _seg_nrrd, needs_masks=True),
    Output("dicom-seg", "dicom-seg", lambda s: f"{s}_seg.dcm", _dicom_seg, needs_masks=True),
    Output("rtstruct", "rtstruct", lambda s: f"{s}_rtstruct.dcm", _rtstruct, needs_masks=True),
    Output("statistics.json", "statistics", lambda s: f"{s}_statistics.json", _statistics_json),
    Output("statistics.csv", "statistics", lambda s: f"{s}_statistics.csv", _statistics_csv),
    Output("report", None, lambda s: f"{s}_report.json", _report),
)}


def output_paths(out_dir: str | os.PathLike, stem: str, formats: Sequence[str] = ("nifti",
                 "seg.nrrd"), report: str | os.PathLike | None = None,
                 qc: str | os.PathLike | None = None, statistics: bool = False
                 ) -> dict[str, Path]:
    """Where the outputs of one query go: ``{kind: path}``; refuses paths that collide."""
    out = Path(out_dir)
    for f in formats:
        check_choice(f, FORMATS, "format")
    stem = safe_stem(stem)
    asked = {*formats, *(("statistics",) if statistics else ())}
    paths = {k: out / o.filename(stem) for k, o in OUTPUTS.items()
             if o.format is None or o.format in asked}
    if report:
        paths["report"] = Path(report)
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
    paths["report"] = paths.pop("report")  # written last
    return paths


def write_all(result: Result, paths: dict[str, Path], tx: OutputTransaction,
              before_report: Callable[[], None] = lambda: None) -> None:
    """Stage every output of ``paths`` in ``tx`` (the report last, after
    ``before_report``); the transaction publishes them together."""
    needs = any(OUTPUTS[k].needs_masks for k in paths if k in OUTPUTS)
    ctx = WriteContext(result.structure_masks() if needs else None)
    files = [(p, lambda p, o=OUTPUTS[kind]: o.write(result, p, ctx))
             for kind, p in paths.items() if kind not in ("report", "qc")]
    tx.add_all(files)  # side by side
    if "qc" in paths:  # matplotlib: in this thread
        tx.add(paths["qc"], lambda p: qc.qc_figure(result, p, fmt=paths["qc"].suffix[1:].lower()))
    before_report()
    tx.add(paths["report"], lambda p: OUTPUTS["report"].write(result, p, ctx))


