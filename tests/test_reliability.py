"""Bad inputs and faults, one test per reported defect (numbers: the reliability list in
the README's 'Errors and exit codes')."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TRANSFER, phantom, run_cli, write_case, write_dicom_series
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg.errors import (
    EXIT_INPUT,
    EXIT_MODEL,
    EXIT_OUTPUT,
    EXIT_RUNTIME,
    EXIT_TERMINATED,
    EXIT_USAGE,
    InputError,
    ModelError,
)
from medseg.io import Volume, read_image, write_image

run = run_cli


@pytest.fixture
def case(tmp_path):
    return write_case(tmp_path)


def three_labels(tmp_path):
    """Labels 5 and 1 share their largest slice; 7 has its own."""
    img, _ = phantom(shape=(10, 32, 36), direction=np.eye(3), seed=3)
    lab = np.zeros(img.shape, np.int32)
    lab[4, 5:15, 5:15] = 5
    lab[3, 5:9, 5:9] = 5
    lab[4, 18:28, 20:30] = 1
    lab[7, 10:25, 10:30] = 7
    s, label = tmp_path / "s.nii.gz", tmp_path / "s_label.nii.gz"
    write_image(img, s)
    write_image(img.with_array(lab), label)
    return s, label


def test_1_names_and_colours_follow_their_values(tmp_path, case, capsys):
    s, label = three_labels(tmp_path)
    out = tmp_path / "o"
    code, _, err = run(["segment", "-s", s, "-l", label, "-i", case["q"], "-o", out, *TRANSFER,
                        "--labels", "5,1,7", "--names", "five,one,seven"], capsys)
    assert code == 0, err
    hdr = nrrd.read_header(str(out / "q.seg.nrrd"))
    by_value = {hdr[f"Segment{i}_LabelValue"]: hdr[f"Segment{i}_Name"] for i in range(3)}
    assert by_value == {"1": "five", "2": "one", "3": "seven"}
    ctbl = (out / "q_labels.ctbl").read_text().splitlines()[2:]
    assert [ln.split()[:2] for ln in ctbl] == [["1", "five"], ["2", "one"], ["3", "seven"]]
    rep = json.loads((out / "q_report.json").read_text())
    assert [(x["output_value"], x["support_value"], x["name"]) for x in rep["segments"]] == \
        [(1, 5, "five"), (2, 1, "one"), (3, 7, "seven")]
    groups = rep["support_groups"]
    assert [g["outputs"] for g in groups] == [[1, 2], [3]]


def test_2_uid_names_are_safe(tmp_path, case, capsys):
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001." + "105756658031515062000744821260" * 7
    q = tmp_path / f"{uid}.mhd"
    sitk.WriteImage(sitk.ReadImage(str(case["q"])), str(q))
    out = tmp_path / "o"
    code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", q, "-o", out,
                        *TRANSFER], capsys)
    assert code == 0, err
    names = [p.name for p in out.iterdir()]
    assert len(names) == 4 and all(len(n.encode()) < 160 for n in names)
    assert not [n for n in names if n.startswith(".")]


def test_3_truncated_uncompressed_nifti_under_gz_name(tmp_path):
    img, _ = phantom()
    raw = tmp_path / "raw.nii"
    write_image(img, raw, compress=False)
    liar = tmp_path / "liar.nii.gz"
    liar.write_bytes(raw.read_bytes()[: raw.stat().st_size * 2 // 3])
    with pytest.raises(InputError, match="truncated"):
        read_image(liar)
    whole = tmp_path / "whole.nii.gz"
    whole.write_bytes(raw.read_bytes())  # complete, just misnamed: fine
    assert read_image(whole) == img


def test_4_overwrite_with_a_folder_in_the_way(tmp_path, case, capsys):
    out = tmp_path / "o"
    args = ["segment", "-s", case["s"], "-l", case["l"], "-i", case["q"], "-o", out, *TRANSFER]
    assert run(args, capsys)[0] == 0
    before = (out / "q_labels.nii.gz").read_bytes()
    (out / "q.seg.nrrd").unlink()
    (out / "q.seg.nrrd").mkdir()
    code, _, err = run([*args, "--overwrite"], capsys)
    assert code == EXIT_OUTPUT and "is a folder" in err
    assert (out / "q_labels.nii.gz").read_bytes() == before  # earlier results kept


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.sampled_from([256, 300, 1000, 65535, 2**31 - 1]))
def test_6_any_label_value(tmp_path, case, value):
    from medseg.api import Segmenter

    lab = read_image(case["l"])
    arr = np.where(lab.array == 1, value, 0).astype(np.int64 if value > 65535 else np.int32)
    p = tmp_path / f"l{value}.nii.gz"
    write_image(lab.with_array(arr), p)
    res = Segmenter(progress=False).segment(case["s"], p, case["q"], method="transfer",
                                            bank_size=1)
    assert res.plan.support_values == [value] and res.labels.array.max() == 1


def _dicom_series(folder, n=20, drop=None):
    vol = Volume(np.random.default_rng(0).integers(0, 200, (n, 16, 16)).astype(np.int16),
                 spacing=(0.7, 0.7, 2.0))
    return write_dicom_series(folder, vol, skip=drop)


def test_7_dicom_series_with_a_missing_slice(tmp_path):
    assert read_image(_dicom_series(tmp_path / "ok")).shape[0] == 20
    with pytest.raises(InputError, match="not evenly spaced.*missing"):
        read_image(_dicom_series(tmp_path / "gap", drop=9))


def test_8_unicode_names_round_trip_and_control_characters_refused(tmp_path, case, capsys):
    out = tmp_path / "o"
    args = ["segment", "-s", case["s"], "-l", case["l"], "-i", case["q"], "-o", out, *TRANSFER,
            "--labels", "1,2"]
    code, _, err = run([*args, "--names", "Leber ü,脾臓"], capsys)
    assert code == 0, err
    rep = json.loads((out / "q_report.json").read_text(encoding="utf-8"))
    assert [s["name"] for s in rep["segments"]] == ["Leber ü", "脾臓"]
    code, _, err = run([*args, "--names", "liver\nSegment9_Name:=evil,spleen", "--overwrite"],
                       capsys)
    assert code == EXIT_USAGE and "control character" in err


def test_9_empty_checkpoint_is_removed_from_the_cache(tmp_path):
    from medseg.checkpoints import validate_checkpoint

    p = tmp_path / "sam2.1_hiera_tiny.pt"
    p.write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        validate_checkpoint(p, "tiny", from_cache=True)
    assert not p.exists()


def test_10_sigterm_while_writing_leaves_nothing(tmp_path, case):
    out = tmp_path / "o"
    code = textwrap.dedent(f"""
        import os, signal, sys
        import medseg.cli as cli, medseg.export.seg_nrrd as writer
        real = writer.seg_nrrd
        def slow(*a, **k):
            real(*a, **k)
            os.kill(os.getpid(), signal.SIGTERM)
        writer.seg_nrrd = slow
        signal.signal(signal.SIGTERM, cli._on_sigterm)
        sys.exit(cli.main({[str(x) for x in ["segment", "-s", case["s"], "-l", case["l"], "-i",
                                               case["q"], "-o", out, "--format",
                                               "seg.nrrd,nifti", *TRANSFER]]!r}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_TERMINATED, r.stderr
    assert "terminated; no partial output" in r.stderr
    assert list(out.iterdir()) == []
    assert signal.SIGTERM  # the handler is the one the console script installs


def test_11_outputs_never_collide(tmp_path, case, capsys):
    base = ["segment", "-s", case["s"], "-l", case["l"], "-i", case["q"], "-o", tmp_path / "o",
            *TRANSFER]
    code, _, err = run([*base, "--report", tmp_path / "o" / "q_labels.nii.gz"], capsys)
    assert code == EXIT_USAGE and "also the nifti output" in err
    code, _, err = run([*base, "--labels", "1,1"], capsys)
    assert code == EXIT_USAGE and "listed twice" in err
    code, _, err = run([*base, "--qc", tmp_path / "qc.jpg"], capsys)
    assert code == EXIT_USAGE and "PNG, PDF or SVG" in err
    code, _, err = run([*base, "--qc", tmp_path / "qc.svg"], capsys)
    assert code == 0 and (tmp_path / "qc.svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")


@pytest.mark.parametrize("extra,code_,text", [
    (["--image-size", "100"], EXIT_USAGE, "multiple of 32"),
    (["--image-size", "-16"], EXIT_USAGE, "multiple of 32"),
    (["--image-size", "0"], EXIT_USAGE, "multiple of 32"),
    (["--seed", "-1"], EXIT_USAGE, "--seed -1"),
    (["--labels", "1,2", "--names", "a"], EXIT_USAGE, "1 names for 2 labels"),
    (["--window", "nan,400"], EXIT_USAGE, "finite"),
    (["--precision", "fp16"], EXIT_USAGE, "fp16"),
    (["--device", "tpu"], EXIT_USAGE, "--device 'tpu'"),
    (["--batch-size", "0"], EXIT_USAGE, "batch-size"),
    (["--z-range", "a:b"], EXIT_USAGE, "--z-range"),
    (["--axis", "sideways"], EXIT_USAGE, "sideways"),
])
def test_12_user_mistakes_are_usage_errors(tmp_path, case, capsys, extra, code_, text):
    code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", case["q"], "-o",
                        tmp_path / "o", "--checkpoint", tmp_path / "missing.pt", *extra], capsys)
    assert code == code_, err
    assert text in err and len(err.strip().splitlines()) == 1, err  # one line, before any work
    assert not (tmp_path / "o").exists()


