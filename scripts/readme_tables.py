"""The README's benchmark tables, written from the committed results (never by hand).

    python scripts/readme_tables.py            # print every table
    python scripts/readme_tables.py --write    # replace them in README.md

Each table sits in README.md between ``<!-- table: NAME -->`` and ``<!-- /table -->``;
``tests/test_readme.py`` regenerates every one from ``benchmarks/`` and fails when the
README differs, so a figure in a table is always the committed file's.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- table: ([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _f(value: str | float | None, digits: int = 3) -> str:
    if value in (None, ""):
        return "—"
    v = float(value)
    return "—" if v != v else f"{v:.{digits}f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _held(r: dict) -> str:
    return " (held out)" if r.get("held_out") == "True" else ""


# --- quality --------------------------------------------------------------------------------------


def quality() -> str:
    """Per case and structure: one painted slice, the full label and the baselines, and the
    query scan segmented from one painted slice of its own reference (whole-volume Dice)."""
    rows = _rows(BENCH / "quality" / "quality.csv")
    get = {(r["setting"], r["case"], r["label"], r["method"], r["corrections"]): r for r in rows}
    out = []
    for r in rows:
        if r["setting"] != "one painted slice" or r["method"] != "transfer":
            continue
        c, lab = r["case"], r["label"]
        full = get.get(("full label", c, lab, "transfer", "0"), {})
        scan = get.get(("in-scan", f"{c}:query", lab, "transfer", "0"), {})
        out.append([f"`{c}`{_held(r)}", lab, f"**{_f(r['dice'])}**", _f(r["extent_ratio"], 2),
                    _f(full.get("dice")), _f(get.get(("full label", c, lab, "copy", "0"),
                                                     {}).get("dice")),
                    _f(get.get(("full label", c, lab, "registration", "0"), {}).get("dice")),
                    _f(scan.get("dice"))])
    return _table(["case", "structure", "one painted slice", "its extent ratio",
                   "full label", "copy (full label)", "registration (full label)",
                   "in-scan (query scan)"], out)


def in_scan() -> str:
    """The painted scan itself, from one painted slice: every support scan and the held-out
    scan cases (the query scans are in the quality table's last column)."""
    rows = [r for r in _rows(BENCH / "quality" / "quality.csv")
            if r["setting"] == "in-scan" and r["method"] == "transfer"
            and r["corrections"] == "0" and not r["case"].endswith(":query")]
    out = [[f"`{r['case']}`{_held(r)}", r["label"], f"**{_f(r['dice'])}**",
            _f(r["extent_ratio"], 2), _f(r["hd95_mm"], 1)] for r in rows]
    return _table(["scan", "structure", "Dice", "extent ratio", "HD95 (mm)"], out)


def _curve(setting: str, scans: Callable[[dict], bool]) -> tuple[list[list[str]], list[int]]:
    rows = [r for r in _rows(BENCH / "quality" / "quality.csv")
            if r["setting"] == setting and r["method"] == "transfer" and scans(r)]
    ks = sorted({int(r["corrections"]) for r in rows})
    by: dict[tuple[str, str], dict[int, dict]] = {}
    for r in rows:
        by.setdefault((r["case"], r["label"]), {})[int(r["corrections"])] = r
    out = []
    for (case, label), per in by.items():
        exact = {per[k].get("corrected_exact") for k in ks if k and k in per} - {"", None}
        out.append([f"`{case}`{_held(per[ks[0]])}", label, *(_f(per.get(k, {}).get("dice"))
                                                            for k in ks),
                    "yes" if exact == {"True"} else "no" if exact else "—"])
    return out, ks


def corrections() -> str:
    """Whole-volume Dice after 0, 1, 2, 4 corrected slices, on another scan (from one
    painted slice of the support) and on the painted scan itself."""
    cross, ks = _curve("corrections from one painted slice", lambda r: True)
    scan, ks2 = _curve("in-scan", lambda r: True)
    head = ["scan", "structure", *(f"{k} corrected" for k in ks), "corrected slices kept"]
    text = "Another scan, from one painted slice of the support:\n\n" + _table(head, cross)
    head2 = ["scan", "structure", *(f"{k} corrected" for k in ks2), "corrected slices kept"]
    return text + "\nThe painted scan itself (in-scan):\n\n" + _table(head2, scan)


def quality_means() -> str:
    """Mean whole-volume Dice per setting, on the cases that set medseg's thresholds and on
    the held-out ones (the means the quality file states)."""
    means = json.loads((BENCH / "quality" / "quality.json").read_text())["means"]
    out = []
    for setting, method in (("one painted slice", "transfer"), ("full label", "transfer"),
                            ("full label", "copy"), ("full label", "registration"),
                            ("in-scan", "transfer")):
        line = [setting, method]
        for part in ("first cases", "held out"):
            m = means.get(f"{setting} / {method} / {part}")
            line.append(f"{m['mean_dice']:.3f} ({m['n']})" if m else "—")
        out.append(line)
    return _table(["setting", "method", "mean Dice, first cases (n)",
                   "mean Dice, held out (n)"], out)


def completion() -> str:
    """The completion candidates: mean whole-volume Dice and extent ratio per candidate."""
    rows = _rows(BENCH / "completion" / "completion.csv")
    out = []
    for cand in dict.fromkeys(r["candidate"] for r in rows):
        line = [f"`{cand}`"]
        for held in ("False", "True"):
            sel = [r for r in rows if r["candidate"] == cand and r["held_out"] == held]
            dice = [float(r["dice"]) for r in sel if r["dice"] not in ("", "nan")]
            ext = [float(r["extent_ratio"]) for r in sel if r["extent_ratio"] not in ("", "nan")]
            line += [f"{statistics.fmean(dice):.3f}" if dice else "—",
                     f"{statistics.median(ext):.2f}" if ext else "—", str(len(dice))]
        out.append(line)
    return _table(["candidate", "Dice, first cases", "extent ratio (median)", "n",
                   "Dice, held out", "extent ratio (median)", "n"], out)


# --- speed and cohorts ------------------------------------------------------------------------------


def speed() -> str:
    """The like-for-like CPU speed table (medians of interleaved repeats)."""
    meta = json.loads((BENCH / "speed" / "speed_cpu-256.json").read_text())
    out = []
    for r in meta["rows"]:
        out.append([str(r["slices"]), r["mode"], str(r.get("frames_run", "—")),
                    _f(r["total_s"], 1), _f(r.get("cpu_s"), 1), _f(r["slices_per_s"], 2),
                    "—" if r.get("speedup_vs_raw_part") is None else
                    f"{r['speedup_vs_raw_part']:.2f}×",
                    "—" if r.get("speedup_vs_raw_end_to_end") is None else
                    f"{r['speedup_vs_raw_end_to_end']:.2f}×",
                    _f(_sam2_stage(r), 1), _f(r.get("peak_rss_mb"), 0)])
    return _table(["slices", "run", "frames run", "seconds", "CPU seconds", "slices/s",
                   "vs raw sam2's part",
                   "vs raw sam2 end to end", "matching + SAM2 (s)", "peak RAM (MB)"], out)


def _sam2_stage(r: dict) -> float | None:
    """The seconds of the image encoder and SAM2 in a row: medseg's matching (which runs
    the encoder) and propagation, its completion on the painted scan, or raw
    ``propagate_in_video``."""
    if r["mode"].startswith("raw"):
        return r.get("raw_propagate_s")
    if r["mode"] == "medseg scan":
        return r.get("complete_s")
    return (r.get("match_s") or 0.0) + (r.get("propagate_s") or 0.0)


def speed_stages() -> str:
    """Where medseg's time goes at 100 slices (``pair``), from its report."""
    meta = json.loads((BENCH / "speed" / "speed_cpu-256.json").read_text())
    rows = [r for r in meta["rows"] if r["slices"] == 100 and r["mode"] in
            ("medseg pair", "raw sam2 (its part)", "raw sam2 (end to end)")]
    keys = [("load_s", "read the scans"), ("frames_s", "frames"), ("locate_s", "locate"),
            ("support_s", "support, bank"), ("model_load_s", "model build (in the background)"),
            ("propagate_s", "matching + SAM2"), ("write_s", "write"),
            ("raw_build_s", "build"), ("raw_init_state_s", "init_state (reads the JPEGs)"),
            ("raw_read_frames_s", "read NIfTI, write JPEGs"),
            ("raw_propagate_s", "propagate_in_video")]
    out = []
    for r in rows:
        parts = [f"{label} {float(r[k]):.2f}" for k, label in keys if r.get(k) is not None]
        out.append([r["mode"], _f(r["total_s"], 1), "; ".join(parts)])
    return _table(["run (100 slices)", "seconds", "stages (s)"], out)


def speed_h100() -> str:
    """The H100 rows of an earlier engine and script (``benchmarks/speed/h100-7b8c5b5/``,
    its ``NOTE.md`` says what differs)."""
    folder = BENCH / "speed" / "h100-7b8c5b5"
    metas = [json.loads((folder / f"speed_{tag}.json").read_text()) for tag in
             ("nvidia-h100-80gb-hbm3", "h100-1000", "h100-bs1", "h100-bs32")]
    raw = {r["slices"]: r["raw_frames_per_s"] for m in metas for r in m["rows"]
           if r["mode"] == "raw"}
    out = []
    for meta in metas:
        batch = str(meta["args"]["batch_size"])
        for r in meta["rows"]:
            if r["mode"] == "raw":
                continue
            sam2 = r["propagate_s"] + r.get("match_s", 0.0)
            out.append([str(r["slices"]), r["mode"], batch, _f(r["total_s"], 1),
                        _f(r["slices_per_s"], 1), _f(sam2, 1),
                        _f(raw.get(r["slices"]), 1), _f(r["peak_gpu_mb"], 0)])
    return _table(["slices", "mode", "batch", "medseg (s)", "slices/s",
                   "matching + SAM2 (s)", "raw sam2 propagate, frames/s", "peak GPU (MB)"], out)


TABLES: dict[str, Callable[[], str]] = {
    "quality": quality, "quality-means": quality_means, "in-scan": in_scan,
    "corrections": corrections,
    "completion": completion, "speed": speed, "speed-stages": speed_stages,
    "speed-h100": speed_h100,
}


def render(text: str) -> str:
    """README text with every table block regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + TABLES[m.group(2)]() + m.group(4), text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="update README.md in place")
    args = ap.parse_args()
    if args.write:
        README.write_text(render(README.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"updated {README}")
        return
    for name, fn in TABLES.items():
        print(f"<!-- table: {name} -->\n{fn()}<!-- /table -->\n")


if __name__ == "__main__":
    main()
