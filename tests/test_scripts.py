"""The benchmark and data scripts run (tiny configurations)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]


def _run(*args, timeout=900):
    r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_speed_benchmark_tiny(tmp_path):
    out = _run(ROOT / "scripts/benchmark_speed.py", "--sizes", "3", "--hw", "64", "--device",
               "cpu", "--image-size", "256", "--bank-size", "1", "--out", tmp_path, "--tag", "t")
    assert "slices_per_s" in out
    data = json.loads((tmp_path / "speed_t.json").read_text())
    modes = {r["mode"] for r in data["rows"]}
    assert modes == {"pair", "volume", "raw sam2"}
    pair = next(r for r in data["rows"] if r["mode"] == "pair")
    raw = next(r for r in data["rows"] if r["mode"] == "raw sam2")
    assert pair["speedup_vs_raw"] == round(raw["total_s"] / pair["total_s"], 3)
    assert pair["peak_rss_mb"] > 100 and raw["raw_propagate_s"] > 0 and pair["propagate_s"] > 0
    assert "machine" in data and (tmp_path / "speed_t.csv").is_file()


def test_quality_benchmark_one_case(tmp_path):
    out = _run(ROOT / "scripts/benchmark_quality.py", "--cases", "mr-brain-tumour", "--matchers",
               "ncc", "--bank-sizes", "2", "--out", tmp_path)
    assert "registration" in out and "transfer[ncc]" in out
    rows = json.loads((tmp_path / "quality.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"copy", "registration", "transfer[ncc]"}


def test_fetch_example_data():
    out = _run(ROOT / "scripts/fetch_example_data.py")
    assert "ct-liver-spleen" in out and "query_ref" in out