def test_12_inputs_that_cannot_work(tmp_path, case, capsys):
    q = read_image(case["q"])
    one = tmp_path / "one.nii.gz"
    write_image(Volume(q.array[3:4], q.spacing, q.origin, q.direction), one)
    base = ["segment", "-s", case["s"], "-l", case["l"], "-o", tmp_path / "o", *TRANSFER]
    code, _, err = run([*base, "-i", one, "--axis", "coronal"], capsys)
    assert code == EXIT_INPUT and "choose another axis" in err
    loop = tmp_path / "loop.nii.gz"
    os.symlink(loop, loop)
    code, _, err = run([*base, "-i", loop], capsys)
    assert code == EXIT_INPUT and "symbolic link" in err
    code, _, err = run(["evaluate", "-p", case["l"], "-r", case["l"], "--tolerance", "nan"],
                       capsys)
    assert code == EXIT_USAGE and "--tolerance" in err


def test_12_out_of_host_memory(tmp_path, case, capsys, monkeypatch):
    import medseg.pipeline as pipeline

    def oom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(pipeline, "prepare_support", oom)
    code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", case["q"], "-o",
                        tmp_path / "o", *TRANSFER], capsys)
    assert code == EXIT_RUNTIME and "out of memory (host RAM)" in err


def test_13_checks_before_the_model_is_loaded(tmp_path, case, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", case["q"], "-o",
                        afile, "--checkpoint", tmp_path / "missing.pt"], capsys)
    assert code == EXIT_OUTPUT and "not a folder" in err  # not the missing checkpoint (6)
    code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", case["q"], "-o",
                        tmp_path / "o", "--checkpoint", tmp_path / "missing.pt"], capsys)
    assert code == EXIT_MODEL  # all options fine: now the checkpoint is looked for


