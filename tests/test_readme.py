"""The README says what is true: its tables are the committed benchmark files', its two
commands are the ones CI runs, and its Python examples run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
sys.path.insert(0, str(ROOT / "scripts"))
import readme_tables  # noqa: E402


def test_tables_are_the_committed_results():
    """Every table block regenerated from ``benchmarks/`` equals the README's."""
    blocks = readme_tables.BLOCK.findall(README)
    assert {name for _, name, _, _ in blocks} == set(readme_tables.TABLES)
    assert readme_tables.render(README) == README, \
        "README tables differ from benchmarks/: run python scripts/readme_tables.py --write"


def test_table_renderer_notices_a_changed_figure(tmp_path, monkeypatch):
    """The check above can fail: a figure changed in a committed file changes the table."""
    import shutil

    bench = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", bench)
    monkeypatch.setattr(readme_tables, "BENCH", bench)
    assert readme_tables.render(README) == README
    csv_file = bench / "quality" / "quality.csv"
    rows = csv_file.read_text().splitlines()
    i = next(n for n, r in enumerate(rows) if r.startswith("one painted slice,"))
    cols = rows[0].split(",")
    cells = rows[i].split(",")
    cells[cols.index("dice")] = "0.123456"
    rows[i] = ",".join(cells)
    csv_file.write_text("\n".join(rows) + "\n")
    assert readme_tables.render(README) != README


def test_the_two_commands_are_the_ones_ci_runs():
    assert "bash scripts/setup.sh && .venv/bin/medseg demo" in README
    assert ".venv/bin/python -m pytest -q" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh" in ci and ".venv/bin/python -m pytest -q" in ci


def test_every_committed_file_the_readme_names_exists():
    for path in re.findall(r"`((?:benchmarks|notebooks|scripts|SlicerMedseg|medseg)/[^`* ]+)`",
                           README):
        assert (ROOT / path.rstrip("/")).exists(), path
    for path in re.findall(r"\]\(((?:notebooks|benchmarks)/[^)]+)\)", README):
        assert (ROOT / path).exists(), path


@pytest.mark.slow
def test_python_examples_run_as_written(tmp_path, random_checkpoint):
    """The README's ``python`` blocks, run in a folder holding the files they name: a CT
    with liver and spleen painted on one slice each (names in the ``.ctbl`` beside), and
    another scan; SAM2 is a tiny random-weight SAM2.1 given as ``MEDSEG_CHECKPOINT``."""
    from conftest import phantom

    from medseg.io import Volume, write_image

    ct, label = phantom(seed=1)
    new, _ = phantom(shape=(20, 36, 44), seed=2)
    painted = np.zeros_like(label.array)
    for value in (1, 2):
        k = int(np.argmax((label.array == value).sum(axis=(1, 2))))
        painted[k][label.array[k] == value] = value
    write_image(ct, tmp_path / "ct.nii.gz")
    write_image(Volume(painted, label.spacing, label.origin, label.direction),
                tmp_path / "ct_painted.nii.gz")
    (tmp_path / "ct_painted.ctbl").write_text("0 background 0 0 0 0\n1 liver 221 130 101 255\n"
                                              "2 spleen 157 108 162 255\n")
    write_image(new, tmp_path / "new.nii.gz")
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 2
    script = "\n\n".join(blocks) + _checks()
    env = {**os.environ, "MEDSEG_CHECKPOINT": str(random_checkpoint), "MEDSEG_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    for name in ("ct_labels.nii.gz", "ct_labels.ctbl", "ct.seg.nrrd", "ct_report.json",
                 "new_labels.nii.gz", "new.seg.nrrd", "new_report.json"):
        assert (out / name).is_file(), name
    assert "CHECKED liver painted slice kept" in r.stdout
    assert "CHECKED MONAI label map" in r.stdout


def _checks() -> str:
    """Lines appended to the README's examples: what they promise, checked."""
    return """
import numpy as _np
from medseg import read_image as _read
_ref = _read("ct_painted.nii.gz").array
_k = int(_np.argmax((_ref == 1).sum(axis=(1, 2))))
assert [e.name for e in res.plan.entries] == ["liver"]
assert (res.labels.array[_k] == (_ref[_k] == 1)).all()
print("CHECKED liver painted slice kept")
assert out["image_seg"].shape[-3:] == out["image"].shape[-3:]
assert _np.allclose(_np.asarray(out["image_seg"].affine), _np.asarray(out["image"].affine))
assert int(out["image_seg"].max()) >= 1
print("CHECKED MONAI label map")
"""


def _committed_numbers() -> list[float]:
    """Every number in the committed benchmark files (CSV cells, JSON values, Markdown)."""
    out: list[float] = []
    for f in (ROOT / "benchmarks").rglob("*"):
        if f.suffix in (".csv", ".json", ".md"):
            out += [float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", f.read_text())]
    return out


def _benchmark_prose() -> str:
    """The README's Benchmarks section without its generated tables and code blocks."""
    text = README[README.index("\n## Benchmarks"):README.index("\n## Layout")]
    text = readme_tables.BLOCK.sub("", text)
    return re.sub(r"```.*?```", "", text, flags=re.S)


def test_every_figure_in_the_benchmarks_section_has_a_committed_source():
    """A number with decimals in the Benchmarks section (prose and hand-written tables) is
    a value of a committed benchmark file, at the precision written."""
    values = _committed_numbers()
    missing = []
    for m in re.finditer(r"(?<![\w.])(\d+\.\d+)(?![\w.])", _benchmark_prose()):
        x, d = m.group(1), len(m.group(1).split(".")[1])
        if not any(f"{v:.{d}f}" == x for v in values):
            missing.append(x)
    assert not missing, f"figures without a committed source: {missing}"
