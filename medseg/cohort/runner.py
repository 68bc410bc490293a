"""One cohort's queries in turn with one model: the shared job, the summary rows, resume
checks and per-query time limits.

Reading the next query and writing the last one overlap the current computation. Every
step of a query runs in a daemon thread the runner waits for with the query's time limit
(``--query-timeout``): a query that overruns -- a read that hangs, a stuck computation, a
write that does not finish -- is recorded as failed, and the runner goes on with a fresh
model (the overrunning thread may still hold the old one; it is abandoned).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import export
from .._lazy import lazy_import
from .._threads import Pending
from ..api import Segmenter
from ..config import CohortSpec, OutputSpec, SegmentConfig
from ..errors import MedsegError
from ..export.verify import check_outputs_done
from ..pipeline import config_record, load_query
from .queries import output_stems

metrics = lazy_import("medseg.metrics")
log = logging.getLogger("medseg.cohort")
Progress = Callable[[dict], None]


@dataclass
class Job:
    """What every query of a cohort shares: the support, the settings, the outputs."""

    support: tuple[str, ...]  # one or more support scans
    support_label: tuple[str, ...]  # their labels, in the same order
    config: SegmentConfig
    output: OutputSpec
    cohort: CohortSpec = field(default_factory=CohortSpec)
    references: dict[str, Path] = field(default_factory=dict)  # stem -> reference label
    protected: tuple[str, ...] = ()  # every input of the run: no output may replace one

    @property
    def qc_dir(self) -> Path | None:
        return self.output.qc

    def paths(self, stem: str) -> dict[str, Path]:
        qc = self.qc_dir / f"{stem}_qc.png" if self.qc_dir else None
        return export.output_paths(self.output.folder, stem, self.output.formats, None, qc,
                                   self.output.statistics)

    def why_redo(self, query: Path, stem: str) -> str | None:
        """Why the query's existing outputs cannot be kept by ``--resume`` (None: they are
        whole, on its grid, from these settings and these inputs)."""
        return check_outputs_done(self.paths(stem), config_record(self.config), {
            "support": self.support, "support_label": self.support_label, "query": query})


def summary_row(query: Path, stem: str, res: Any, seconds: float, paths: dict[str, Path],
                reference: Path | None) -> dict:
    """The summary line of a finished query."""
    vox_ml = float(np.prod(res.labels.spacing)) / 1000.0
    row: dict[str, Any] = {"query": str(query), "stem": stem, "status": "ok", "error": "",
                           "frames": len(res.query_frames), "seconds": round(seconds, 2)}
    for e in res.plan:
        row[f"volume_ml[{e.name}]"] = round(int(np.count_nonzero(res.labels.array ==
                                                                 e.output_value)) * vox_ml, 3)
        scores = res.object_scores[:, e.output_value - 1] if res.object_scores is not None \
            else np.array([np.nan])
        row[f"mean_object_score[{e.name}]"] = None if np.isnan(scores).all() else \
            round(float(np.nanmean(scores)), 4)
    if reference is not None and "nifti" in paths:
        ev = metrics.evaluate_files(paths["nifti"], reference)
        for s, n in zip(ev.scores, ev.names):
            row[f"dice[{n}]"], row[f"hd95_mm[{n}]"] = round(s.dice, 4), round(s.hd95_mm, 3)
    row["outputs"] = ";".join(str(p) for p in paths.values())
    return row


def failed_row(query: Path, stem: str, exc: BaseException | str, seconds: float) -> dict:
    """The summary line of a query that failed (``exc``: the error or what happened)."""
    msg = exc if isinstance(exc, str) else str(exc) if isinstance(exc, MedsegError) else \
        f"{type(exc).__name__}: {exc}"
    return {"query": str(query), "stem": stem, "status": "failed", "error": msg.splitlines()[0]
            if msg else type(exc).__name__, "frames": None, "seconds": round(seconds, 2)}


def in_background(fn: Callable[..., Any], *args: Any) -> Pending:
    """``fn(*args)`` in a daemon thread (see :class:`~medseg._threads.Pending`)."""
    return Pending(fn, *args, name="medseg-cohort")


class QueryTimeout(Exception):
    """A query ran past ``--query-timeout``."""


class CohortRunner:
    """Segments queries one after another with one model; I/O overlaps the computation."""

    def __init__(self, segmenter: Segmenter, job: Job, verbose: bool = False):
        self.seg, self.job, self.verbose = segmenter, job, verbose
        self.timeout = job.cohort.query_timeout

    def run(self, queries: Sequence[Path], stems: Sequence[str] | None = None,
            progress: Progress | None = None) -> list[dict]:
        """Every query in turn (reading the next and writing the last in the background);
        one summary row per query, in the order of ``queries``."""
        stems = list(stems or output_stems(queries))
        rows: list[dict] = []
        todo = [(q, s) for q, s in zip(queries, stems) if not self._done(q, s, rows, progress)]
        pending: tuple[Pending, Path, str, float] | None = None
        nxt = in_background(self._load, todo[0][0]) if todo else None
        try:
            for i, (q, stem) in enumerate(todo):
                loaded = nxt
                nxt = in_background(self._load, todo[i + 1][0]) if i + 1 < len(todo) else None
                t0 = time.perf_counter()
                try:
                    res = self._wait(in_background(self._segment, loaded, t0), t0)
                except Exception as exc:  # a failing query is recorded; the others go on
                    self._failed(rows, q, stem, exc, t0, progress)
                    continue
                if pending is not None:
                    self._collect(rows, pending, progress)
                pending = (in_background(self._save, q, stem, res, t0), q, stem, t0)
        finally:  # also on Ctrl-C: the last query's write finishes and is counted
            if pending is not None:
                self._collect(rows, pending, progress)
        order = {s: i for i, s in enumerate(stems)}
        return sorted(rows, key=lambda r: order[r["stem"]])

    def _wait(self, fut: Pending, t0: float) -> Any:
        """The step's result within what is left of the query's time limit."""
        left = None if self.timeout is None else max(0.0, self.timeout - (time.perf_counter()
                                                                            - t0))
        try:
            return fut.result(timeout=left)
        except TimeoutError:
            raise QueryTimeout(f"no result within --query-timeout {self.timeout:g} s; "
                               "recorded as failed, the rest went on") from None

    def _segment(self, loaded: Pending, t0: float) -> Any:
        query = self._wait(loaded, t0)
        if isinstance(query, BaseException):
            raise query
        one = len(self.job.support) == 1
        return self.seg.segment(self.job.support[0] if one else list(self.job.support),
                                self.job.support_label[0] if one else list(self.job.support_label),
                                query, self.job.config)

    def _failed(self, rows: list, q: Path, stem: str, exc: Exception, t0: float,
                progress: Progress | None) -> None:
        if isinstance(exc, QueryTimeout):  # the overrunning thread keeps the old model
            self.seg = Segmenter(self.seg.config, progress=self.seg.progress)
        self._finish(rows, failed_row(q, stem, exc, time.perf_counter() - t0), progress, exc)

    def _collect(self, rows: list, pending: tuple[Pending, Path, str, float],
                 progress: Progress | None) -> None:
        fut, q, stem, t0 = pending
        try:
            row = self._wait(fut, t0)
        except QueryTimeout as exc:
            row = failed_row(q, stem, f"writing: {exc}", time.perf_counter() - t0)
        self._finish(rows, row, progress)

    def _done(self, q: Path, stem: str, rows: list, progress: Progress | None) -> bool:
        """With ``--resume``: the query's outputs are kept when whole and its own."""
        if not self.job.cohort.resume or not self.job.paths(stem)["report"].exists():
            return False
        why = self.job.why_redo(q, stem)
        if why is not None:
            log.info("%s: redone (%s)", stem, why)
            return False
        self._finish(rows, {"query": str(q), "stem": stem, "status": "skipped",
                            "error": "outputs complete (resume)"}, progress)
        return True

    def _load(self, query: Path) -> Any:
        """The query volume, read in the background (an error travels with its query)."""
        try:
            return load_query(query, self.job.config)
        except Exception as exc:
            return exc

    def _save(self, q: Path, stem: str, res: Any, t0: float) -> dict:
        out = self.job.output
        try:
            paths = res.save(out.folder, out.formats, overwrite=out.overwrite
                             or self.job.cohort.resume, stem=stem,
                             qc=self.job.paths(stem).get("qc"), protect=self.job.protected,
                             statistics=out.statistics)
            return summary_row(q, stem, res, time.perf_counter() - t0, paths,
                               self.job.references.get(stem))
        except Exception as exc:
            return failed_row(q, stem, exc, time.perf_counter() - t0)

    def _finish(self, rows: list, row: dict, progress: Progress | None,
                exc: BaseException | None = None) -> None:
        if exc is not None and self.verbose and not isinstance(exc, QueryTimeout):
            traceback.print_exception(exc)
        rows.append(row)
        if progress:
            progress(row)
