"""One labelled slice, for real: completion through the painted scan, the painted scan
itself as the query, corrections that come back exactly, several supports."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import TRANSFER, phantom, run_cli, write_dicom_series
from scipy import ndimage

from medseg import data
from medseg.api import Segmenter
from medseg.frames import label_to_frames, volume_to_frames
from medseg.io import Volume, read_image, write_image
from medseg.labels import read_support_label
from medseg.labels.record import SliceRecord, fingerprint
from medseg.pipeline import same_scan
from medseg.support.complete import COMPLETION, complete_by_registration
from medseg.support.drawn import Drawn, drawn_of

run = run_cli


def _ellipsoid_scan(n: int = 40, seed: int = 0) -> tuple[Volume, Volume]:
    """A CT-like scan (2 mm slices) with one ellipsoidal organ over the middle 60 % (frames
    8..31 of 40)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.arange(n), np.linspace(-1, 1, 64), np.linspace(-1, 1, 64),
                          indexing="ij")
    organ = (((z - (n - 1) / 2) / (0.3075 * n)) ** 2 + (y / 0.45) ** 2
             + ((x - 0.1) / 0.35) ** 2) < 1
    body = (y / 0.9) ** 2 + (x / 0.9) ** 2 < 1
    img = np.where(body, 20.0, -1000.0) + np.where(organ, 60.0, 0.0)
    img = (img + rng.normal(0, 6, img.shape)).astype(np.int16)
    geo = {"spacing": (1.5, 1.5, 2.0)}
    return Volume(img, **geo), Volume(organ.astype(np.uint8), **geo)


def _one_slice(label: Volume, value: int = 1, frame: int | None = None) -> tuple[Volume, int]:
    """The label blanked to one axial slice (its largest, or ``frame``)."""
    stack = volume_to_frames(label.with_array(label.array.astype(np.float32)))
    f = stack.view_of(label.array == value)
    k = int(np.argmax(f.sum(axis=(1, 2)))) if frame is None else frame
    one = np.zeros(f.shape, bool)
    one[k] = f[k]
    return label.with_array(stack.to_volume_array(one).astype(np.uint8) * value), k


def _painted_once(img: Volume, lab: Volume):
    """(intensities, spacing, what was drawn, truth, painted frame) of ``lab`` painted on its
    largest slice, in frames layout, as completion takes them."""
    one, k = _one_slice(lab)
    raw = label_to_frames(img.with_array(img.array.astype(np.float32)))
    drawn = drawn_of(label_to_frames(one).astype(bool), None, "axial")
    return raw, volume_to_frames(img).spacing, drawn, label_to_frames(lab).astype(bool), k


def test_one_painted_slice_is_completed_to_within_a_slice_of_the_extent():
    raw, spacing, drawn, truth, k = _painted_once(*_ellipsoid_scan())
    assert not drawn.full and drawn.painted == [k]
    c = complete_by_registration(raw, spacing, drawn)
    t_ext = np.nonzero(truth.any(axis=(1, 2)))[0]
    assert c.extent is not None
    assert abs(c.extent[0] - t_ext[0]) <= 1 and abs(c.extent[1] - t_ext[-1]) <= 1, \
        (c.extent, t_ext[[0, -1]], c.info)
    assert np.array_equal(c.masks[k], truth[k])  # the painted slice exactly as drawn
    dice = 2 * (c.masks & truth).sum() / (c.masks.sum() + truth.sum())
    assert dice > 0.9


