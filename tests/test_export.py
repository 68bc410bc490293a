import os
from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import phantom

from medseg import export
from medseg.errors import OutputError
from medseg.export import OutputTransaction, check_outputs, prepare_output_dir, write_atomic
from medseg.export.labelmap import color_table, itksnap_labels, nifti_labelmap
from medseg.export.seg_nrrd import seg_nrrd
from medseg.io import read_image
from medseg.labels import SegmentInfo, make_plan


def make_segments(values, names=None):
    return make_plan({v: SegmentInfo(v) for v in values}, values, names)


def write_seg_nrrd(labels, ref, plan, path):
    return write_atomic(path, lambda p: seg_nrrd(labels, ref, plan, p))


def write_nifti_labelmap(labels, ref, path):
    return write_atomic(path, lambda p: nifti_labelmap(labels, ref, p))


def write_color_table(plan, path):
    return write_atomic(path, lambda p: color_table(plan, p))

REQUIRED = {"Segmentation_ContainedRepresentationNames", "Segmentation_MasterRepresentation",
            "Segmentation_ReferenceImageExtentOffset"}
PER_SEGMENT = {"Color", "Extent", "ID", "LabelValue", "Layer", "Name"}


def _check_geometry(path: Path, ref, tol=1e-5):
    img = sitk.ReadImage(str(path))
    np.testing.assert_allclose(img.GetSpacing(), ref.spacing, atol=tol)
    np.testing.assert_allclose(img.GetOrigin(), ref.origin, atol=tol)
    np.testing.assert_allclose(np.reshape(img.GetDirection(), (3, 3)), ref.direction, atol=tol)
    return sitk.GetArrayFromImage(img)


def test_seg_nrrd_round_trip_oblique(tmp_path):
    img, lab = phantom()
    segs = make_segments([1, 2], ["liver", "spleen"])
    p = write_seg_nrrd(lab.array, img, segs, tmp_path / "x.seg.nrrd")
    arr = _check_geometry(p, img)
    np.testing.assert_array_equal(arr, lab.array)
    slicerio = pytest.importorskip("slicerio")
    seg = slicerio.read_segmentation(str(p))
    assert [s["name"] for s in seg["segments"]] == ["liver", "spleen"]
    assert [s["labelValue"] for s in seg["segments"]] == [1, 2]
    np.testing.assert_allclose(seg["segments"][0]["color"], np.array(segs.entries[0].color) / 255,
                               atol=1e-5)
    # ijkToLPS carries the oblique direction and anisotropic spacing
    ijk = np.asarray(seg["ijkToLPS"])
    np.testing.assert_allclose(ijk[:3, :3], img.direction * np.asarray(img.spacing), atol=1e-5)
    np.testing.assert_allclose(ijk[:3, 3], img.origin, atol=1e-5)
    mask = slicerio.segment_mask(seg, seg["segments"][1])
    assert mask.sum() == (lab.array == 2).sum()


def test_seg_nrrd_header_like_slicer(tmp_path):
    img, lab = phantom()
    p = write_seg_nrrd(lab.array, img, make_segments([1, 2]), tmp_path / "x.seg.nrrd")
    hdr = nrrd.read_header(str(p))
    assert hdr["space"] == "left-posterior-superior"
    assert list(hdr["kinds"]) == ["domain"] * 3
    assert REQUIRED <= set(hdr)
    assert hdr["Segmentation_MasterRepresentation"] == "Binary labelmap"
    for i in range(2):
        assert {f"Segment{i}_{k}" for k in PER_SEGMENT} <= set(hdr)


