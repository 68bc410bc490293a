"""Cohorts: many queries in one run, failures recorded, resume, time limits, summaries,
Ray workers, MONAI. Every cohort's inputs are checksummed before and after the test."""

import csv
import gzip
import hashlib
import json
import shutil
import zlib

import numpy as np
import pytest
from conftest import TRANSFER, phantom, run_cli, write_case

from medseg.cohort import Job, expand_queries, output_stems
from medseg.errors import EXIT_PARTIAL
from medseg.io import read_image, write_image

run = run_cli


@pytest.fixture
def cohort(tmp_path):
    """A support, three queries (one of them broken) and references for the good ones."""
    files = write_case(tmp_path)
    qdir, refs = tmp_path / "queries", tmp_path / "refs"
    qdir.mkdir()
    refs.mkdir()
    for i, seed in enumerate((5, 6)):
        img, lab = phantom(shape=(8, 30, 32), seed=seed)
        write_image(img, qdir / f"case{i}.nii.gz")
        write_image(lab, refs / f"case{i}.nii.gz")
    (qdir / "broken.nii.gz").write_bytes(b"not a scan at all" * 10)
    inputs = _input_digests(tmp_path)
    yield files, qdir, refs
    after = _input_digests(tmp_path)
    assert {k: after.get(k) for k in inputs} == inputs, "a cohort changed one of its inputs"


