"""Reliability, round three: publishing under signals and kills, names and fields from
files, malformed inputs, memory, blocking reads, resume, summaries, Ray."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import TRANSFER, phantom, run_cli, write_case

from medseg.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED
from medseg.io import Volume, read_image, write_image

run = run_cli


@pytest.fixture
def case(tmp_path):
    return write_case(tmp_path)


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def _segment_in_subprocess(case, out, hook: str, extra=()):
    """medseg segment in a fresh process, with ``hook`` run on the n-th os.replace of a
    publish (the moment outputs are being put in place)."""
    args = ["segment", "-s", case["s"], "-l", case["l"], "-i", case["q"], "-o", out,
            "--format", "seg.nrrd,nifti,itk-snap", *TRANSFER, *extra]
    code = textwrap.dedent(f"""
        import os, signal, sys
        import medseg.cli as cli
        real, calls = os.replace, [0]
        def replace(a, b):
            real(a, b)
            if ".medseg-" in str(a) and ".part" in str(a):
                calls[0] += 1
                {hook}
        os.replace = replace
        signal.signal(signal.SIGTERM, cli._on_sigterm)
        sys.exit(cli.main({[str(x) for x in args]!r}))
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("sig, code_, word", [(signal.SIGTERM, EXIT_TERMINATED, "terminated"),
                                              (signal.SIGINT, EXIT_INTERRUPTED, "interrupted")])
def test_2_signal_during_publishing_completes_the_set(tmp_path, case, sig, code_, word):
    """A signal just after the first output is in place: the publish completes (signals
    are held back), every output is whole, no backup or temporary is left, and the message
    says so."""
    out = tmp_path / "o"
    r = _segment_in_subprocess(case, out, f"calls[0] == 1 and os.kill(os.getpid(), {int(sig)})")
    assert r.returncode == code_, r.stderr
    assert f"{word}; the outputs were completed first" in r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["q.seg.nrrd", "q_itksnap.txt", "q_labels.ctbl", "q_labels.nii.gz",
                     "q_report.json"], names


def test_2_signal_during_an_overwrite_leaves_no_backup(tmp_path, case, capsys):
    out = tmp_path / "o"
    code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", case["q"], "-o", out,
                        "--format", "seg.nrrd,nifti,itk-snap", *TRANSFER], capsys)
    assert code == 0, err
    r = _segment_in_subprocess(case, out, "calls[0] == 2 and os.kill(os.getpid(), 15)",
                               ["--overwrite", "--seed", "3"])
    assert r.returncode == EXIT_TERMINATED, r.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_3_sigkill_during_an_overwrite_is_undone_by_the_next_run(tmp_path, case, capsys):
    """Killed after two of five outputs were replaced: a mixed set on disk. The next run in
    that folder restores the last complete set before it looks at anything."""
    out = tmp_path / "o"
    base = ["segment", "-s", case["s"], "-l", case["l"], "-i", case["q"], "-o", out,
            "--format", "seg.nrrd,nifti,itk-snap", *TRANSFER]
    code, _, err = run(base, capsys)
    assert code == 0, err
    before = _digests(out)
    r = _segment_in_subprocess(case, out, "calls[0] == 2 and os.kill(os.getpid(), 9)",
                               ["--overwrite", "--seed", "3"])
    assert r.returncode == -signal.SIGKILL
    assert any(p.name.endswith(".journal") for p in out.iterdir())  # it was killed mid-way
    code, _, err = run([*base, "--resume"], capsys)  # any run in the folder recovers
    assert "restored" in err
    after = _digests(out)
    assert {k: after[k] for k in before} == before  # the last complete set, whole
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_3_leftover_temporaries_of_dead_runs_are_removed(tmp_path, case, capsys):
    out = tmp_path / "o"
    out.mkdir()
    dead = 2 ** 22 + 12345  # no such process
    stray = [out / f".medseg-{dead}-abc.part.nii.gz", out / f".medseg-{dead}-x-0.bak"]
    for p in stray:
        p.write_bytes(b"left behind")
    mine = out / f".medseg-{os.getpid()}-live.part.nii.gz"  # a live run's: untouched
    mine.write_bytes(b"in use")
    code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", case["q"], "-o", out,
                        *TRANSFER], capsys)
    assert code == 0, err
    assert not any(p.exists() for p in stray) and mine.exists()
    assert "removed" in err