@pytest.mark.slow
def test_header_matches_real_slicer_file(tmp_path):
    """Same fields as the Segmentation.seg.nrrd saved by 3D Slicer (slicerio's test data)."""
    from medseg import data

    root = data.fetch(("slicerio",), progress=False)
    ref = root / "slicerio/slicerio-1.4.0/slicerio/data/Segmentation.seg.nrrd"
    rh = nrrd.read_header(str(ref))
    img, lab = phantom()
    hdr = nrrd.read_header(str(write_seg_nrrd(lab.array, img, make_segments([1, 2]),
                                              tmp_path / "x.seg.nrrd")))
    ours = {k.split("_", 1)[1] if k.startswith("Segment0_") else k for k in hdr
            if not k.startswith("Segment1_")}
    theirs = {k.split("_", 1)[1] if k.startswith("Segment0_") else k for k in rh
              if not k.startswith("Segment") or k.startswith(("Segment0_", "Segmentation_"))}
    missing = theirs - ours - {"Segmentation_ConversionParameters"}
    assert not missing, missing
    for k in ("space", "kinds", "dimension"):
        assert np.array_equal(np.asarray(rh[k]), np.asarray(hdr[k]))
    assert rh["Segmentation_MasterRepresentation"] == hdr["Segmentation_MasterRepresentation"]
    assert rh["Segmentation_ReferenceImageExtentOffset"] == hdr["Segmentation_ReferenceImageExtentOffset"]


def test_empty_prediction_is_full_volume(tmp_path):
    img, lab = phantom()
    empty = np.zeros(lab.shape, np.uint8)
    p = write_seg_nrrd(empty, img, make_segments([1]), tmp_path / "e.seg.nrrd")
    arr = _check_geometry(p, img)
    assert arr.shape == lab.shape and not arr.any()
    hdr = nrrd.read_header(str(p))
    assert hdr["Segment0_Extent"] == "0 -1 0 -1 0 -1"  # as Slicer writes an empty segment


def test_nifti_labelmap_and_ctbl(tmp_path):
    img, lab = phantom()
    p = write_nifti_labelmap(lab.array, img, tmp_path / "l.nii.gz")
    arr = _check_geometry(p, img)
    assert arr.dtype == np.uint8
    np.testing.assert_array_equal(arr, lab.array)
    back = read_image(p)
    np.testing.assert_allclose(back.direction, img.direction, atol=1e-5)
    c = write_color_table(make_segments([1, 2], ["liver", "left kidney"]), tmp_path / "l.ctbl")
    lines = c.read_text().splitlines()
    assert lines[2].startswith("1 liver ") and lines[3].startswith("2 left_kidney ")
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_overwrite_and_inputs(tmp_path):
    a = tmp_path / "a.nii.gz"
    a.write_text("x")
    with pytest.raises(OutputError, match="--overwrite"):
        check_outputs([a], overwrite=False)
    check_outputs([a], overwrite=True)
    with pytest.raises(OutputError, match="would replace an input"):
        check_outputs([a], overwrite=True, inputs=[str(a)])
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        prepare_output_dir(f)


def test_transaction_all_or_nothing(tmp_path):
    ok = tmp_path / "one.txt"
    with pytest.raises(KeyboardInterrupt):
        with OutputTransaction() as tx:
            tx.add(ok, lambda p: p.write_text("1"))
            tx.add(tmp_path / "two.txt", lambda p: p.write_text("2"))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with OutputTransaction() as tx:
        tx.add(ok, lambda p: p.write_text("1"))
    assert ok.read_text() == "1" and len(list(tmp_path.iterdir())) == 1


def test_unwritable_folder(tmp_path, monkeypatch):
    d = tmp_path / "ro"
    d.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: False)  # as for a read-only mount
    with pytest.raises(OutputError, match="not writable"):
        prepare_output_dir(d)


def test_disk_full_is_clean(tmp_path, monkeypatch):
    import errno

    def full(p):
        p.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match="no space left"):
        with OutputTransaction() as tx:
            tx.add(tmp_path / "x.nii.gz", full)
    assert list(tmp_path.iterdir()) == []