def _input_digests(root):
    """Every input file under ``root`` (outputs live in folders named out*)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()
            and not p.relative_to(root).parts[0].startswith("out")}


def _terminate_after_first_query(proc) -> str:
    """SIGTERM to a cohort run once its first query has started; it exits 143. Its stderr."""
    import signal

    for line in proc.stderr:
        if line.startswith("[1/"):
            proc.send_signal(signal.SIGTERM)
            break
    err = proc.stderr.read()
    assert proc.wait(120) == 143, err
    return err


def _summary(out):
    with open(out / "cohort_summary.csv", encoding="utf-8") as fh:
        return {r["stem"]: r for r in csv.DictReader(fh)}


def test_cohort_with_a_broken_query_then_resume(tmp_path, cohort, capsys):
    files, qdir, refs = cohort
    out = tmp_path / "out"
    args = ["segment", "-s", files["s"], "-l", files["l"], "-i", qdir, "-o", out, *TRANSFER,
            "--ref", refs]
    code, _, err = run(args, capsys)
    assert code == EXIT_PARTIAL, err
    assert "1 of 3 queries failed" in err
    rows = _summary(out)
    assert rows["broken"]["status"] == "failed" and "broken.nii.gz" in rows["broken"]["error"]
    assert rows["case0"]["status"] == rows["case1"]["status"] == "ok"
    assert float(rows["case0"]["dice[label_1]"]) > 0 and float(rows["case0"]["volume_ml[label_1]"]) > 0
    assert int(rows["case1"]["frames"]) == 8
    rep = json.loads((out / "cohort_summary.json").read_text())
    assert rep["counts"] == {"ok": 2, "failed": 1} and len(rep["queries"]) == 3
    before = (out / "case0_labels.nii.gz").stat().st_mtime_ns
    code, _, err = run([*args, "--resume"], capsys)
    assert code == EXIT_PARTIAL
    rows = _summary(out)
    assert rows["case0"]["status"] == "skipped" and rows["case1"]["status"] == "skipped"
    assert (out / "case0_labels.nii.gz").stat().st_mtime_ns == before
    # a damaged output is not "complete": resume redoes that query
    nii = out / "case1_labels.nii.gz"
    nii.write_bytes(nii.read_bytes()[:-40])
    code, _, _ = run([*args, "--resume"], capsys)
    assert _summary(out)["case1"]["status"] == "ok"


def test_queries_from_globs_lists_and_dicom_folders(tmp_path, cohort):
    files, qdir, _ = cohort
    lst = tmp_path / "list.txt"
    lst.write_text("# two scans\nqueries/case0.nii.gz\n" + str(qdir / "case1.nii.gz") + "\n")
    assert expand_queries([lst]) == [(tmp_path / "queries/case0.nii.gz").resolve(),
                                     qdir / "case1.nii.gz"]
    c = tmp_path / "list.csv"
    c.write_text("id,path\na,queries/case1.nii.gz\n")
    assert expand_queries([c]) == [(qdir / "case1.nii.gz").resolve()]
    assert [p.name for p in expand_queries([str(qdir / "case*.nii.gz")])] == \
        ["case0.nii.gz", "case1.nii.gz"]
    from medseg import data

    series = data.fetch(("totalsegmentator",), progress=False) / data.TS / "example_ct_dicom"
    both = tmp_path / "both"
    both.mkdir()
    shutil.copytree(series, both / "ct_series")
    shutil.copy(qdir / "case0.nii.gz", both / "case0.nii.gz")
    assert [p.name for p in expand_queries([both])] == ["case0.nii.gz", "ct_series"]
    assert expand_queries([series]) == [series]  # a series folder is one query
    a, b = tmp_path / "x" / "scan.nii.gz", tmp_path / "y" / "scan.nii.gz"
    assert output_stems([a, b]) == ["x_scan", "y_scan"]


def test_segment_many_and_support_reuse(cohort, random_checkpoint):
    from medseg.api import Segmenter

    files, qdir, _ = cohort
    seg = Segmenter(model="tiny", checkpoint=random_checkpoint, device="cpu", batch_size=4)
    qs = [qdir / "case0.nii.gz", qdir / "case1.nii.gz"]
    res = list(seg.segment_many(files["s"], files["l"], qs, labels=[1], bank_size=2,
                                placement="centre"))
    assert [r.labels.shape for r in res] == [read_image(q).shape for q in qs]
    # same grid, same placement: the second query reused the support, its bank and the
    # bank's encodings
    assert res[1].report.timings_s["support"] < res[0].report.timings_s["support"]
    assert res[0].groups[0].bank is res[1].groups[0].bank
    placed = list(seg.segment_many(files["s"], files["l"], qs, labels=[1], bank_size=2,
                                   placement="search"))
    where = [(r.groups[0].placement[0]["shift_px"], r.groups[0].placement[0]["zoom"])
             for r in placed]
    same = where[0] == where[1]  # the bank depends on where the slice lands, nothing else
    assert (placed[0].groups[0].bank is placed[1].groups[0].bank) == same


@pytest.mark.slow
def test_two_ray_workers_match_the_serial_run(tmp_path, cohort, capsys):
    pytest.importorskip("ray")
    files, qdir, _ = _good(cohort)
    serial, par = tmp_path / "serial", tmp_path / "ray"
    base = ["segment", "-s", files["s"], "-l", files["l"], "-i", qdir, *TRANSFER]
    assert run([*base, "-o", serial], capsys)[0] == 0
    code, _, err = run([*base, "-o", par, "--workers", "2"], capsys)
    assert code == 0, err
    for name in ("case0_labels.nii.gz", "case1_labels.nii.gz", "case0.seg.nrrd"):
        assert (serial / name).read_bytes() == (par / name).read_bytes(), name
    assert _summary(par)["case0"]["status"] == "ok"


def test_monai_dictionary_transform(cohort):
    from monai.transforms import Compose, LoadImaged

    from medseg.transforms import SegmentFromSupportd, metatensor_to_volume

    files, qdir, _ = cohort
    q = qdir / "case0.nii.gz"
    t = Compose([LoadImaged(keys="image", image_only=False),
                 SegmentFromSupportd(keys="image", support=files["s"],
                                     support_label=files["l"], method="transfer", bank_size=1)])
    out = t({"image": str(q)})
    seg = out["image_seg"]
    np.testing.assert_allclose(np.asarray(seg.affine), np.asarray(out["image"].affine), atol=1e-5)
    vol = metatensor_to_volume(seg)
    ref = read_image(q)
    np.testing.assert_allclose(vol.origin, ref.origin, atol=1e-4)
    np.testing.assert_allclose(vol.direction, ref.direction, atol=1e-5)
    assert vol.array.shape == ref.shape and vol.array.any()
    from medseg.api import Segmenter

    direct = Segmenter().segment(files["s"], files["l"], metatensor_to_volume(out["image"]),
                                 method="transfer", bank_size=1)
    np.testing.assert_array_equal(np.asarray(seg)[0], direct.labels.array.transpose(2, 1, 0))
    by_path = SegmentFromSupportd("image", files["s"], files["l"], method="transfer",
                                  bank_size=1)({"image": str(q)})["image_seg"]
    assert by_path.shape == seg.shape


def test_outputs_valid_checks_content(tmp_path, cohort):
    from medseg.api import Segmenter
    from medseg.config import OutputSpec, SegmentConfig

    files, qdir, _ = cohort
    cfg = SegmentConfig.from_options(method="transfer", bank_size=1)
    q = qdir / "case0.nii.gz"
    res = Segmenter().segment(files["s"], files["l"], q, cfg)
    job = Job((files["s"],), (files["l"],), cfg, OutputSpec(folder=tmp_path / "out"))
    res.save(job.output.folder, job.output.formats, stem="case0")
    assert job.why_redo(q, "case0") is None
    assert "other settings" in Job((files["s"],), (files["l"],), SegmentConfig.from_options(
        method="transfer", bank_size=2), job.output).why_redo(q, "case0")
    assert "another query" in job.why_redo(qdir / "case1.nii.gz", "case0")
    job.paths("case0")["report"].write_text("{")
    assert "report" in job.why_redo(q, "case0")


def _digests(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_cohort_never_replaces_its_inputs(tmp_path, capsys, flag):
    """A folder holding scans and their references, used as input and output: the run is
    refused before any work and every input is byte for byte as it was."""
    files = write_case(tmp_path)
    scans = tmp_path / "scans"
    scans.mkdir()
    img, lab = phantom(shape=(8, 30, 32), seed=5)
    write_image(img, scans / "case0.nii.gz")
    write_image(lab, scans / "case0_labels.nii.gz")  # what case0's labelmap would be called
    before = _digests(tmp_path)
    code, _, err = run(["segment", "-s", files["s"], "-l", files["l"], "-i", scans, "-o", scans,
                        flag, *TRANSFER], capsys)
    assert code == 4, err
    assert "would replace one of its inputs" in err
    assert _digests(tmp_path) == before


def test_cohort_inputs_protected_when_written(tmp_path, cohort):
    """The last line of defence: the transaction itself refuses to replace a protected
    input even when the upfront check is bypassed."""
    from medseg.errors import OutputError
    from medseg.export import OutputTransaction, input_files

    files, qdir, refs = cohort
    before = _digests(qdir)
    target = qdir / "case0.nii.gz"
    with pytest.raises(OutputError, match="would replace an input"):
        with OutputTransaction(True, input_files([qdir])) as tx:
            tx.add(target, lambda p: p.write_bytes(b"x"))
    assert _digests(qdir) == before


def _good(cohort):
    """The cohort's good queries alone (copied into their own folder)."""
    files, qdir, refs = cohort
    good = qdir.parent / "good"
    good.mkdir()
    for name in ("case0.nii.gz", "case1.nii.gz"):
        shutil.copy(qdir / name, good / name)
    return files, good, refs


