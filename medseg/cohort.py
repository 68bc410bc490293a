"""Cohorts: one support, many queries, one model load; resumable; optionally fanned out on Ray.

* :func:`expand_queries` turns what users give (files, DICOM series folders, folders of
  scans, globs, ``.txt``/``.csv`` lists) into a list of queries;
* :class:`CohortRunner` segments them one after another with one :class:`Segmenter`
  (the support read and its bank built once per query grid), reading the next query and
  writing the last one in background threads while the current one computes;
* a failing query is recorded and the others go on; the summary (CSV + JSON) lists every
  query's status, error, frames, seconds, structure volumes, object scores, outputs and,
  with references, Dice and HD95;
* ``resume`` skips queries whose outputs are complete and valid (checked, not just present);
* :func:`run_on_ray` spreads queries over Ray workers (one model load per worker, one GPU
  per worker where there are GPUs); results are those of the serial run.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import export
from ._lazy import lazy_import
from .api import Segmenter
from .config import CohortSpec, ModelConfig, OutputSpec, SegmentConfig, to_dict
from .errors import CohortFailures, InputError, MedsegError, OutputError, UsageError
from .export.transaction import recover
from .io import IMAGE_SUFFIXES
from .io.dicom import is_dicom
from .io.nifti import check_complete
from .labels import find_label_beside
from .pipeline import load_query

metrics = lazy_import("medseg.metrics")
ray = lazy_import("ray", install="pip install 'medseg[ray]'")
torch = lazy_import("torch")

SUMMARY = "cohort_summary"
LIST_SUFFIXES = (".txt", ".csv", ".lst")


# --- which queries ---------------------------------------------------------------------------


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


# --- one query --------------------------------------------------------------------------------


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


def outputs_valid(paths: dict[str, Path]) -> bool:
    """A previous run's outputs are complete: a readable report listing them, each present,
    the labelmap's header and compressed length intact."""
    try:
        rep = json.loads(paths["report"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    listed = {k: Path(v) for k, v in (rep.get("outputs") or {}).items()}
    if not rep.get("medseg_version") or any(listed.get(k) != p for k, p in paths.items()):
        return False
    if any(not p.is_file() or p.stat().st_size == 0 for p in paths.values()):
        return False
    if "nifti" in paths:
        try:
            check_complete(paths["nifti"], "output")
        except InputError:
            return False
    return True


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


def failed_row(query: Path, stem: str, exc: BaseException, seconds: float) -> dict:
    msg = str(exc) if isinstance(exc, MedsegError) else f"{type(exc).__name__}: {exc}"
    return {"query": str(query), "stem": stem, "status": "failed", "error": msg.splitlines()[0]
            if msg else type(exc).__name__, "frames": None, "seconds": round(seconds, 2)}


# --- the serial runner -----------------------------------------------------------------------


class CohortRunner:
    """Segments queries one after another with one model; I/O overlaps the computation."""

    def __init__(self, segmenter: Segmenter, job: Job, verbose: bool = False):
        self.seg, self.job, self.verbose = segmenter, job, verbose

    def run(self, queries: Sequence[Path], stems: Sequence[str] | None = None,
            progress: Callable[[dict], None] | None = None) -> list[dict]:
        """Every query in turn (reading the next and writing the last in the background);
        one summary row per query, in the order of ``queries``."""
        stems = list(stems or output_stems(queries))
        rows: list[dict] = []
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
            todo = [(q, s) for q, s in zip(queries, stems) if not self._done(q, s, rows, progress)]
            pending: Future | None = None
            nxt = reader.submit(self._load, todo[0][0]) if todo else None
            for i, (q, stem) in enumerate(todo):
                loaded, nxt = nxt, reader.submit(self._load, todo[i + 1][0]) \
                    if i + 1 < len(todo) else None
                t0 = time.perf_counter()
                try:
                    res = self._segment(loaded)
                except Exception as exc:  # a failing query is recorded; the others go on
                    self._finish(rows, failed_row(q, stem, exc, time.perf_counter() - t0),
                                 progress, exc)
                    continue
                if pending is not None:
                    self._finish(rows, pending.result(), progress)
                pending = writer.submit(self._save, q, stem, res, t0)
            if pending is not None:
                self._finish(rows, pending.result(), progress)
        order = {s: i for i, s in enumerate(stems)}
        return sorted(rows, key=lambda r: order[r["stem"]])

    def _segment(self, loaded: Future) -> Any:
        query = loaded.result()
        if isinstance(query, BaseException):
            raise query
        one = len(self.job.support) == 1
        return self.seg.segment(self.job.support[0] if one else list(self.job.support),
                                self.job.support_label[0] if one else list(self.job.support_label),
                                query, self.job.config)

    def _done(self, q: Path, stem: str, rows: list, progress) -> bool:
        if self.job.cohort.resume and outputs_valid(self.job.paths(stem)):
            self._finish(rows, {"query": str(q), "stem": stem, "status": "skipped",
                                "error": "outputs complete (resume)"}, progress)
            return True
        return False

    def _load(self, query: Path):
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

    def _finish(self, rows: list, row: dict, progress, exc: BaseException | None = None) -> None:
        if exc is not None and self.verbose:
            traceback.print_exception(exc)
        rows.append(row)
        if progress:
            progress(row)


# --- Ray ---------------------------------------------------------------------------------------


def run_on_ray(model: ModelConfig, job: Job, queries: Sequence[Path], stems: Sequence[str],
               progress: Callable[[dict], None] | None = None) -> list[dict]:
    """The cohort on ``job.cohort.workers`` Ray actors (a local cluster of medseg's own, or
    the one at ``job.cohort.ray_address``)."""
    workers, address = job.cohort.workers, job.cohort.ray_address
    try:
        ray.is_initialized()
    except MedsegError as exc:
        raise MedsegError(f"workers > 1 needs Ray: pip install 'medseg[ray]' (or run with "
                          f"--workers 1); {exc}") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                 include_dashboard=False, logging_level=logging.ERROR,
                 **({} if address else {"num_cpus": max(workers, 1)}))
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        on_gpu = gpus >= 1 and model.device in ("auto", "cuda", "gpu")
        worker_cls = ray.remote(num_gpus=1)(_RayWorker) if on_gpu else ray.remote(_RayWorker)
        threads = None if address or on_gpu else max(1, (os.cpu_count() or 1) // workers)
        actors = [worker_cls.remote(model, job, threads) for _ in range(workers)]
        pool = ray.util.ActorPool(actors)
        rows = []
        for row in pool.map_unordered(lambda a, qs: a.run.remote(*qs), list(zip(queries, stems))):
            rows.append(row)
            if progress:
                progress(row)
        order = {s: i for i, s in enumerate(stems)}
        return sorted(rows, key=lambda r: order[r["stem"]])
    finally:
        if started:
            ray.shutdown()


class _RayWorker:
    """One model per worker process."""

    def __init__(self, model: ModelConfig, job: Job, threads: int | None = None):
        if threads:  # the local machine's cores shared among its workers
            torch.set_num_threads(threads)
        self.runner = CohortRunner(Segmenter(model), job)

    def run(self, query: Path, stem: str) -> dict:
        return self.runner.run([query], [stem])[0]


# --- the summary -------------------------------------------------------------------------------


def write_summary(rows: Sequence[dict], out: Path, meta: dict) -> dict[str, Path]:
    """``cohort_summary.csv`` and ``.json`` in ``out`` (all-or-nothing)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    paths = {"csv": out / f"{SUMMARY}.csv", "json": out / f"{SUMMARY}.json"}

    def write_csv(p: Path) -> None:
        with open(p, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)

    with export.OutputTransaction(overwrite=True) as tx:
        tx.add(paths["csv"], write_csv)
        tx.add(paths["json"], lambda p: export.json_file(p, {**meta, "queries": list(rows)}))
    return paths


def counts(rows: Iterable[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


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


def check_inputs_kept(job: Job, stems: Sequence[str]) -> None:
    """Before any work: no output of the cohort (any query's, or the summary) may replace
    one of its inputs (queries, support, label, references, list files), whatever
    ``--overwrite`` or ``--resume`` say."""
    protected = export.input_files(job.protected)
    outs = [p for st in stems for p in job.paths(st).values()]
    outs += [job.output.folder / f"{SUMMARY}{s}" for s in (".csv", ".json")]
    for p in outs:
        if export.paths._resolve(p, strict=False) in protected:
            raise OutputError(f"{p}: an output of this cohort would replace one of its inputs; "
                              "choose another output folder with -o")


def prepare_cohort(job: Job, queries: Sequence[Path], list_files: Sequence[str] = ()
                   ) -> tuple[Job, list[str]]:
    """Checks before any work (options, outputs, inputs kept) and the job with its
    references and protected inputs; the output stems."""
    if job.output.report:
        raise UsageError("report: in a cohort each query's report is named after it; drop the "
                         "option", option="report")
    if job.qc_dir is not None and job.qc_dir.suffix:
        raise UsageError("qc: in a cohort give a folder for the per-query pictures",
                         option="qc")
    export.check_output_dir(job.output.folder)
    for line in recover(job.output.folder):  # a killed run's set undone before --resume looks
        warnings.warn(line, stacklevel=2)
    stems = output_stems(queries)
    ref = job.cohort.ref
    refs = find_references(Path(ref), stems) if ref else {}
    job = replace(job, references=refs, protected=tuple(str(p) for p in (
        *job.support, *job.support_label, *queries, *refs.values(), *list_files)))
    check_inputs_kept(job, stems)
    if not (job.output.overwrite or job.cohort.resume):
        existing = [str(p) for st in stems for p in job.paths(st).values() if p.exists()]
        if existing:
            raise OutputError(f"output exists: {existing[0]} (and {len(existing) - 1} more); "
                              "pass --resume to skip finished queries or --overwrite")
    return job, stems


def run_cohort(seg: Segmenter, job: Job, queries: Sequence[Path], say: Callable[[str], None],
               verbose: bool = False, list_files: Sequence[str] = (),
               checks: Callable[[], None] = lambda: None) -> list[dict]:
    """The whole cohort as the command line runs it: checks first (``checks`` after the
    outputs'), then every query, then the summary; raises :class:`CohortFailures` (exit 7)
    if any query failed."""
    job, stems = prepare_cohort(job, queries, list_files)
    checks()
    export.prepare_output_dir(job.output.folder)
    if job.qc_dir is not None:
        export.prepare_output_dir(job.qc_dir)
    workers = job.cohort.workers
    say(f"cohort: {len(queries)} queries" + (f" on {workers} Ray workers" if workers > 1 else ""))
    bar = _bar(len(queries), say)
    t0 = time.perf_counter()
    rows = run_on_ray(seg.config, job, queries, stems, bar) if workers > 1 \
        else CohortRunner(seg, job, verbose).run(queries, stems, bar)
    meta = {"support": list(job.support), "support_label": list(job.support_label),
            "config": to_dict(job.config), "workers": workers,
            "seconds": round(time.perf_counter() - t0, 2), "counts": counts(rows)}
    paths = write_summary(rows, job.output.folder, meta)
    n = counts(rows)
    say(f"cohort: {n.get('ok', 0)} segmented, {n.get('skipped', 0)} skipped, "
        f"{n.get('failed', 0)} failed in {meta['seconds']} s; summary {paths['csv']}")
    for r in rows:
        if r["status"] == "failed":
            say(f"  failed {r['query']}: {r['error']}")
    if n.get("failed"):
        raise CohortFailures(f"{n['failed']} of {len(rows)} queries failed (see {paths['csv']})")
    return rows


def _bar(total: int, say: Callable[[str], None]) -> Callable[[dict], None]:
    """One line per finished query (a progress count for long cohorts)."""
    done = [0]

    def update(row: dict) -> None:
        done[0] += 1
        note = f": {row['error']}" if row["status"] == "failed" else ""
        say(f"[{done[0]}/{total}] {row['status']:7s} {row['stem']}{note}")

    return update