def test_seg_nrrd_like_slicer_writes_it(tmp_path):
    """Per-segment extents, generated names/colours flagged, terminology carried, and an
    automatic result is 'in progress', not 'completed'."""
    img, lab = phantom()
    term = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^"
            "Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^")
    present = {1: SegmentInfo(1, "Liver", (200, 100, 50), term), 2: SegmentInfo(2)}
    plan = make_plan(present, [1, 2])
    hdr = nrrd.read_header(str(write_seg_nrrd(lab.array, img, plan, tmp_path / "x.seg.nrrd")))
    z, y, x = np.nonzero(lab.array == 1)
    assert hdr["Segment0_Extent"] == f"{x.min()} {x.max()} {y.min()} {y.max()} {z.min()} {z.max()}"
    assert hdr["Segment0_NameAutoGenerated"] == "0" and hdr["Segment0_ColorAutoGenerated"] == "0"
    assert hdr["Segment1_NameAutoGenerated"] == "1" and hdr["Segment1_ColorAutoGenerated"] == "1"
    assert hdr["Segment0_Tags"] == f"Segmentation.Status:inprogress|TerminologyEntry:{term}|"
    assert "completed" not in hdr["Segment1_Tags"]


def test_unicode_names_round_trip(tmp_path):
    img, lab = phantom()
    plan = make_plan({1: SegmentInfo(1), 2: SegmentInfo(2)}, [1, 2], ["Leber ü", "脾臓"])
    p = write_seg_nrrd(lab.array, img, plan, tmp_path / "u.seg.nrrd")
    assert "Segment1_Name:=脾臓\n".encode() in p.read_bytes()[:4000]  # UTF-8, as Slicer writes
    from medseg.labels import read_support_label

    back = read_support_label(p, img)
    assert [back.segments[v].name for v in back.values] == ["Leber ü", "脾臓"]
    c = write_color_table(plan, tmp_path / "u.ctbl")
    assert "1 Leber_ü " in c.read_text(encoding="utf-8")
    t = write_atomic(tmp_path / "u.txt", lambda q: itksnap_labels(plan, q))
    assert '"脾臓"' in t.read_text(encoding="utf-8")


def test_output_names_are_safe_and_collisions_refused(tmp_path):
    from medseg.errors import UsageError

    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001." + "1" * 200
    stem = export.query_stem(f"/data/{uid}.mhd")
    assert len(stem.encode()) <= export.paths.MAX_STEM_BYTES and stem.startswith("1.3.6.1.4.1")
    paths = export.output_paths(tmp_path, stem, ["nifti", "seg.nrrd"])
    for p in paths.values():
        write_atomic(p, lambda q: q.write_text("x"))  # no "File name too long"
    assert export.query_stem("CT.1.2.3") == "CT.1.2.3" and export.query_stem("a/b\nc") == "b_c"
    with pytest.raises(UsageError, match="also the nifti output"):
        export.output_paths(tmp_path, "q", ["nifti"], report=tmp_path / "q_labels.nii.gz")
    with pytest.raises(UsageError, match="PNG, PDF or SVG"):
        export.output_paths(tmp_path, "q", ["nifti"], qc=tmp_path / "qc.jpg")


def test_overwrite_never_destroys_on_failure(tmp_path):
    """With --overwrite, a failure while writing restores the earlier outputs."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    b.mkdir()  # an output path that is a folder
    with pytest.raises(OutputError, match="is a folder"):
        check_outputs([a, b], overwrite=True)
    with pytest.raises(OutputError, match="is a folder"):
        with OutputTransaction(overwrite=True) as tx:
            tx.add(a, lambda p: p.write_text("new a"))
            tx.add(b, lambda p: p.write_text("new b"))
    assert a.read_text() == "old a" and b.is_dir()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_concurrent_run_loses_cleanly(tmp_path):
    """An output that appears while a run works is a conflict (exit 4), not replaced."""
    a = tmp_path / "a.txt"

    def racing(p):
        p.write_text("mine")
        a.write_text("theirs")  # another run finished first

    with pytest.raises(OutputError, match="appeared while this run was working"):
        with OutputTransaction(overwrite=False) as tx:
            tx.add(tmp_path / "z.txt", lambda p: p.write_text("z"))
            tx.add(a, racing)
    assert a.read_text() == "theirs" and not (tmp_path / "z.txt").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]
