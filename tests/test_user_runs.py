"""What a user sees of a run: stages on a terminal, paths on stdout, statistics, warnings
that say what they get, label names from the files beside a label map, checks before any
work, the Python help."""

import csv
import json
import os
import pty
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest
from conftest import TRANSFER, run_cli, write_case

from medseg import data
from medseg.errors import EXIT_INPUT, EXIT_MODEL
from medseg.io import read_image, write_image

run = run_cli


@pytest.fixture
def case(tmp_path):
    return {k: str(v) for k, v in write_case(tmp_path).items()}


def test_stages_on_a_terminal_and_paths_on_stdout(tmp_path, case):
    """Under a pseudo-terminal every stage says what it is doing and how long it took;
    stdout holds exactly the paths written, one per line."""
    master, slave = pty.openpty()
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "MEDSEG_NO_PROGRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "medseg.cli", "segment", "-s", case["s"],
                             "-l", case["l"], "-i", case["q"], "-o", str(out), *TRANSFER],
                            stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    stdout = proc.communicate(timeout=300)[0].decode()
    seen = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0, text
    for words in ("reading the scans", "relating the query to the support",
                  "placing the support slices", "matching query slices", "writing the outputs"):
        assert f"{words}" in text and " s\r\n" in text, words
    assert stdout.splitlines() == [str(out / n) for n in (
        "q_labels.nii.gz", "q_labels.ctbl", "q.seg.nrrd", "q_report.json")]


