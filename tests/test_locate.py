"""Finding the structure in a whole scan: slice correspondence, extent, placement, shared
frames of reference, k-shot and fully labelled supports (weight-free path)."""

import numpy as np
import pytest

from medseg.frames import volume_to_frames
from medseg.io import Volume
from medseg.locate import PlacementParams, correspond, expected_frames, place
from medseg.locate.ncc import masked_ncc_shift
from medseg.locate.shared import shared_frame

ORGAN = (140.0, 200.0)  # mm along the body axis where the "organ" is


def body(n: int, dz: float, z0: float, scale: float = 1.0, shape=(96, 96), px: float = 3.5,
         shift=(0.0, 0.0), origin=(0.0, 0.0, 0.0), seed: int = 0) -> tuple[Volume, Volume]:
    """A torso-like phantom whose cross-section changes along the body (so slices can be
    told apart) with an organ between ORGAN mm; slice k lies at z0 + k * dz mm of anatomy."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.meshgrid((np.arange(h) - h / 2) * px - shift[0], (np.arange(w) - w / 2) * px
                         - shift[1], indexing="ij")
    img = np.full((n, h, w), -1000.0, np.float32)
    lab = np.zeros((n, h, w), np.uint8)
    for k in range(n):
        z = z0 + k * dz
        ry, rx = scale * (90 + 25 * np.sin(z / 45.0)), scale * (130 + 20 * np.cos(z / 70.0))
        torso = (yy / ry) ** 2 + (xx / rx) ** 2 < 1
        img[k][torso] = 20.0
        spine = ((yy - 0.6 * ry) / (12 * scale)) ** 2 + ((xx - 15 * np.sin(z / 30)) /
                                                            (12 * scale)) ** 2 < 1
        img[k][spine] = 500.0
        if z > 230:  # lungs above the organ
            for sgn in (-1, 1):
                lung = ((yy + 10) / (50 * scale)) ** 2 + ((xx - sgn * 55 * scale) /
                                                          (35 * scale)) ** 2 < 1
                img[k][lung & torso] = -800.0
        if ORGAN[0] <= z <= ORGAN[1]:
            r = scale * 35 * np.sqrt(max(0.0, 1 - ((z - 170) / 32) ** 2))
            organ = ((yy + 20 * scale) / (r + 1e-3)) ** 2 + ((xx - 40 * scale) /
                                                             (1.3 * r + 1e-3)) ** 2 < 1
            img[k][organ & torso] = 90.0
            lab[k][organ & torso] = 1
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    geo = dict(spacing=(px, px, dz), origin=origin)
    return Volume(img.astype(np.int16), **geo), Volume(lab, **geo)


def organ_frames(n, dz, z0):
    z = z0 + np.arange(n) * dz
    return np.nonzero((z >= ORGAN[0]) & (z <= ORGAN[1]))[0]


def test_slice_correspondence_finds_the_extent():
    """Another 'patient' (5 % larger), other slice spacing, a slab starting elsewhere."""
    s_img, s_lab = body(90, 4.0, 0.0, seed=1)
    q_img, q_lab = body(60, 5.0, 60.0, scale=1.05, seed=2, origin=(0, 0, 900))
    qf, sf = volume_to_frames(q_img), volume_to_frames(s_img)
    corr = correspond(q_img, s_img, qf, sf)
    assert corr.method == "content" and not corr.shared_frame
    assert 0.85 < corr.slope < 1.2
    truth = (60.0 + np.arange(60) * 5.0) / 4.0  # anatomy mm -> support slice
    ok = ~np.isnan(corr.support_pos)
    assert np.abs(corr.support_pos[ok] - truth[ok]).max() < 3.0
    s_frames = np.nonzero(s_lab.array.any(axis=(1, 2)))[0]
    pred = np.nonzero(expected_frames(corr, s_frames))[0]
    true = organ_frames(60, 5.0, 60.0)
    assert abs(pred.min() - true.min()) <= 1 and abs(pred.max() - true.max()) <= 1


def test_whole_scan_transfer_keeps_masks_inside_the_extent(tmp_path):
    from medseg.api import Segmenter

    s_img, s_lab = body(90, 4.0, 0.0, seed=1)
    q_img, q_lab = body(60, 5.0, 60.0, scale=1.05, seed=2, origin=(0, 0, 900))
    seg = Segmenter()
    res = seg.segment(s_img, s_lab, q_img, method="transfer", shots=1, bank_size=4)
    frames_with = np.nonzero(res.labels.array.any(axis=(1, 2)))[0]
    true = organ_frames(60, 5.0, 60.0)
    assert frames_with.min() >= true.min() - 1 and frames_with.max() <= true.max() + 1
    off = seg.segment(s_img, s_lab, q_img, method="transfer", shots=1, bank_size=4,
                      presence="off")
    assert off.labels.array.any(axis=(1, 2)).sum() > len(true) + 5  # masks everywhere before
    rec = res.report.per_frame
    assert [r.expected[0] for r in rec].count(True) in range(len(true) - 1, len(true) + 3)
    assert res.report.location["method"] == "content"


def test_small_field_of_view_is_found_by_translation_search():
    rng = np.random.default_rng(0)
    big = rng.random((120, 140)).astype(np.float32)
    from scipy import ndimage

    big = ndimage.gaussian_filter(big, 3)
    crop = big[30:80, 70:130]  # a small field of view off-centre
    dy, dx, score = masked_ncc_shift(big, crop)
    assert (dy, dx) == (30, 70) and score > 0.99
    # as a placement: where the support's centre lies relative to the query's centre
    cy, cx, zoom, score = place(big, (1.0, 1.0), crop, (1.0, 1.0), p=PlacementParams(grid_mm=1.0))
    assert (round(cy), round(cx)) == (round(59.5 - 30 - 24.5), round(69.5 - 70 - 29.5))


def test_small_fov_query_gets_the_structure_where_it_is():
    from medseg.api import Segmenter

    s_img, s_lab = body(60, 4.0, 80.0, shape=(110, 110), seed=3)
    q_full, q_lab = body(40, 4.0, 100.0, shape=(110, 110), seed=4, scale=1.02)
    crop = (slice(None), slice(10, 60), slice(55, 105))  # the organ's quadrant only
    q = Volume(q_full.array[crop], q_full.spacing, (0, 0, 0))
    ref = q_lab.array[crop]
    seg = Segmenter()
    got = seg.segment(s_img, s_lab, q, method="transfer", shots=1, bank_size=2).labels.array
    centre = seg.segment(s_img, s_lab, q, method="transfer", shots=1, bank_size=2,
                         placement="centre").labels.array

    def dice(a, b):
        return 2 * (a & b).sum() / max(1, a.sum() + b.sum())

    assert dice(got > 0, ref > 0) > 0.5 > dice(centre > 0, ref > 0)


def test_shared_frame_detected_or_not():
    s_img, s_lab = body(50, 4.0, 100.0, seed=5, origin=(10, -5, 100))
    q_same, _ = body(40, 5.0, 110.0, seed=6, origin=(10, -5, 110))  # same space, other noise
    q_moved, _ = body(40, 5.0, 110.0, seed=6, origin=(10, -5, 700))  # far away in world
    for q, want in ((q_same, True), (q_moved, False)):
        shared, ev = shared_frame(q, s_img, volume_to_frames(q), volume_to_frames(s_img))
        assert shared is want, ev
    corr = correspond(q_same, s_img, volume_to_frames(q_same), volume_to_frames(s_img))
    assert corr.method == "world" and np.allclose(corr.support_pos[:4], [2.5, 3.75, 5, 6.25])


def test_shared_frame_with_a_full_label_matches_the_copy(tmp_path):
    """Atlas style: scans in one space, the structure labelled on every slice."""
    from medseg.api import Segmenter

    s_img, s_lab = body(50, 4.0, 100.0, seed=5)
    q_img, q_lab = body(50, 4.0, 100.0, seed=6, scale=1.02)
    res = Segmenter().segment(s_img, s_lab, q_img, method="transfer", bank_size=1)
    g = res.groups[0]
    assert len(g.frames) == min(16, len(g.labelled[0]))  # the richest support by default
    assert res.report.location["shared_frame"] and g.placement[0]["method"] == "world"
    a, b = res.labels.array > 0, q_lab.array > 0
    copy = s_lab.array > 0  # same grid here: the copy baseline is the support label itself
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    dice_copy = 2 * (copy & b).sum() / (copy.sum() + b.sum())
    assert dice >= dice_copy - 0.02, (dice, dice_copy)


@pytest.mark.parametrize("shots", [1, 3, 16, 0])
def test_kshot_and_full_supports_pair_frames_with_their_counterparts(shots):
    from medseg.api import Segmenter

    s_img, s_lab = body(90, 4.0, 0.0, seed=1)
    q_img, _ = body(60, 5.0, 60.0, scale=1.05, seed=2)
    res = Segmenter().segment(s_img, s_lab, q_img, method="transfer", shots=shots, bank_size=3)
    g = res.groups[0]
    want = {1: 1, 3: 3, 16: 16, 0: 1}[shots]  # auto: dense only in a shared frame
    assert len(g.frames) == want
    members = res.matches[0]
    pos = np.array([r.support_position if r.support_position is not None else np.nan
                    for r in res.report.per_frame])
    src = g.member_frames[members]
    inside = ~np.isnan(pos) & np.array([r.expected[0] for r in res.report.per_frame])
    nearest = np.asarray(g.frames)[np.argmin(np.abs(pos[inside, None] - np.asarray(g.frames)),
                                             axis=1)]
    np.testing.assert_array_equal(src[inside], nearest)  # each frame with its counterpart