def test_14_nan_in_nifti_is_seen(tmp_path):
    import nibabel as nib

    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    data[1, 2, 3] = np.nan
    p = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), p)
    from medseg.io import check_finite

    v = read_image(p)
    assert np.isnan(v.array[3, 2, 1])
    with pytest.warns(UserWarning, match="1 NaN/inf voxels"):
        check_finite(v, "query")
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), np.nan, np.float32), np.eye(4)), p)
    with pytest.raises(InputError, match="every voxel is NaN"):
        check_finite(read_image(p), "query")


def test_15_evaluate_refuses_images_and_creates_folders(tmp_path, case, capsys):
    code, _, err = run(["evaluate", "-p", case["s"], "-r", case["l"]], capsys)
    assert code == EXIT_INPUT and "looks like an image" in err
    csv = tmp_path / "new" / "deep" / "m.csv"
    code, _, err = run(["evaluate", "-p", case["l"], "-r", case["l"], "--csv", csv], capsys)
    assert code == 0 and csv.is_file(), err


def test_16_warnings_are_one_line_and_q_silences_them(tmp_path, case):
    q = read_image(case["q"])
    arr = q.array.astype(np.float32)
    arr[0, 0, 0] = np.nan
    p = tmp_path / "nanq.nii.gz"
    write_image(q.with_array(arr), p)
    cmd = [sys.executable, "-m", "medseg.cli", "segment", "-s", str(case["s"]), "-l",
           str(case["l"]), "-i", str(p), "-o", str(tmp_path / "o"), *TRANSFER]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert any(ln.startswith("medseg: warning: ") and "1 NaN/inf voxels" in ln for ln in lines)
    assert "warnings.warn" not in r.stderr and "UserWarning" not in r.stderr
    r = subprocess.run([*cmd, "--overwrite", "-q"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_17_no_process_wide_side_effects(case, random_checkpoint):
    import torch
    from hydra.core.global_hydra import GlobalHydra

    from medseg.api import Segmenter

    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    seg = Segmenter(model="tiny", checkpoint=random_checkpoint, device="cpu", batch_size=2)
    seg.segment(case["s"], case["l"], case["q"], labels=[1], bank_size=1, matcher="ncc")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert GlobalHydra.instance().is_initialized()
    a, b = read_image(case["q"]), read_image(case["q"])
    assert a == b and not (a == a.with_array(a.array + 1)) and a != "x"
