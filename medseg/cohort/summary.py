"""The cohort summary (``cohort_summary.csv`` and ``.json``): an output like any other.

It is written whatever happens to the run -- every query finished, some failed, the run
interrupted (queries not reached are listed as ``not run``) -- and never replaces an
earlier summary unless asked: ``--overwrite`` replaces it, ``--resume`` merges it (the
rows of queries this run does not list are carried over, the others are this run's).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from .. import export

SUMMARY = "cohort_summary"


def summary_paths(folder: Path) -> dict[str, Path]:
    return {"csv": folder / f"{SUMMARY}.csv", "json": folder / f"{SUMMARY}.json"}


def earlier_rows(folder: Path) -> list[dict]:
    """The rows of the summary already in ``folder`` (none when there is none or it is
    unreadable)."""
    try:
        rows = json.loads(summary_paths(folder)["json"].read_text(encoding="utf-8"))["queries"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("stem"), str)]


def merged(rows: Sequence[dict], earlier: Sequence[dict]) -> list[dict]:
    """An earlier summary's rows for other queries, then this run's."""
    mine = {r["stem"] for r in rows}
    return [r for r in earlier if r["stem"] not in mine] + list(rows)


def not_run(queries: Sequence[Path], stems: Sequence[str], rows: Sequence[dict],
            why: str) -> list[dict]:
    """Rows for the queries a stopped run did not reach."""
    seen = {r["stem"] for r in rows}
    return [{"query": str(q), "stem": s, "status": "not run", "error": why}
            for q, s in zip(queries, stems) if s not in seen]


def write_summary(rows: Sequence[dict], out: Path, meta: dict) -> dict[str, Path]:
    """``cohort_summary.csv`` and ``.json`` in ``out`` (all-or-nothing; the caller decided
    before any work that they may be replaced)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    paths = summary_paths(out)

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