@pytest.mark.parametrize("name", ["liver\rSegment0_LabelValue:=9", "a\x00b", "a\x0bb",
                                  "a\x1b[31mred", "liver\nx"])
def test_4_names_from_label_files_are_checked(tmp_path, case, capsys, name):
    """A segment name with control characters in a .seg.nrrd is refused with one line
    naming the file and field; the terminal never sees the raw characters."""
    from medseg.export.seg_nrrd import seg_nrrd
    from medseg.io import read_image
    from medseg.labels import make_plan
    from medseg.labels.plan import SegmentInfo

    img = read_image(case["s"])
    lab = read_image(case["l"])
    path = tmp_path / "bad.seg.nrrd"
    seg_nrrd(lab.array, img, make_plan({1: SegmentInfo(1, "x"), 2: SegmentInfo(2, "y")}), path)
    raw = path.read_bytes().replace(b"Segment0_Name:=x", b"Segment0_Name:=" + name.encode())
    path.write_bytes(raw)
    code, _, err = run(["segment", "-s", case["s"], "-l", path, "-i", case["q"], "-o",
                        tmp_path / "o", *TRANSFER], capsys)
    assert code == EXIT_INPUT, err
    if "\n" in name:  # the header itself is broken at the name
        assert "cannot read the Slicer segmentation" in err
    else:
        assert "Segment0_Name" in err and "control character" in err
    assert "\x1b" not in err and "\r" not in err and "\x00" not in err
    assert len(err.strip().splitlines()) == 1


def test_4_rtstruct_roi_names_are_checked(tmp_path):
    from medseg.errors import InputError
    from medseg.labels.plan import label_name

    with pytest.raises(InputError, match="ROIName"):
        label_name("GTV\nx", "rt.dcm: ROIName")


@pytest.mark.parametrize("field, value, text", [
    ("LabelValue", "abc", "not an integer"), ("LabelValue", "1.5", "not an integer"),
    ("LabelValue", "0", "background"), ("Color", "nan nan nan", "0 to 1"),
    ("Color", "red", "0 to 1"), ("Layer", "3", "layer"), ("Layer", "-1", "layer")])
def test_5_8_malformed_segment_fields(tmp_path, case, capsys, field, value, text):
    from medseg.export.seg_nrrd import seg_nrrd
    from medseg.io import read_image
    from medseg.labels import make_plan
    from medseg.labels.plan import SegmentInfo

    img = read_image(case["s"])
    path = tmp_path / "bad.seg.nrrd"
    seg_nrrd(read_image(case["l"]).array, img, make_plan({1: SegmentInfo(1, "a"),
                                                          2: SegmentInfo(2, "b")}), path)
    lines = path.read_bytes().split(b"\n")
    key = f"Segment0_{field}:=".encode()
    lines = [ln if not ln.startswith(key) else key + value.encode() for ln in lines]
    path.write_bytes(b"\n".join(lines))
    code, _, err = run(["segment", "-s", case["s"], "-l", path, "-i", case["q"], "-o",
                        tmp_path / "o", *TRANSFER], capsys)
    assert code == EXIT_INPUT and f"Segment0_{field}" in err and text in err, err


def test_8_gap_and_duplicate_names_in_a_segmentation(tmp_path, case, capsys):
    from medseg.export.seg_nrrd import seg_nrrd
    from medseg.io import read_image
    from medseg.labels import make_plan
    from medseg.labels.plan import SegmentInfo

    img = read_image(case["s"])
    path = tmp_path / "s.seg.nrrd"
    seg_nrrd(read_image(case["l"]).array, img, make_plan({1: SegmentInfo(1, "a"),
                                                          2: SegmentInfo(2, "b")}), path)
    raw = path.read_bytes()
    gap = tmp_path / "gap.seg.nrrd"
    gap.write_bytes(raw.replace(b"Segment1_", b"Segment2_"))
    code, _, err = run(["segment", "-s", case["s"], "-l", gap, "-i", case["q"], "-o",
                        tmp_path / "o", *TRANSFER], capsys)
    assert code == EXIT_INPUT and "gap in the segment numbering" in err, err
    dup = tmp_path / "dup.seg.nrrd"
    dup.write_bytes(raw.replace(b"Segment1_Name:=b", b"Segment1_Name:=A"))
    code, _, err = run(["segment", "-s", case["s"], "-l", dup, "-i", case["q"], "-o",
                        tmp_path / "o", *TRANSFER], capsys)
    assert code == EXIT_INPUT and "two segments are named" in err, err


