"""Cohorts: one support, many queries, one model load; resumable; optionally on Ray.

* :mod:`~medseg.cohort.queries` -- files, DICOM folders, folders, globs and lists into
  queries; collision-free output stems; references named like the queries;
* :mod:`~medseg.cohort.runner` -- the queries in turn with one :class:`~medseg.Segmenter`
  (reading and writing overlap the computation), per-query time limits, ``--resume``
  keeping only outputs that are whole and made from the same settings and inputs;
* :mod:`~medseg.cohort.cluster` -- Ray workers (a cluster of medseg's own, or a named one),
  lost queries retried;
* :mod:`~medseg.cohort.summary` -- ``cohort_summary.csv``/``.json``, always written.

:func:`run_cohort` is the whole cohort as the command line runs it: every check before any
work (no output may replace an input; outputs and summary not replaced without
``--overwrite``/``--resume``; a named Ray cluster reachable), then the queries, then the
summary -- also when the run is interrupted or a query fails.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from .. import export
from ..api import Segmenter
from ..config import to_dict
from ..errors import CohortFailures, OutputError, UsageError
from ..export.transaction import recover
from .cluster import check_reachable, run_on_ray
from .queries import expand_queries, find_references, list_files, output_stems
from .runner import CohortRunner, Job, failed_row, summary_row
from .summary import SUMMARY, counts, earlier_rows, merged, not_run, summary_paths, write_summary

__all__ = ["SUMMARY", "CohortRunner", "Job", "check_inputs_kept", "counts", "expand_queries",
           "failed_row", "list_files", "output_stems", "prepare_cohort", "run_cohort",
           "run_on_ray", "summary_row", "write_summary"]

Say = Callable[[str], None]


def check_inputs_kept(job: Job, stems: Sequence[str]) -> None:
    """Before any work: no output of the cohort (any query's, or the summary) may replace
    one of its inputs (queries, support, label, references, list files), whatever
    ``--overwrite`` or ``--resume`` say."""
    protected = export.input_files(job.protected)
    outs = [p for st in stems for p in job.paths(st).values()]
    outs += list(summary_paths(job.output.folder).values())
    for p in outs:
        if export.paths._resolve(p, strict=False) in protected:
            raise OutputError(f"{p}: an output of this cohort would replace one of its inputs; "
                              "choose another output folder with -o")


def _check_existing(job: Job, stems: Sequence[str]) -> None:
    """Outputs and a summary already there are replaced only with --overwrite (--resume:
    kept when valid, the summary merged)."""
    if job.output.overwrite or job.cohort.resume:
        return
    existing = [str(p) for st in stems for p in job.paths(st).values() if p.exists()]
    existing += [str(p) for p in summary_paths(job.output.folder).values() if p.exists()]
    if existing:
        raise OutputError(f"output exists: {existing[0]} (and {len(existing) - 1} more); "
                          "pass --resume to keep finished queries (the summary is merged) "
                          "or --overwrite, or choose another folder with -o")


def prepare_cohort(job: Job, queries: Sequence[Path], lists: Sequence[str] = ()
                   ) -> tuple[Job, list[str]]:
    """Checks before any work (options, a named Ray cluster, outputs, inputs kept) and the
    job with its references and protected inputs; the output stems."""
    if job.output.report:
        raise UsageError("report: in a cohort each query's report is named after it; drop the "
                         "option", option="report")
    if job.qc_dir is not None and job.qc_dir.suffix:
        raise UsageError("qc: in a cohort give a folder for the per-query pictures",
                         option="qc")
    if job.cohort.workers > 1:
        check_reachable(job.cohort.ray_address)
    export.check_output_dir(job.output.folder)
    for line in recover(job.output.folder):  # a killed run's set undone before --resume looks
        warnings.warn(line, stacklevel=2)
    stems = output_stems(queries)
    ref = job.cohort.ref
    refs = find_references(Path(ref), stems) if ref else {}
    job = replace(job, references=refs, protected=tuple(str(p) for p in (
        *job.support, *job.support_label, *queries, *refs.values(), *lists)))
    check_inputs_kept(job, stems)
    _check_existing(job, stems)
    return job, stems


def run_cohort(seg: Segmenter, job: Job, queries: Sequence[Path], say: Say,
               verbose: bool = False, lists: Sequence[str] = (),
               checks: Callable[[], None] = lambda: None) -> list[dict]:
    """The whole cohort as the command line runs it: checks first (``checks`` after the
    outputs'), then every query, then the summary (also when interrupted); raises
    :class:`CohortFailures` (exit 7) if any query failed."""
    job, stems = prepare_cohort(job, queries, lists)
    checks()
    earlier = earlier_rows(job.output.folder) if job.cohort.resume else []
    export.prepare_output_dir(job.output.folder)
    if job.qc_dir is not None:
        export.prepare_output_dir(job.qc_dir)
    workers = job.cohort.workers
    say(f"cohort: {len(queries)} queries" + (f" on {workers} Ray workers" if workers > 1 else ""))
    rows: list[dict] = []
    bar = _bar(len(queries), say, rows)
    t0 = time.perf_counter()
    try:
        rows[:] = run_on_ray(seg.config, job, queries, stems, bar) if workers > 1 \
            else CohortRunner(seg, job, verbose).run(queries, stems, bar)
    except BaseException as exc:  # interrupted, or a bug: what finished is summarised
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else \
            f"the run stopped ({type(exc).__name__})"
        _summarise(job, [*rows, *not_run(queries, stems, rows, why)], earlier, t0, say)
        raise
    paths, n = _summarise(job, rows, earlier, t0, say)
    if n.get("failed"):
        raise CohortFailures(f"{n['failed']} of {len(rows)} queries failed (see {paths['csv']})")
    return rows


def _summarise(job: Job, rows: list[dict], earlier: list[dict], t0: float, say: Say
               ) -> tuple[dict[str, Path], dict[str, int]]:
    n, listed = counts(rows), merged(rows, earlier)
    meta = {"support": list(job.support), "support_label": list(job.support_label),
            "config": to_dict(job.config), "workers": job.cohort.workers,
            "seconds": round(time.perf_counter() - t0, 2), "counts": counts(listed),
            "carried_over": len(listed) - len(rows)}
    paths = write_summary(listed, job.output.folder, meta)
    say(f"cohort: {n.get('ok', 0)} segmented, {n.get('skipped', 0)} skipped, "
        f"{n.get('failed', 0)} failed" + (f", {n['not run']} not run" if n.get("not run") else "")
        + f" in {meta['seconds']} s; summary {paths['csv']}")
    for r in rows:
        if r["status"] == "failed":
            say(f"  failed {r['query']}: {r['error']}")
    return paths, n


def _bar(total: int, say: Say, rows: list[dict]) -> Callable[[dict], None]:
    """One line per finished query (a progress count for long cohorts); the rows so far
    kept in ``rows`` (what an interrupted run summarises)."""

    def update(row: dict) -> None:
        rows.append(row)
        note = f": {row['error']}" if row["status"] == "failed" else ""
        say(f"[{len(rows)}/{total}] {row['status']:7s} {row['stem']}{note}")

    return update
