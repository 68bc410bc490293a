"""The benchmark and data scripts run (tiny configurations)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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
               "cpu", "--image-size", "256", "--bank-size", "1", "--repeats", "1", "--out", tmp_path,
               "--tag", "t", "--allocator-ab")
    assert "slices_per_s" in out
    data = json.loads((tmp_path / "speed_t.json").read_text())
    rows = {r["mode"]: r for r in data["rows"]}
    assert set(rows) == {"medseg pair", "medseg volume", "medseg scan", "raw sam2 (its part)",
                         "raw sam2 (end to end)", "raw sam2 scan (end to end)",
                         *(f"medseg {m} (glibc defaults)" for m in ("pair", "volume", "scan"))}
    pair, raw, peer = rows["medseg pair"], rows["raw sam2 (its part)"], \
        rows["raw sam2 (end to end)"]
    # like for like: the same frames run on both sides, stated in every row
    assert pair["frames_run"] == raw["frames_run"] == peer["frames_run"] > 0
    assert rows["medseg scan"]["frames_run"] == rows["raw sam2 scan (end to end)"]["frames_run"]
    assert pair["speedup_vs_raw_part"] == round(raw["total_s"] / pair["total_s"], 3)
    assert pair["speedup_vs_raw_end_to_end"] == round(peer["total_s"] / pair["total_s"], 3)
    assert rows["medseg scan"]["speedup_vs_raw_end_to_end"] == round(
        rows["raw sam2 scan (end to end)"]["total_s"] / rows["medseg scan"]["total_s"], 3)
    assert all(len(r["runs_total_s"]) == 1 for r in rows.values())
    assert pair["peak_rss_mb"] > 100 and raw["raw_propagate_s"] > 0 and pair["propagate_s"] > 0
    assert "machine" in data and (tmp_path / "speed_t.csv").is_file()


def test_quality_benchmark_one_case(tmp_path):
    """One case three ways (one painted slice first, full label with baselines, in-scan on
    both scans) and the corrections curve; corrected slices come back exactly."""
    out = _run(ROOT / "scripts/benchmark_quality.py", "--cases", "mr-brain-tumour",
               "--corrections", "0,1", "--out", tmp_path)
    assert "registration" in out and "one painted slice" in out
    rows = json.loads((tmp_path / "quality.json").read_text())["rows"]
    settings = [r["setting"] for r in rows]
    assert settings[0] == "one painted slice"
    assert {"one painted slice", "full label", "in-scan",
            "corrections from one painted slice"} == set(settings)
    assert {r["method"] for r in rows} == {"copy", "registration", "transfer"}
    corrected = [r for r in rows if r["corrections"] == 1]
    assert corrected and all(r["corrected_exact"] is True for r in corrected)


def test_completion_benchmark_runs(tmp_path):
    out = _run(ROOT / "scripts/benchmark_completion.py", "--candidates",
               "registration,region-growing", "--out", tmp_path)
    assert "mean Dice" in out
    rows = json.loads((tmp_path / "completion.json").read_text())["rows"]
    assert {r["candidate"] for r in rows} == {"registration", "region-growing"}


def test_fetch_example_data():
    out = _run(ROOT / "scripts/fetch_example_data.py")
    assert "ct-liver-spleen" in out and "query_ref" in out


def _abdomen(seed: int, n: int = 24):
    """A synthetic abdomen with liver (6), spleen (1), kidneys (3 left, 2 right), SABS values."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, 48), np.linspace(-1, 1, 48),
                          indexing="ij")
    s = 1 + 0.05 * rng.standard_normal()
    img = np.where((y / 0.8) ** 2 + (x / 0.9) ** 2 < 1, 0.3, 0.0)
    lab = np.zeros(img.shape, np.uint8)
    for v, (cz, cy, cx, r, val) in {6: (0.3, -0.1, -0.4, 0.45, 0.7), 1: (0.4, 0.2, 0.5, 0.25, 0.9),
                                    2: (-0.3, 0.4, -0.3, 0.2, 0.5), 3: (-0.3, 0.4, 0.3, 0.2, 0.6)
                                    }.items():
        m = ((z - cz) / (r * 1.5)) ** 2 + ((y - cy) / (r * s)) ** 2 + ((x - cx) / (r * s)) ** 2 < 1
        img[m] = val
        lab[m] = v
    img = img + 0.02 * rng.standard_normal(img.shape)
    return img.astype(np.float32), lab


def test_protocol_benchmark_on_a_synthetic_dataset(tmp_path):
    from medseg.io import Volume, write_image

    root = tmp_path / "sabs"
    root.mkdir()
    for i in range(6):
        img, lab = _abdomen(i)
        write_image(Volume(img, (3.0, 3.0, 5.0)), root / f"image_{i}.nii.gz")
        write_image(Volume(lab, (3.0, 3.0, 5.0)), root / f"label_{i}.nii.gz")
    out = _run(ROOT / "scripts/benchmark_protocol.py", "--root", root, "--dataset", "sabs",
               "--folds", "2", "--out", tmp_path / "o")
    assert "organ slices (protocol)" in out and "whole volume" in out
    data = json.loads((tmp_path / "o/protocol_sabs_transfer.json").read_text())
    table = data["table"]["dice_protocol"]
    assert set(table) == {"liver", "spleen", "left kidney", "right kidney", "mean"}
    assert table["mean"] > 0.5 and len(data["rows"]) == 6 * 4