def test_5_complex_and_tiny_spacing_nifti_are_refused(tmp_path, case, capsys):
    import nibabel as nib

    img = nib.Nifti1Image(np.ones((8, 8, 8), np.complex64), np.eye(4))
    nib.save(img, tmp_path / "c.nii.gz")
    code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", tmp_path / "c.nii.gz",
                        "-o", tmp_path / "o", *TRANSFER], capsys)
    assert code == EXIT_INPUT and "complex" in err, err
    for sp in (1e-30, 1e30):
        vol, _ = phantom(shape=(8, 20, 24), seed=1)
        write_image(Volume(vol.array, (sp, 1.0, 1.0)), tmp_path / "t.nii.gz")
        code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i",
                            tmp_path / "t.nii.gz", "-o", tmp_path / "o", *TRANSFER], capsys)
        assert code == EXIT_INPUT and "spacing" in err, err


def _series(folder, n=6, edit=None):
    """A small CT series; ``edit(k, ds)`` changes slice ``k``'s header."""
    import pydicom
    from conftest import write_dicom_series

    vol, _ = phantom(shape=(n, 20, 24), direction=np.eye(3), seed=2)
    write_dicom_series(folder, vol, series="1.2.3.55")
    if edit:
        for k, f in enumerate(sorted(folder.iterdir())):
            ds = pydicom.dcmread(f)
            edit(k, ds)
            ds.save_as(f)
    return folder


@pytest.mark.parametrize("edit, text", [
    (lambda k, ds: setattr(ds, "ImageOrientationPatient", [0.9848, 0.1736, 0, -0.1736, 0.9848, 0])
     if k == 3 else None, "oriented differently"),
    (lambda k, ds: setattr(ds, "ImagePositionPatient",
                           [0.0, float(k) * 0.9, float(ds.ImagePositionPatient[2])]),
     "gantry tilt"),
    (lambda k, ds: setattr(ds, "PixelSpacing", [0, 0]), "PixelSpacing")])
def test_7_dicom_series_without_a_single_grid(tmp_path, case, capsys, edit, text):
    s = _series(tmp_path / "s", edit=edit)
    code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", s, "-o",
                        tmp_path / "o", *TRANSFER], capsys)
    assert code == EXIT_INPUT and text in err, err


def test_7_nan_origin_refused(tmp_path, case, capsys):
    import nibabel as nib

    vol, _ = phantom(shape=(8, 20, 24), seed=1)
    aff = np.eye(4)
    aff[0, 3] = np.nan
    img = nib.Nifti1Image(vol.array.transpose(2, 1, 0), aff)
    img.set_sform(aff, code=1)
    img.set_qform(None, code=0)
    nib.save(img, tmp_path / "nan.nii.gz")
    code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", tmp_path / "nan.nii.gz",
                        "-o", tmp_path / "o", *TRANSFER], capsys)
    assert code == EXIT_INPUT and ("NaN" in err or "origin" in err), err


def test_10_a_pipe_is_refused_without_blocking(tmp_path, case, capsys):
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", fifo, "-o",
                        tmp_path / "o", *TRANSFER], capsys)
    assert code == EXIT_INPUT and "not a regular file" in err
    nhdr = tmp_path / "d.nhdr"
    data = tmp_path / "d.raw"
    os.mkfifo(data)
    nhdr.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n"
                    "endian: little\ndata file: d.raw\n\n")
    code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", nhdr, "-o",
                        tmp_path / "o", *TRANSFER], capsys)
    assert code == EXIT_INPUT and "not a regular file" in err


def test_15_multi_member_gzip_nifti_is_read(tmp_path, case, capsys):
    import gzip

    raw = tmp_path / "q.nii"
    vol, _ = phantom(shape=(8, 30, 32), seed=4)
    write_image(vol, raw, compress=False)
    data = raw.read_bytes()
    half = len(data) // 2
    (tmp_path / "q2.nii.gz").write_bytes(gzip.compress(data[:half]) + gzip.compress(data[half:]))
    code, _, err = run(["segment", "-s", case["s"], "-l", case["l"], "-i", tmp_path / "q2.nii.gz",
                        "-o", tmp_path / "o", *TRANSFER], capsys)
    assert code == 0, err