def _flipped(raw: bytes, i: int) -> bytes:
    out = bytearray(raw)
    out[i] ^= 0x40
    return bytes(out)


def _damages(raw: bytes, i: int) -> bool:
    """Does flipping a bit of byte ``i`` change what the gzip stream holds? (Some bits of
    a deflate stream, e.g. code lengths of unused symbols, change nothing.)"""
    try:
        return gzip.decompress(_flipped(raw, i)) != gzip.decompress(raw)
    except (OSError, EOFError, zlib.error):
        return True


def test_11_resume_redoes_damaged_foreign_or_stale_outputs(tmp_path, cohort, capsys):
    """--resume keeps only outputs that are whole, on the query's grid and made from the
    same settings and input contents: a half .seg.nrrd, a labelmap with one flipped byte in
    its compressed stream, a labelmap on another grid, other --names or an edited label are
    all redone."""
    files, qdir, _ = _good(cohort)
    out = tmp_path / "out"
    args = ["segment", "-s", files["s"], "-l", files["l"], "-i", qdir, "-o", out, *TRANSFER]
    assert run(args, capsys)[0] == 0

    def resumed(*extra):
        code, _, err = run([*args, "--resume", *extra], capsys)
        assert code == 0, err
        return {k: r["status"] for k, r in _summary(out).items()}

    assert resumed() == {"case0": "skipped", "case1": "skipped"}
    seg = out / "case0.seg.nrrd"
    seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])
    nii = out / "case1_labels.nii.gz"
    raw = nii.read_bytes()
    nii.write_bytes(_flipped(raw, next(i for i in range(len(raw) // 2, len(raw))
                                       if _damages(raw, i))))
    assert resumed() == {"case0": "ok", "case1": "ok"}
    assert resumed() == {"case0": "skipped", "case1": "skipped"}
    other, _ = phantom(shape=(5, 30, 32), seed=1)  # a labelmap on another grid
    write_image(other, out / "case0_labels.nii.gz")
    assert resumed() == {"case0": "ok", "case1": "skipped"}
    assert read_image(out / "case0_labels.nii.gz").shape == (8, 30, 32)
    assert resumed("--names", "kidney,gland") == {"case0": "ok", "case1": "ok"}
    assert resumed("--names", "kidney,gland") == {"case0": "skipped", "case1": "skipped"}


def test_11_resume_redoes_after_the_label_was_corrected(tmp_path, cohort, capsys):
    files, qdir, _ = _good(cohort)
    label = tmp_path / "out_label" / "label.nii.gz"  # the user's label, corrected later
    label.parent.mkdir()
    shutil.copy(files["l"], label)
    out = tmp_path / "out"
    args = ["segment", "-s", files["s"], "-l", label, "-i", qdir, "-o", out, *TRANSFER,
            "--resume"]
    assert run(args, capsys)[0] == 0
    lab = read_image(label)
    lab.array[lab.array.shape[0] // 2, :3, :3] = 1  # a correction of a few voxels
    write_image(lab, label)
    assert run(args, capsys)[0] == 0
    assert {r["status"] for r in _summary(out).values()} == {"ok"}


def test_12_summary_not_replaced_without_overwrite_and_merged_on_resume(tmp_path, cohort,
                                                                         capsys):
    files, qdir, _ = _good(cohort)
    out = tmp_path / "out"
    base = ["segment", "-s", files["s"], "-l", files["l"], "-o", out, *TRANSFER]
    assert run([*base, "-i", qdir / "case0.nii.gz", "-i", qdir / "case1.nii.gz"], capsys)[0] == 0
    before = (out / "cohort_summary.json").read_bytes()
    solo = tmp_path / "other" / "case9.nii.gz"
    solo.parent.mkdir()
    shutil.copy(qdir / "case0.nii.gz", solo)
    code, _, err = run([*base, "-i", solo, "-i", qdir / "case1.nii.gz"], capsys)
    assert code == 4 and "exists" in err, err
    assert (out / "cohort_summary.json").read_bytes() == before
    assert run([*base, "-i", solo, "-i", qdir / "case1.nii.gz", "--resume"], capsys)[0] == 0
    rows = _summary(out)
    assert {k: r["status"] for k, r in rows.items()} == \
        {"case0": "ok", "case9": "ok", "case1": "skipped"}
    assert json.loads((out / "cohort_summary.json").read_text())["carried_over"] == 1


def test_10_a_hanging_query_is_timed_out_and_the_rest_go_on(tmp_path, cohort, capsys,
                                                            monkeypatch):
    """A read that never returns and a computation that never returns: each query is
    recorded as failed after --query-timeout, the others are segmented, the summary is
    written."""
    import threading

    import medseg.cohort.runner as runner

    files, qdir, _ = _good(cohort)
    shutil.copy(qdir / "case0.nii.gz", qdir / "case2.nii.gz")
    release = threading.Event()
    load, segment = runner.load_query, runner.Segmenter.segment

    def hanging_load(q, cfg):
        if "case0" in str(q):
            release.wait(60)
        return load(q, cfg)

    def hanging_segment(self, s, lab, q, cfg):
        if "case1" in str(getattr(q, "path", q)):
            release.wait(60)
        return segment(self, s, lab, q, cfg)

    monkeypatch.setattr(runner, "load_query", hanging_load)
    monkeypatch.setattr(runner.Segmenter, "segment", hanging_segment)
    out = tmp_path / "out"
    try:
        code, _, err = run(["segment", "-s", files["s"], "-l", files["l"], "-i", qdir, "-o",
                            out, *TRANSFER, "--query-timeout", "3"], capsys)
    finally:
        release.set()
    assert code == EXIT_PARTIAL, err
    rows = _summary(out)
    assert rows["case0"]["status"] == rows["case1"]["status"] == "failed"
    assert "query-timeout" in rows["case0"]["error"]
    assert rows["case2"]["status"] == "ok"
    assert float(rows["case1"]["seconds"]) < 10


def test_10_an_interrupted_cohort_still_writes_its_summary(tmp_path, cohort):
    """SIGTERM in the middle of a cohort: exit 143, the finished queries' outputs whole,
    the summary written with the queries not reached listed as not run."""
    import subprocess
    import sys
    import textwrap

    files, qdir, _ = _good(cohort)
    for i in range(2, 5):
        shutil.copy(qdir / "case0.nii.gz", qdir / f"case{i}.nii.gz")
    out = tmp_path / "out"
    args = ["segment", "-s", files["s"], "-l", files["l"], "-i", qdir, "-o", out, *TRANSFER]
    code = textwrap.dedent(f"""
        import signal, sys, time
        import medseg.cli as cli, medseg.cohort.runner as runner
        load = runner.load_query
        def slow(q, cfg):
            time.sleep(1.5)
            return load(q, cfg)
        runner.load_query = slow
        signal.signal(signal.SIGTERM, cli._on_sigterm)
        sys.exit(cli.main({[str(a) for a in args]!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    _terminate_after_first_query(proc)
    rows = _summary(out)
    assert len(rows) == 5 and "not run" in {r["status"] for r in rows.values()}
    for stem, r in rows.items():
        if r["status"] == "ok":
            assert read_image(out / f"{stem}_labels.nii.gz").shape == (8, 30, 32)


def test_13_ray_addresses_checked_before_any_work(tmp_path, cohort, capsys):
    files, qdir, _ = _good(cohort)
    for address, code_, text in (("not an address", 2, "HOST:PORT"),
                                 ("127.0.0.1:1", 5, "no Ray cluster answers")):
        out = tmp_path / "out"
        code, _, err = run(["segment", "-s", files["s"], "-l", files["l"], "-i", qdir, "-o",
                            out, *TRANSFER, "--workers", "2", "--ray-address", address], capsys)
        assert code == code_ and text in err, err
        assert not out.exists()


def _ray_workers() -> list[int]:
    """Pids of medseg's Ray worker processes (their process title names the actor)."""
    import os

    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as fh:
                    if b"_RayWorker" in fh.read():
                        pids.append(int(d))
            except OSError:
                pass
    return pids


def test_13_14_ray_worker_death_is_retried_on_its_own_private_cluster(tmp_path, cohort, capsys,
                                                                      monkeypatch):
    """Two workers on medseg's own cluster (a RAY_ADDRESS in the environment is not
    adopted; its temporary folder is private; a client without the run's token is
    refused); one worker is killed after the first query: its query goes to the other
    worker, every query is segmented, the summary lists them all."""
    import os
    import signal
    import subprocess
    import sys

    ray = pytest.importorskip("ray")
    import medseg.cohort as cohort_module

    files, qdir, _ = _good(cohort)
    for i in range(2, 5):
        shutil.copy(qdir / "case0.nii.gz", qdir / f"case{i}.nii.gz")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # another cluster: must not be adopted
    seen = {}
    say = cohort_module._bar

    def bar(total, say_, rows):
        update = say(total, say_, rows)

        def killing(row):
            update(row)
            if not seen:
                node = ray._private.worker.global_worker.node
                seen["temp"] = node.get_temp_dir_path()
                seen["mode"] = os.stat(os.path.dirname(seen["temp"])).st_mode
                env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
                stranger = subprocess.Popen(
                    [sys.executable, "-c", "import ray; ray.init(address="
                     f"{node.gcs_address!r}); print('connected', flush=True)"], env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for line in stranger.stdout:  # refused at once (Ray would retry for a while)
                    if "InvalidAuthToken" in line or "connected" in line:
                        seen["stranger"] = line
                        break
                stranger.kill()
                stranger.wait()
                seen["killed"] = _ray_workers()[0]
                os.kill(seen["killed"], signal.SIGKILL)
        return killing

    monkeypatch.setattr(cohort_module, "_bar", bar)
    out = tmp_path / "out"
    code, _, err = run(["segment", "-s", files["s"], "-l", files["l"], "-i", qdir, "-o", out,
                        *TRANSFER, "--workers", "2"], capsys)
    assert code == 0, err
    assert {r["status"] for r in _summary(out).values()} == {"ok"} and len(_summary(out)) == 5
    assert "a Ray worker died while segmenting" in err and "given to another worker" in err
    assert not seen["temp"].startswith("/tmp/ray") and seen["mode"] & 0o077 == 0
    assert "InvalidAuthToken" in seen["stranger"]  # no token: refused
    assert os.environ.get("RAY_AUTH_TOKEN") is None  # the token left with the cluster


def test_13_sigterm_to_a_ray_driver_is_exit_143_with_a_summary(tmp_path, cohort):
    import subprocess
    import sys

    pytest.importorskip("ray")
    files, qdir, _ = _good(cohort)
    for i in range(2, 10):
        shutil.copy(qdir / "case0.nii.gz", qdir / f"case{i}.nii.gz")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "medseg.cli", "segment", "-s", files["s"],
                             "-l", files["l"], "-i", qdir, "-o", out, *TRANSFER, "--workers",
                             "2"], stderr=subprocess.PIPE, text=True)
    err = _terminate_after_first_query(proc)
    assert "Traceback" not in err and "medseg: terminated" in err
    rows = _summary(out)
    assert len(rows) == 10 and {"ok", "not run"} <= {r["status"] for r in rows.values()}
