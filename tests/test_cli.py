import json
import subprocess
import sys

import pytest
from conftest import phantom, write_case

from medseg.cli import main
from medseg.errors import EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT, EXIT_RUNTIME, EXIT_USAGE
from medseg.io import Volume, write_image


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_is_light():
    """--help must not import numpy-heavy stacks (torch, sam2, SimpleITK)."""
    code = ("import sys; from medseg.cli import main; rc = main(['--help']); "
            "heavy = [m for m in ('torch', 'sam2', 'SimpleITK', 'monai', 'albumentations') "
            "if m in sys.modules]; print('HEAVY', heavy); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout and "segment" in r.stdout


def test_version_and_info(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith("medseg ")
    code, out, _ = run(["info"], capsys)
    assert code == 0 and "sam2" in out and "checkpoint cache" in out


def test_global_flags_anywhere(capsys):
    code, out, _ = run(["info", "-q"], capsys)
    assert code == 0 and "checkpoint cache" in out


def test_usage_error_exit_code(capsys):
    code, _, err = run(["segment", "--bogus"], capsys)
    assert code == EXIT_USAGE


@pytest.fixture
def label_files(tmp_path):
    img, lab = phantom()
    pred = lab.array.copy()
    pred[pred == 2] = 0  # drop one organ
    p, r = tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz"
    write_image(lab.with_array(pred), p)
    write_image(lab, r)
    return p, r, lab


def test_evaluate(tmp_path, label_files, capsys):
    p, r, _ = label_files
    csv, js, png = tmp_path / "m.csv", tmp_path / "m.json", tmp_path / "d.png"
    code, out, err = run(["evaluate", "--pred", p, "--ref", r, "--csv", csv, "--json", js,
                          "--plot", png], capsys)
    assert code == 0, err
    assert "MONAI" in out and "Dice" in out
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("name,label,dice") and rows[1].startswith("label 1,1,1,")
    assert rows[2].startswith("label 2,2,0,0,inf,inf,0,")
    data = json.loads(js.read_text())
    assert data["labels"][0]["dice"] == 1.0 and data["labels"][1]["hd95_mm"] is None
    assert png.stat().st_size > 5000
    code, _, err = run(["evaluate", "--pred", p, "--ref", r, "--csv", csv], capsys)
    assert code == EXIT_OUTPUT and "--overwrite" in err
    code, out, _ = run(["evaluate", "-p", p, "-r", r, "--labels", "1", "--ref-labels", "1"], capsys)
    assert code == 0


def test_evaluate_geometry_mismatch(tmp_path, label_files, capsys):
    p, _, lab = label_files
    moved = tmp_path / "moved.nii.gz"
    write_image(Volume(lab.array, lab.spacing, (0, 0, 0), lab.direction), moved)
    code, _, err = run(["evaluate", "--pred", p, "--ref", moved], capsys)
    assert code == EXIT_INPUT and "different grids" in err and "origin" in err
    assert "Traceback" not in err


def test_segment_input_errors(tmp_path, capsys):
    f = write_case(tmp_path)
    s, r, q = f["s"], f["l"], f["q"]
    code, _, err = run(["segment", "-s", tmp_path / "nope.nii.gz", "-l", r, "-i", q,
                        "-o", tmp_path / "o"], capsys)
    assert code == EXIT_INPUT and "no such file" in err and "Traceback" not in err
    code, _, err = run(["segment", "-s", s, "-l", r, "-i", q, "-o", tmp_path / "o",
                        "--window", "bad"], capsys)
    assert code == EXIT_USAGE and "--window" in err
    code, _, err = run(["segment", "-s", s, "-l", r, "-i", q, "-o", tmp_path / "o",
                        "--checkpoint", tmp_path / "none.pt", "--matcher", "ncc"], capsys)
    assert code == EXIT_MODEL and "no such file" in err


def test_segment_no_cuda(tmp_path, capsys, monkeypatch, random_checkpoint):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    f = write_case(tmp_path)
    code, _, err = run(["segment", "-s", f["s"], "-l", f["l"], "-i", f["q"], "-o", tmp_path / "o",
                        "--device", "cuda", "--checkpoint", random_checkpoint], capsys)
    assert code == EXIT_RUNTIME and "no CUDA GPU" in err


@pytest.mark.slow
def test_segment_end_to_end(tmp_path, random_checkpoint, capsys):
    files = write_case(tmp_path, (16, 40, 44), (12, 36, 40))
    before = {k: f.read_bytes() for k, f in files.items()}
    out = tmp_path / "out"
    args = ["-q", "segment", "-s", files["s"], "-l", files["l"], "-i", files["q"], "-o", out,
            "--checkpoint", random_checkpoint, "--device", "cpu", "--labels", "1,2",
            "--names", "liver,spleen", "--bank-size", "2", "--qc", out / "qc.png",
            "--report", out / "r.json"]
    code, _, err = run(args, capsys)
    assert code == 0, err
    names = sorted(x.name for x in out.iterdir())
    assert names == ["q.seg.nrrd", "q_labels.ctbl", "q_labels.nii.gz", "qc.png", "r.json"]
    assert {k: f.read_bytes() for k, f in files.items()} == before  # inputs untouched
    code, _, err = run(args, capsys)
    assert code == EXIT_OUTPUT and "--overwrite" in err
    code, _, err = run([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert not [x for x in out.iterdir() if x.name.startswith(".")]  # no temp files left


def test_transfer_method_needs_no_model(tmp_path, capsys, monkeypatch):
    """--method transfer runs without any checkpoint (none is looked for)."""
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "home"))
    files = write_case(tmp_path)
    out = tmp_path / "out"
    code, _, err = run(["segment", "-s", files["s"], "-l", files["l"], "-i", files["q"], "-o", out,
                        "--method", "transfer", "--matcher", "ncc", "--qc", out / "qc.png",
                        "--no-download"], capsys)
    assert code == 0, err
    rep = json.loads((out / "q_report.json").read_text())
    assert rep["engine"] is None and rep["config"]["method"] == "transfer"
    assert (out / "qc.png").stat().st_size > 10_000


@pytest.mark.parametrize("thread", [False, True])
def test_finish_runs_exit_handlers_flushes_and_waits_for_threads(tmp_path, thread):
    """The command's exit skips the interpreter's teardown but not what a normal exit does:
    exit handlers run, buffered output is written, a running thread is waited for."""
    handler, worker = tmp_path / "handler", tmp_path / "worker"
    code = f"""
import atexit, threading, time
from medseg.cli import finish
atexit.register(lambda: open({str(handler)!r}, "w").write("ran"))
def work():
    time.sleep(0.5)
    open({str(worker)!r}, "w").write("done")
if {thread}:
    threading.Thread(target=work).start()
print("buffered", end="")
finish(3)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 3 and p.stdout == "buffered", p.stderr
    assert handler.read_text() == "ran"
    assert worker.exists() == thread