@pytest.mark.parametrize("limit_mb", [300, 1200])
def test_9_out_of_memory_is_exit_5(tmp_path, case, limit_mb):
    """Under an address-space limit, wherever memory runs out (an import, a native library
    in a background thread, reading, the computation), the console script ends with the
    one-line message and exit 5, no traceback."""
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({limit_mb} * 2**20, {limit_mb} * 2**20))
        sys.argv = ["medseg"] + {[str(x) for x in ["segment", "-s", case["s"], "-l", case["l"],
                                                     "-i", case["q"], "-o", tmp_path / "o",
                                                     *TRANSFER]]!r}
        import medseg.cli as cli
        cli.run()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 5), r.stderr  # 0: enough memory after all
    if r.returncode == 5:
        assert "out of memory" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("crash, code_", [("import ctypes; ctypes.string_at(0)", 5),
                                          ("import os, signal; os.kill(os.getpid(), 9)", 5),
                                          ("import os; os.abort()", 5),
                                          ("import sys; sys.exit(3)", 3)])
def test_9_a_native_death_of_the_work_is_one_line_and_exit_5(monkeypatch, capsys, crash, code_):
    """The console script watches the process doing the work: a segfault, the
    out-of-memory killer's SIGKILL or an abort in a native library becomes exit 5 with one
    line; an ordinary exit code passes through."""
    import subprocess as sp

    import medseg.cli as cli

    real = sp.Popen
    monkeypatch.setattr(cli.subprocess, "Popen",
                        lambda args, env=None: real([sys.executable, "-c", crash], env=env))
    rc = cli.supervise(["segment"])
    assert rc == code_
    err = capsys.readouterr().err
    if code_ == 5:
        assert "out of memory" in err and len(err.strip().splitlines()) == 1


def test_15_write_only_output_and_unreadable_label_exit_codes(tmp_path):
    """A write-only output folder is an output problem (4), an unreadable label an input
    problem (3), each one line (run as an unprivileged user: permissions bind)."""
    import shutil
    import tempfile

    as_user = [] if os.getuid() else [shutil.which("setpriv"), "--reuid=65534",
                                      "--regid=65534", "--clear-groups"]
    if as_user and not as_user[0]:
        pytest.skip("running as root without setpriv: permissions do not bind")
    root = tempfile.mkdtemp(prefix="medseg-perm-")
    try:
        os.chmod(root, 0o777)
        case = {k: str(v) for k, v in write_case(__import__("pathlib").Path(root)).items()}
        for f in case.values():
            os.chmod(f, 0o644)
        out = os.path.join(root, "out")
        os.mkdir(out, 0o333)
        os.chmod(out, 0o333)  # write-only (umask aside)
        base = [*as_user, sys.executable, "-m", "medseg.cli", "segment", "-s", case["s"],
                "-i", case["q"], *TRANSFER]
        env = {**os.environ, "HOME": root}
        r = subprocess.run([*base, "-l", case["l"], "-o", out], capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 4 and "not readable" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        os.chmod(case["l"], 0o000)
        r = subprocess.run([*base, "-l", case["l"], "-o", os.path.join(root, "o2")],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == EXIT_INPUT and "not readable" in r.stderr, r.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_query_read_beside_the_support_reports_in_turn(tmp_path, case):
    """The query is read in a thread while the support is: its error is raised after the
    support's, so two bad inputs give the same message as reading them in turn."""
    from medseg.api import Segmenter
    from medseg.errors import InputError

    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a scan")
    seg = Segmenter()
    with pytest.raises(InputError, match="^query"):
        seg.segment(case["s"], case["l"], bad, method="transfer", bank_size=1)
    with pytest.raises(InputError, match="^support"):
        seg.segment(bad, case["l"], bad, method="transfer", bank_size=1)
    res = seg.segment(case["s"], case["l"], case["q"], method="transfer", bank_size=1)
    q = read_image(case["q"])
    assert res.labels.shape == q.shape and np.allclose(res.labels.origin, q.origin)