def test_statistics_in_report_summary_and_files(tmp_path, case, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", case["q"], "-o",
                             out, *TRANSFER, "--statistics"], capsys)
    assert code == 0, err
    assert str(out / "q_statistics.csv") in stdout.splitlines()
    lab = read_image(out / "q_labels.nii.gz")
    ml = np.prod(lab.spacing) / 1000
    with open(out / "q_statistics.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    js = json.loads((out / "q_statistics.json").read_text())["structures"]
    rep = json.loads((out / "q_report.json").read_text())["statistics"]
    for i, (row, j, r) in enumerate(zip(rows, js, rep)):
        mask = lab.array == i + 1
        assert float(row["volume_ml"]) == pytest.approx(mask.sum() * ml, abs=1e-3)
        assert j["volume_ml"] == r["volume_ml"] == pytest.approx(mask.sum() * ml, abs=1e-3)
        zs = np.flatnonzero(mask.any(axis=(1, 2)))
        assert r["slices"] == len(zs) and (not len(zs) or r["first_slice"] == zs[0])
        assert f"{r['name']}: {r['volume_ml']:.1f} ml" in err


def test_rejected_correspondence_says_what_the_user_gets(tmp_path, capsys):
    """A brain MR support and a chest CT query (real files): the slices cannot be related,
    and the warning says every slice gets a mask and what helps."""
    root = data.fetch(("pyradiomics",), progress=False) / data.PR
    code, _, err = run(["segment", "-s", root / "brain1_image.nrrd", "-l",
                        root / "brain1_label.nrrd", "-i", root / "lung1_image.nrrd", "-o",
                        tmp_path / "out", *TRANSFER], capsys)
    assert code == 0, err
    line = next(ln for ln in err.splitlines() if "could not be related" in ln)
    assert "every query slice gets a mask" in line and "--z-range" in line


def test_evaluate_a_structure_the_reference_lacks(tmp_path, case, capsys):
    lab = read_image(case["l"])
    only_one = lab.with_array((lab.array == 1).astype(np.uint8))
    write_image(only_one, tmp_path / "ref.nii.gz")
    code, _, err = run(["evaluate", "-p", case["l"], "-r", tmp_path / "ref.nii.gz"], capsys)
    assert code == EXIT_INPUT and "2" in err and "--allow-missing" in err, err
    code, out, err = run(["evaluate", "-p", case["l"], "-r", tmp_path / "ref.nii.gz",
                          "--allow-missing"], capsys)
    assert code == 0 and "warning" in err.lower(), err


@pytest.mark.parametrize("kind", ["dataset.json", "msd", "ctbl", "itk-snap", "--label-names"])
def test_label_names_from_the_files_beside_a_label_map(tmp_path, case, capsys, kind):
    """TotalSegmentator/nnU-Net (name -> value) and MSD (value -> name) dataset.json, a
    Slicer colour table, an ITK-SNAP description, or --label-names FILE: --labels takes
    the names and the outputs carry them."""
    label = tmp_path / "labelsTr" / "case.nii.gz"
    label.parent.mkdir()
    os.replace(case["l"], label)
    extra = []
    if kind == "dataset.json":
        (tmp_path / "dataset.json").write_text(json.dumps(
            {"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    elif kind == "msd":
        (tmp_path / "dataset.json").write_text(json.dumps(
            {"labels": {"0": "background", "1": "liver", "2": "spleen"}}))
    elif kind == "ctbl":
        label.with_name("case.ctbl").write_text("0 background 0 0 0 0\n1 liver 200 0 0 255\n"
                                                "2 spleen 0 200 0 255\n")
    elif kind == "itk-snap":
        label.with_name("case.txt").write_text(
            '    0     0    0    0        0  0  0    "Clear Label"\n'
            '    1   200    0    0        1  1  1    "liver"\n'
            '    2     0  200    0        1  1  1    "spleen"\n')
    else:
        names = tmp_path / "names.ctbl"
        names.write_text("1 liver 200 0 0 255\n2 spleen 0 200 0 255\n")
        extra = ["--label-names", names]
    out = tmp_path / "out"
    code, _, err = run(["segment", "-s", case["s"], "-l", label, "-i", case["q"], "-o", out,
                        *TRANSFER, "--labels", "spleen,liver", *extra], capsys)
    assert code == 0, err
    rep = json.loads((out / "q_report.json").read_text())
    assert [s["name"] for s in rep["segments"]] == ["spleen", "liver"]
    assert [s["support_value"] for s in rep["segments"]] == [2, 1]


def test_checks_before_any_work(tmp_path, case, capsys):
    """A missing support is an input error naming it; --device without a model is said;
    a missing checkpoint fails before anything is read and names the weight-free method."""
    code, _, err = run(["segment", "-s", tmp_path / "nope.nii.gz", "-i", case["q"], *TRANSFER],
                       capsys)
    assert code == EXIT_INPUT and "nope.nii.gz: no such file" in err
    code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", case["q"], "-o",
                        tmp_path / "o1", *TRANSFER, "--device", "cuda"], capsys)
    assert code == 0 and "--device cuda has no effect" in err
    code, _, err = run(["-v", "segment", "-s", case["s"], "-l", case["l"], "-i", case["q"],
                        "-o", tmp_path / "o2", "--checkpoint", tmp_path / "none.pt"], capsys)
    assert code == EXIT_MODEL and "--method transfer" in err
    assert "stage load" not in err and not (tmp_path / "o2").exists()


def test_small_things(tmp_path, case):
    """A short Volume repr; the NIfTI labelmap declares the label intent; the MONAI
    transform does not warn about a stale affine."""
    vol = read_image(case["s"])
    assert len(repr(vol)) < 300 and "spacing" in repr(vol)
    from medseg.api import Segmenter

    res = Segmenter().segment(case["s"], case["l"], case["q"], method="transfer", bank_size=1)
    paths = res.save(tmp_path / "out")
    hdr = nib.load(paths["nifti"]).header
    assert int(hdr["intent_code"]) == 1002 and hdr.get_intent()[2] == "label"
    pytest.importorskip("monai")
    from monai.transforms import LoadImaged

    from medseg.transforms import SegmentFromSupportd

    item = LoadImaged("image", image_only=True)({"image": case["q"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = SegmentFromSupportd("image", case["s"], case["l"], method="transfer",
                                  bank_size=1)(item)
    assert got["image_seg"].shape[-3:] == item["image"].shape[-3:]


def test_help_lists_the_public_api():
    import pydoc

    import medseg

    text = pydoc.render_doc(medseg, renderer=pydoc.plaintext)
    for name in ("class Segmenter", "class SegmentConfig", "segment(support", "read_image(",
                 "evaluate_labelmaps("):
        assert name in text, name
    doc = medseg.SegmentConfig.__doc__
    assert "Args:" in doc and "window (str | None):" in doc and "Command line: --window" in doc
    assert "Returns:" in medseg.segment.__doc__ and "Raises:" in medseg.Segmenter.segment.__doc__
