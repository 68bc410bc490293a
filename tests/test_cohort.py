"""Cohorts: many queries in one run, failures recorded, resume, Ray workers, MONAI."""

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import TRANSFER, phantom, run_cli, write_case

from medseg.cohort import expand_queries, output_stems, outputs_valid
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
    return files, qdir, refs


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
    files, qdir, _ = cohort
    (qdir / "broken.nii.gz").unlink()
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

    files, qdir, _ = cohort
    res = Segmenter().segment(files["s"], files["l"], qdir / "case0.nii.gz", method="transfer",
                              bank_size=1)
    paths = res.save(tmp_path / "o")
    assert outputs_valid(paths)
    paths["report"].write_text("{")
    assert not outputs_valid(paths)


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