def _lung_with_a_dome(n: int = 40, seed: int = 0) -> tuple[Volume, Volume]:
    """An air-filled 'lung' (frames 8..31 of 40, 2 mm slices) in soft tissue whose lower
    part wraps round a soft-tissue dome (frames 8..15): there it is a crescent, which a
    carried disc no longer fits."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.arange(n), np.linspace(-1, 1, 128), np.linspace(-1, 1, 128),
                          indexing="ij")
    r = np.sqrt(y ** 2 + x ** 2)
    dome = np.sqrt(y ** 2 + (x - 0.25) ** 2) < np.where(z >= 16, 0.0,
                                                       np.where(z == 15, 0.55, 0.62))
    lung = (r < 0.5) & ~dome & (z >= 8) & (z <= 31)
    img = np.where(r < 0.9, 40.0, -1000.0) + np.where(lung, -890.0, 0.0)
    img = (img + rng.normal(0, 6, img.shape)).astype(np.int16)
    geo = {"spacing": (1.5, 1.5, 2.0)}
    return Volume(img, **geo), Volume(lung.astype(np.uint8), **geo)


def test_the_tail_follows_a_structure_the_carried_mask_no_longer_fits():
    raw, spacing, drawn, truth, k = _painted_once(*_lung_with_a_dome())
    t_ext = np.nonzero(truth.any(axis=(1, 2)))[0]
    without = complete_by_registration(raw, spacing, drawn,
                                       dataclasses.replace(COMPLETION, tail_growth=0.0))
    assert without.extent is not None and without.extent[0] > t_ext[0] + 1, without.info
    c = complete_by_registration(raw, spacing, drawn)
    assert abs(c.extent[0] - t_ext[0]) <= 1 and abs(c.extent[1] - t_ext[-1]) <= 1, \
        (c.extent, t_ext[[0, -1]], c.info)
    assert any("went on" in why for why in c.info["ends"].values())
    assert np.array_equal(c.masks[k], truth[k])
    lower = slice(t_ext[0], 16)
    dice = 2 * (c.masks[lower] & truth[lower]).sum() / (c.masks[lower].sum() + truth[lower].sum())
    assert dice > 0.8, dice


def test_a_3d_label_is_taken_as_it_is_and_a_gap_means_painted_slices():
    m = np.zeros((10, 8, 8), bool)
    m[2:7, 2:5, 2:5] = True
    assert drawn_of(m, None, "axial").full
    m[4] = False  # slices 2, 3, 5, 6: painted slices with a gap
    d = drawn_of(m, None, "axial")
    assert not d.full and d.painted == [2, 3, 5, 6]
    assert not drawn_of(m[:3], None, "axial").full or m[:3].any(axis=(1, 2)).sum() >= 3
    assert drawn_of(np.concatenate([m[:2], m[2:3]]), None, "axial", complete="on").full is False


def test_slice_record_tells_what_the_user_changed():
    est = np.zeros((6, 8, 8), bool)
    est[1:5, 2:6, 2:6] = True
    drawn = np.zeros(6, bool)
    drawn[2] = True
    rec = SliceRecord.of(est, drawn, "axial")
    assert rec.drawn == (2,) and set(rec.estimated) == {1, 3, 4}
    assert SliceRecord.from_tags(rec.tags()) == rec
    assert SliceRecord.from_dict(rec.as_dict()) == rec
    edited = est.copy()
    edited[3, 2, 2] = False  # a corrected slice
    edited[4] = False  # an erased slice: drawn empty ("not here")
    edited[5, 3:5, 3:5] = True  # a newly painted slice
    d = drawn_of(edited, rec, "axial")
    assert sorted(d.frames) == [2, 3, 4, 5] and d.source == "record"
    assert sorted(d.kept) == [1]  # the estimate the user left as it was
    assert not d.frames[4].any() and np.array_equal(d.frames[3], edited[3])
    assert fingerprint(est[1]) == rec.estimated[1]
    # a record of another grid or axis is not trusted
    assert drawn_of(edited, SliceRecord("coronal", 6, (2,), rec.estimated), "axial").source \
        != "record"


def test_same_scan_detection(tmp_path):
    img, _ = phantom(shape=(8, 20, 24), seed=1)
    other, _ = phantom(shape=(8, 20, 24), seed=2)
    a = tmp_path / "a.nii.gz"
    write_image(img, a)
    b = tmp_path / "b.nii.gz"
    write_image(img, b)  # a copy: same grid, same voxels
    va, vb = read_image(a), read_image(b)
    assert same_scan(a, va, None, va)  # no query
    assert same_scan(a, va, a, va)  # the same file
    assert same_scan(a, va, b, vb)  # the same grid and voxels
    assert not same_scan(a, va, tmp_path / "c", other)
    shifted = Volume(img.array, img.spacing, (1.0, 2.0, 3.0), img.direction)
    assert not same_scan(a, va, tmp_path / "d", shifted)  # same voxels, another place
    s1 = write_dicom_series(tmp_path / "s1", img, series="1.2.3.9")
    d1, d2 = read_image(s1), read_image(s1)
    assert same_scan(s1, d1, tmp_path / "s1", d2)  # the same series


def test_in_scan_run_keeps_the_painted_slice_and_reruns_with_a_correction(tmp_path, capsys):
    img, lab = _ellipsoid_scan(seed=3)
    one, k = _one_slice(lab)
    s, lbl = tmp_path / "scan.nii.gz", tmp_path / "scan_label.nii.gz"
    write_image(img, s)
    write_image(one, lbl)
    out = tmp_path / "out"
    code, _, err = run(["segment", "-s", s, "-l", lbl, "-o", out, *TRANSFER], capsys)
    assert code == 0, err
    res = read_image(out / "scan_labels.nii.gz")
    frames = volume_to_frames(img)
    got, truth = frames.view_of(res.array == 1), frames.view_of(lab.array == 1)
    assert np.array_equal(got[k], truth[k])
    assert got.any(axis=(1, 2)).sum() > 15  # completed, not one slice
    seg = read_support_label(out / "scan.seg.nrrd", img)
    rec = seg.segments[1].record
    assert rec is not None and rec.drawn == (k,)
    # correct one estimated slice in the .seg.nrrd and rerun with it as the label
    f = k + 6
    edited = frames.view_of(res.array).copy()
    edited[f] = truth[f] * 1
    from medseg.export.seg_nrrd import seg_nrrd
    from medseg.labels import make_plan

    fixed = tmp_path / "fixed.seg.nrrd"
    seg_nrrd(frames.to_volume_array(edited), img, make_plan(seg.segments), fixed, None,
             {1: rec.tags()})
    res2 = Segmenter().segment(s, fixed, None, method="transfer", bank_size=1)
    g2 = res2.label_frames == 1
    assert np.array_equal(g2[f], truth[f]) and np.array_equal(g2[k], truth[k])
    assert set(res2.records()[1].drawn) == {k, f}
    assert res2.report.support_completion[0]["label"] == "record"


def test_an_erased_slice_never_loses_the_rest_of_a_result(tmp_path):
    """A result of another scan (its record: no slice drawn, every slice estimated), found
    three slices too far; the user erases the last of them. The rerun keeps the erased
    slice empty and every other slice as it was: erasing alone gives nothing to estimate
    from (before: an empty result)."""
    from medseg.export.seg_nrrd import seg_nrrd
    from medseg.labels import make_plan

    img, lab = _ellipsoid_scan(seed=5)
    frames = volume_to_frames(img)
    truth = frames.view_of(lab.array == 1)
    has = np.flatnonzero(truth.any(axis=(1, 2)))
    previous = truth.copy()
    previous[has[-1] + 1: has[-1] + 4] = truth[has[-1]]
    rec = SliceRecord.of(previous, np.zeros(len(truth), bool), "axial")
    assert rec.drawn == ()
    edited = previous.copy()
    f = has[-1] + 3
    edited[f] = False
    label = Volume(frames.to_volume_array(edited.astype(np.uint8)), spacing=img.spacing)
    fixed = tmp_path / "fixed.seg.nrrd"
    seg_nrrd(label.array, img, make_plan(read_support_label(label, img).segments), fixed, None,
             {1: rec.tags()})
    res = Segmenter().segment(img, fixed, None, method="transfer", bank_size=1)
    assert np.array_equal(res.label_frames == 1, edited)
    assert res.report.support_completion[0]["kept_from_previous_result"] == len(has) + 2


def test_drawn_pixels_win_over_another_structures_estimate():
    """Two structures painted on neighbouring slices, the body (listed first) around the
    organ: the body's estimate on the organ's slice covers the organ, and the organ's
    drawn pixels still come back exactly (before: the body kept them)."""
    img, lab = _ellipsoid_scan(seed=3)
    frames = volume_to_frames(img)
    organ = frames.view_of(lab.array == 1)
    body = frames.view_of(img.array > -500)
    f = int(np.argmax(organ.sum(axis=(1, 2))))
    painted = np.zeros(organ.shape, np.uint8)
    painted[f - 1][body[f - 1]] = 2
    painted[f][organ[f]] = 1
    label = Volume(frames.to_volume_array(painted), spacing=img.spacing)
    res = Segmenter().segment(img, label, None, method="transfer", labels=[2, 1])
    got = res.label_frames
    assert (got[f] == 1).any()  # the body's estimate reached the organ's slice
    assert np.array_equal(got[f] == 2, organ[f])  # output value 2: the organ, drawn
    assert np.array_equal(got[f - 1] == 1, body[f - 1])


def _completion_of(new: dict[int, int], drawn: dict[int, int], kept: dict[int, int]):
    """A Completion and a Drawn on 10 frames of 8 x 8; values are mask areas (pixels)."""
    from medseg.support.complete import Completion
    from medseg.support.drawn import Drawn

    def mask(area: int) -> np.ndarray:
        m = np.zeros(64, bool)
        m[:area] = True
        return m.reshape(8, 8)

    masks = np.zeros((10, 8, 8), bool)
    for f, a in {**new, **drawn}.items():
        masks[f] = mask(a)
    flags = np.zeros(10, bool)
    flags[list(drawn)] = True
    d = Drawn({f: mask(a) for f, a in drawn.items()}, False, "record",
              {f: mask(a) for f, a in kept.items()})
    return Completion(masks, flags, "registration"), d


@pytest.mark.parametrize("new, drawn, kept, expect", [
    # only an erased slice: every untouched estimate stays, the new one is not used
    ({2: 5}, {4: 0}, {1: 10, 2: 20, 3: 30}, {1: 10, 2: 20, 3: 30, 4: 0}),
    # a painted or redrawn slice: the new estimate holds everywhere, also where it is
    # empty (slices found beyond where the structure ends are cut back)
    ({1: 5, 2: 30}, {3: 20, 6: 20}, {1: 10, 2: 20, 8: 40}, {1: 5, 2: 30, 8: 0}),
    ({4: 12, 5: 0}, {3: 20, 6: 0}, {4: 30, 5: 30}, {4: 12, 5: 0}),  # 12 of 60: 0.2
    # ... unless it collapsed (under 0.2 of the previous result on the untouched slices:
    # the user's slices cannot carry the structure): those slices are kept beside it
    ({4: 11, 5: 0}, {3: 20, 6: 0}, {4: 30, 5: 30}, {4: 30, 5: 30}),
    ({4: 1, 5: 0, 7: 3}, {3: 20}, {4: 30, 5: 30}, {4: 30, 5: 30, 7: 3}),
])
def test_what_a_correction_keeps_of_the_previous_result(new, drawn, kept, expect):
    from medseg.support.complete import keep_previous

    c, d = _completion_of(new, drawn, kept)
    keep_previous(c, d)
    assert {f: int(c.masks[f].sum()) for f in expect} == expect
    for f, a in drawn.items():
        assert int(c.masks[f].sum()) == a  # the user's own slices untouched


def test_a_correction_at_a_structures_edges_grows_into_the_previous_result():
    """A user corrects the base and apex of a lung (pyradiomics' lung2 CT, the slices the
    corrections curve picks) and leaves a previous result that over-covers it on the rest.
    Carried from those small slices alone the lung falls short where it widens fast (about
    40 % of its area mid-lung); growing into the previous result's clearly-lung pixels
    fills it, without leaving that result. An estimate that collapsed, or one without a
    previous result (painted slices), is not grown."""
    root = data.fetch(("pyradiomics",), progress=False)
    img = read_image(root / data.PR / "lung2_image.nrrd")
    ref = read_image(root / "derived" / "lung2_lungs.nii.gz").array == 1  # right lung
    raw = label_to_frames(img.with_array(img.array.astype(np.float32)))
    truth = label_to_frames(img.with_array(ref.astype(np.uint8))).astype(bool)
    spacing = volume_to_frames(img).spacing
    edges = [5, 7, 57, 58]
    assert truth[edges].sum() < 0.05 * truth.sum(axis=(1, 2)).max() * len(edges)
    over = np.stack([ndimage.binary_dilation(m, iterations=6) for m in truth])
    drawn = Drawn({f: truth[f] for f in edges}, False, "record",
                  {f: over[f] for f in range(len(truth)) if f not in edges})

    def dice(m):
        return 2 * (m & truth).sum() / (m.sum() + truth.sum())

    off = dataclasses.replace(COMPLETION, grow_in_previous=False)
    short = complete_by_registration(raw, spacing, drawn, off).masks
    grown = complete_by_registration(raw, spacing, drawn).masks
    assert dice(short) < 0.7 and short.sum() < 0.6 * truth.sum(), dice(short)
    assert dice(grown) > 0.9, dice(grown)  # 0.59 -> 0.94 when measured
    assert (grown & ~over).sum() < 0.02 * grown.sum()  # it grew into the previous result
    for f in edges:
        assert np.array_equal(grown[f], truth[f])
    # an estimate that collapsed (judged without the growth) is not grown: the previous
    # result is kept beside it instead (keep_previous)
    high = dataclasses.replace(COMPLETION, collapse_ratio=0.99)
    assert np.array_equal(complete_by_registration(raw, spacing, drawn, high).masks, short)
    painted = Drawn({f: truth[f] for f in edges}, False, "painted")
    assert np.array_equal(complete_by_registration(raw, spacing, painted).masks,
                          complete_by_registration(raw, spacing, painted, off).masks)


@pytest.fixture(scope="module")
def example_ct():
    root = data.fetch(("totalsegmentator",), progress=False)
    img = read_image(root / data.TS / "example_ct.nii.gz")
    lab = read_support_label(root / data.TS / "example_seg_fast_force_split.nii.gz", img)
    return root, img, lab


def test_one_painted_slice_of_the_example_ct(tmp_path, example_ct):
    """The issue's own case: liver and spleen painted on one slice each of the example CT;
    in the same CT and in the example DICOM CT, whole-volume Dice and extents."""
    root, img, lab = example_ct
    arr = np.zeros(img.shape, np.uint8)
    for v in (5, 1):
        one, _ = _one_slice(img.with_array((lab.mask(v) * v).astype(np.uint8)), v)
        arr[one.array > 0] = v
    painted = tmp_path / "one.nii.gz"
    write_image(img.with_array(arr), painted)
    seg = Segmenter()
    same = seg.segment(root / data.TS / "example_ct.nii.gz", painted, None, method="transfer",
                       labels=[5, 1])
    for i, (v, floor) in enumerate(((5, 0.85), (1, 0.80))):
        p, r = same.labels.array == i + 1, lab.mask(v)
        assert 2 * (p & r).sum() / (p.sum() + r.sum()) >= floor
    q = seg.segment(root / data.TS / "example_ct.nii.gz", painted, root / data.TS /
                    "example_ct_dicom", method="transfer", labels=[5, 1])
    ref = read_image(data.fetch(("totalsegmentator",), progress=False) /
                     "derived/example_seg_dicom_on_query.nii.gz")
    for i, (v, floor) in enumerate(((5, 0.72), (1, 0.62))):
        p, r = q.labels.array == i + 1, ref.array == v
        assert 2 * (p & r).sum() / (p.sum() + r.sum()) >= floor
        assert p.any(axis=(1, 2)).sum() > 5  # never one slice where the reference spans 20


def test_several_supports(tmp_path):
    """Two labelled scans as supports: members of both in one bank, each scan's
    correspondence for its own members, the report names both."""
    files = {}
    for name, seed in (("a", 3), ("b", 4), ("q", 5)):
        img, lab = phantom(shape=(10, 32, 36), direction=np.eye(3), seed=seed)
        files[name] = tmp_path / f"{name}.nii.gz"
        write_image(img, files[name])
        one, _ = _one_slice(lab, 1)
        files[name + "l"] = tmp_path / f"{name}_label.nii.gz"
        write_image(one, files[name + "l"])
    res = Segmenter().segment([files["a"], files["b"]], [files["al"], files["bl"]], files["q"],
                              method="transfer", bank_size=2)
    g = res.groups[0]
    assert [p.support for p in g.parts] == [0, 1]
    assert g.parts[0].start == 0 and g.parts[0].stop == g.parts[1].start
    assert g.parts[1].stop == len(g.bank) and all(p.stop > p.start for p in g.parts)
    assert len(res.report.location["supports"]) == 2
    assert res.labels.array.any()
    used = set(res.matches[0][res.matches[0] >= 0].tolist())
    assert used  # members were matched (from either support)


@pytest.mark.slow
def test_sam2_completes_the_painted_scan_and_keeps_the_drawn_slices(tmp_path, segmenter):
    """Method sam2 on the painted scan: SAM2's scan mode with every drawn slice a prompt
    (two slices here), the drawn slices exactly as drawn, SAM2 deciding the rest."""
    img, lab = _ellipsoid_scan(n=12, seed=4)
    a, ka = _one_slice(lab, frame=4)
    b, kb = _one_slice(lab, frame=8)
    two = a.with_array(np.maximum(a.array, b.array))
    s, lbl = tmp_path / "s.nii.gz", tmp_path / "s_label.nii.gz"
    write_image(img, s)
    write_image(two, lbl)
    res = segmenter.segment(s, lbl, None, bank_size=1)
    comp = res.report.support_completion[0]
    assert comp["method"] == "sam2" and comp["label"] == "painted"
    truth = volume_to_frames(img).view_of(lab.array == 1)
    for k in (ka, kb):
        assert np.array_equal(res.label_frames[k] == 1, truth[k])
    assert res.records()[1].drawn == (ka, kb)
