"""What ``medseg segment`` does with its options: find the labels, check everything that
needs no model, then one query or a cohort."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import export
from .api import Segmenter
from .checkpoints import resolve_checkpoint
from .cohort import Job, expand_queries, list_files, run_cohort
from .config import CohortSpec, ModelConfig, OutputSpec, SegmentConfig
from .errors import InputError, UsageError
from .export.dicom_seg import check_seg_sources
from .export.transaction import recover
from .labels import find_label_beside
from .timing import Timer, stage_reporter

Say = Callable[[str], None]


def segment(options: dict[str, Any], settings: dict[str, Any], say: Say, out: Say,
            verbose: bool = False, quiet: bool = False) -> None:
    """The ``segment`` command: its inputs in ``options``, its settings built and checked
    (``model``, ``segment``, ``output``, ``cohort``)."""
    model: ModelConfig = settings["model"]
    cfg: SegmentConfig = settings["segment"]
    spec: OutputSpec = settings["output"]
    coh: CohortSpec = settings["cohort"]
    supports = [Path(s) for s in options.get("support") or []]
    if not supports:
        raise UsageError("--support: give the scan with the painted slice(s) (-s scan.nii.gz)")
    for s in supports:
        if not s.exists():
            raise InputError(f"support {s}: no such file or folder")
    labels = [Path(x) for x in options.get("support_label") or []]
    if labels and len(labels) != len(supports):
        raise UsageError(f"--support-label: {len(labels)} label(s) for {len(supports)} support "
                         "scan(s); give one per --support, in the same order, or none (each "
                         "found beside its scan)")
    labels = labels or [find_label(s, say) for s in supports]
    check_before_work(supports, labels, model, cfg, say)
    specs = options.get("query") or []
    queries = expand_queries(specs) if specs else [supports[0]]  # none: the painted scan
    seg = Segmenter(model, progress=not quiet)
    single = len(queries) == 1 and len(specs) <= 1 and (not specs or queries[0] == Path(specs[0]))
    if single and not (coh.resume or coh.ref or coh.workers > 1 or coh.query_timeout):
        segment_one(seg, supports, labels, queries[0] if specs else None, cfg, spec, say, out)
        return
    run_cohort(seg, Job(tuple(map(str, supports)), tuple(map(str, labels)), cfg, spec, coh),
               queries, say, verbose, list_files(specs), lambda: check_model(model, cfg))


def check_before_work(supports: list[Path], labels: list[Path], model: ModelConfig,
                      cfg: SegmentConfig, say: Say) -> None:
    """What needs no model is checked before anything is read or loaded: the label files
    are readable, the model's weights can be had (naming the weight-free alternative), a
    device asked for has something to run."""
    for lab in labels:
        if not lab.exists():
            raise InputError(f"support label {lab}: no such file or folder")
        if not os.access(lab, os.R_OK):
            raise InputError(f"support label {lab}: not readable (check permissions)")
    if not cfg.needs_model and model.device != "auto":
        warnings.warn(f"--device {model.device} has no effect: --method transfer with a "
                      "weight-free matcher loads no model", stacklevel=2)


def check_model(model: ModelConfig, cfg: SegmentConfig) -> None:
    """The model's weights can be had (after the options and outputs were checked)."""
    if cfg.needs_model:
        resolve_checkpoint(model.model, model.checkpoint, allow_download=model.allow_download,
                           progress=False)


def find_label(support: Path, say: Say) -> Path:
    """The support's label found beside it, said; else a usage error listing what was tried."""
    found, tried = find_label_beside(support)
    if found is None:
        names = ", ".join(p.name for p in tried[:8])
        raise UsageError(f"no --support-label given and none found beside {support} (tried "
                         f"{names}, ... {len(tried)} names); pass --support-label")
    say(f"support label: {found} (found beside the support)")
    return found


def segment_one(seg: Segmenter, supports: list[Path], labels: list[Path], query: Path | None,
                cfg: SegmentConfig, spec: OutputSpec, say: Say, out: Say) -> None:
    """One query (None: the first support scan itself): every check that needs no model
    first, then the work, then the files."""
    target = query or supports[0]
    if {"dicom-seg", "rtstruct"} & set(spec.formats):
        check_seg_sources(target)
    paths = export.output_paths(spec.folder, export.query_stem(str(target)), spec.formats,
                                spec.report, spec.qc, spec.statistics)
    for folder in {spec.folder, *(p.parent for p in paths.values())}:
        export.check_output_dir(folder)
        for line in recover(folder):  # before checking what exists: a killed run undone
            say(f"medseg: {line}")
    export.check_outputs(list(paths.values()), overwrite=spec.overwrite,
                         inputs=[*supports, *labels, target])
    check_model(seg.config, cfg)
    one = len(supports) == 1
    result = seg.segment(supports[0] if one else supports, labels[0] if one else labels, query,
                         cfg)
    with Timer(stage_reporter(seg.progress))("write"):
        paths = result.save(spec.folder, spec.formats, overwrite=spec.overwrite,
                            report=spec.report, qc=spec.qc, protect=[*supports, *labels],
                            statistics=spec.statistics)
    if result.report.random_weights:
        say("WARNING: random-weight SAM2 checkpoint: the masks are meaningless (test model).")
    eng = result.report.engine or {}
    t = result.report.timings_s
    say(f"segmented {len(result.query_frames)} frames on {eng.get('device', 'cpu, no model')} "
        f"in {sum(v for k, v in t.items() if k != 'model_load'):.1f} s")
    for st in result.report.statistics:
        n = st["slices"]
        ext = "absent" if not n else (f"{n} slice{'s' * (n != 1)} ({st['first_slice']}-"
                                      f"{st['last_slice']}, {st['extent_mm']:g} mm)")
        score = "" if st["mean_object_score"] is None else \
            f", mean object score {st['mean_object_score']:+.2f}"
        say(f"  {st['name']}: {st['volume_ml']:.1f} ml, {ext}{score}")
    for p in paths.values():
        out(str(p))  # stdout, one path per line: scripts read these
