"""The whole pipeline on CPU with the real sam2 code and a random-weight checkpoint."""

import json

import numpy as np
import pytest
from conftest import OBLIQUE, phantom
from test_io import assert_same_geometry

from medseg.errors import InputError, OutputError, UsageError
from medseg.io import Volume, read_image, write_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Support: axis-aligned, 2.5 mm slices. Query: a different oblique, anisotropic scan."""
    d = tmp_path_factory.mktemp("scans")
    s_img, s_lab = phantom(shape=(20, 48, 56), spacing=(0.7, 0.7, 2.5), direction=np.eye(3), seed=1)
    q_img, q_lab = phantom(shape=(14, 40, 44), spacing=(0.9, 0.8, 3.0), direction=OBLIQUE, seed=2)
    paths = {}
    for name, vol in (("support", s_img), ("support_label", s_lab), ("query", q_img),
                      ("query_label", q_lab)):
        paths[name] = d / f"{name}.nii.gz"
        write_image(vol, paths[name])
    return paths


@pytest.mark.parametrize("mode,matcher", [("pair", "sam2"), ("volume", "ssim"), ("pair", "ncc")])
def test_pipeline_geometry_and_report(segmenter, scans, tmp_path, mode, matcher):
    res = segmenter.segment(scans["support"], scans["support_label"], scans["query"],
                            labels=[2, 1], names=["spleen", "liver"], mode=mode, matcher=matcher,
                            bank_size=3, seed=0)
    q = read_image(scans["query"])
    assert_same_geometry(res.labels, q)
    assert res.labels.array.dtype == np.uint8
    assert set(np.unique(res.labels.array)) <= {0, 1, 2}
    assert res.labels.array.any()  # biased random model: objects everywhere
    rep = res.report.to_dict()
    for key in ("versions", "machine", "engine", "config", "inputs", "segments",
                "support_groups", "per_frame", "timings_s"):
        assert key in rep, key
    assert rep["engine"]["random_weights"] and len(rep["engine"]["checkpoint_sha256"]) == 64
    assert rep["config"]["mode"] == mode and rep["config"]["matcher"] == matcher
    assert [s["name"] for s in rep["segments"]] == ["spleen", "liver"]
    assert [s["support_value"] for s in rep["segments"]] == [2, 1]
    assert [s["output_value"] for s in rep["segments"]] == [1, 2]
    assert len(rep["per_frame"]) == len(res.query_frames)
    row = rep["per_frame"][0]
    assert {"matched_member", "object_score", "area_px", "query_slice"} <= set(row)
    for stage in ("load", "frames", "support", "match", "propagate", "postprocess"):
        assert stage in rep["timings_s"]
    paths = res.save(tmp_path, qc=tmp_path / "qc.png")
    nii = read_image(paths["nifti"])
    assert_same_geometry(nii, q)
    np.testing.assert_array_equal(nii.array, res.labels.array)
    seg = read_image(paths["seg.nrrd"])
    assert_same_geometry(seg, q)
    np.testing.assert_array_equal(seg.array, res.labels.array)
    saved = json.loads(paths["report"].read_text())
    assert saved["outputs"]["nifti"] == str(paths["nifti"]) and "write" in saved["timings_s"]
    assert paths["qc"].stat().st_size > 10_000
    with pytest.raises(OutputError, match="--overwrite"):
        res.save(tmp_path)


def test_deterministic(segmenter, scans):
    kw = dict(labels=[1], bank_size=3, seed=4, mode="pair", matcher="sam2")
    a = segmenter.segment(scans["support"], scans["support_label"], scans["query"], **kw)
    b = segmenter.segment(scans["support"], scans["support_label"], scans["query"], **kw)
    np.testing.assert_array_equal(a.labels.array, b.labels.array)
    np.testing.assert_array_equal(a.object_scores, b.object_scores)
    assert [r.matched_member for r in a.report.per_frame] == \
        [r.matched_member for r in b.report.per_frame]


def test_in_memory_volumes_transfer_and_kshot(segmenter, scans):
    s, lb, q = (read_image(scans[k]) for k in ("support", "support_label", "query"))
    res = segmenter.segment(s, lb, q, labels=[1, 2], method="transfer", matcher="ncc", shots=2,
                            bank_size=4)
    assert_same_geometry(res.labels, q)
    g = res.groups
    # two slices at 1/4 and 3/4 of each structure's extent sharing one bank of --bank-size
    # members: each slice and 4 // 2 - 1 augmented copies of it
    assert all(len(x.slices) == 2 for x in g) and len(g[0].bank) == 4
    assert sorted(m["source_slice"] for m in g[0].bank.params) == sorted(g[0].slices * 2)
    ext = g[0].labelled[0]
    assert g[0].frames == [int(ext[len(ext) // 4]), int(ext[3 * len(ext) // 4])]
    # matcher transfer of the phantom finds both organs somewhere
    assert {1, 2} <= set(np.unique(res.labels.array))


@pytest.mark.parametrize("mode", ["pair", "volume"])
def test_overlaps_kept_through_sam2(segmenter, scans, mode):
    kw = dict(labels=[1, 2], bank_size=2, matcher="ncc", mode=mode, z_range="1:7")
    first = segmenter.segment(scans["support"], scans["support_label"], scans["query"], **kw)
    keep = segmenter.segment(scans["support"], scans["support_label"], scans["query"],
                             overlap="keep", **kw)
    np.testing.assert_array_equal(keep.labels.array, first.labels.array)
    assert first.structure_masks() is None
    own = keep.structure_masks()
    assert own.shape == (2, *keep.labels.shape)
    for i, v in enumerate((1, 2)):  # each structure's own mask holds its labelmap voxels
        assert own[i][keep.labels.array == v].all()
        np.testing.assert_array_equal(keep.mask(v), own[i])
    fr = keep.structure_frames
    assert not fr[:, :1].any() and not fr[:, 7:].any()  # post-processing applies to them too


def test_postprocess_options(segmenter, scans):
    res = segmenter.segment(scans["support"], scans["support_label"], scans["query"], labels=[1],
                            bank_size=1, matcher="ncc", keep_largest=True, fill_holes=True,
                            z_range="2:9")
    fr = res.label_frames
    assert not fr[:2].any() and not fr[9:].any()
    from scipy import ndimage

    assert ndimage.label(fr == 1)[1] <= 1


def test_user_errors(segmenter, scans, tmp_path):
    s, lb, q = scans["support"], scans["support_label"], scans["query"]
    with pytest.raises(InputError, match=r"value 7 not present; values present: 1, 2"):
        segmenter.segment(s, lb, q, labels=[7])
    with pytest.raises(UsageError):
        segmenter.segment(s, lb, q, mode="sideways")
    other = tmp_path / "other_label.nii.gz"
    lab = read_image(lb)
    write_image(Volume(lab.array, (0.7, 0.7, 2.4), lab.origin, lab.direction), other)
    with pytest.raises(InputError, match="does not match its image"):
        segmenter.segment(s, other, q, method="transfer", matcher="ncc")
    res = segmenter.segment(s, other, q, method="transfer", matcher="ncc", resample_label=True,
                            bank_size=0)
    assert res.labels.shape == read_image(q).shape
    empty = tmp_path / "empty.nii.gz"
    write_image(lab.with_array(np.zeros_like(lab.array)), empty)
    with pytest.raises(InputError, match="is empty"):
        segmenter.segment(s, empty, q)
    floaty = tmp_path / "float.nii.gz"
    write_image(lab.with_array(lab.array.astype(np.float32) * 0.5), floaty)
    with pytest.raises(InputError, match="non-integer"):
        segmenter.segment(s, floaty, q)
    with pytest.raises(InputError, match="holds no voxel of label_2"):
        segmenter.segment(s, lb, q, labels=[2], support_slice=0)
    with pytest.raises(InputError, match="outside the support volume"):
        segmenter.segment(s, lb, q, support_slice=500)
    with pytest.raises(InputError, match="not a bare array"):
        segmenter.segment(np.zeros((3, 3, 3)), lb, q)


def test_single_slice_query(segmenter, scans, tmp_path):
    q = read_image(scans["query"])
    one = Volume(q.array[5:6], q.spacing, q.origin, q.direction)
    res = segmenter.segment(scans["support"], scans["support_label"], one, labels=[1],
                            bank_size=1, mode="volume", matcher="ncc")
    assert res.labels.shape == one.shape
