import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg.metrics import (
    dice_iou,
    evaluate_labelmaps,
    per_slice_dice,
    score_label,
    surface_metrics,
)

SPACING = (3.0, 1.0, 0.7)  # z, y, x (anisotropic)


def box(shape=(20, 30, 40), lo=(5, 10, 10), size=(10, 10, 20)):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + s) for a, s in zip(lo, size))] = True
    return m


@pytest.mark.parametrize("axis,shift", [(0, 2), (2, 3), (1, 1)])
def test_shifted_boxes_closed_form(axis, shift):
    ref = box()
    lo = [5, 10, 10]
    lo[axis] += shift
    pred = box(lo=tuple(lo))
    n = (10, 10, 20)[axis]
    d, j = dice_iou(pred, ref)
    assert d == pytest.approx((n - shift) / n)
    assert j == pytest.approx((n - shift) / (n + shift))
    hd100, _, nsd_full = surface_metrics(pred, ref, SPACING, tolerance_mm=shift * SPACING[axis],
                                         percentile=100)
    assert hd100 == pytest.approx(shift * SPACING[axis], rel=1e-5)
    assert nsd_full == pytest.approx(1.0)
    # a tolerance below the smallest non-zero distance leaves only the coincident faces
    _, _, nsd_tight = surface_metrics(pred, ref, SPACING, tolerance_mm=0.5 * min(SPACING))
    assert nsd_tight < 1.0


def test_concentric_spheres_mm():
    sp = (0.5, 0.5, 0.5)
    n = 81
    z, y, x = np.meshgrid(*[(np.arange(n) - n // 2) * 0.5] * 3, indexing="ij")
    r = np.sqrt(z**2 + y**2 + x**2)
    inner, outer = r <= 10.0, r <= 13.0
    d, _ = dice_iou(inner, outer)
    assert d == pytest.approx(2 * 10**3 / (10**3 + 13**3), rel=0.03)
    hd95, assd, nsd = surface_metrics(inner, outer, sp, tolerance_mm=2.0)
    assert hd95 == pytest.approx(3.0, abs=0.5)
    assert assd == pytest.approx(3.0, abs=0.5)
    assert nsd == pytest.approx(0.0, abs=0.02)
    assert surface_metrics(inner, outer, sp, tolerance_mm=3.6)[2] > 0.95


def test_empty_rules():
    e = np.zeros((5, 5, 5), bool)
    f = e.copy()
    f[2, 2, 2] = True
    s = score_label(e, e, (1, 1, 1))
    assert all(math.isnan(v) for v in (s.dice, s.iou, s.hd95_mm, s.assd_mm, s.nsd))
    s = score_label(f, e, (1, 1, 1))
    assert s.dice == 0 and s.iou == 0 and s.nsd == 0
    assert math.isinf(s.hd95_mm) and math.isinf(s.assd_mm)


def test_labelmaps_and_per_slice():
    ref = np.zeros((4, 6, 6), np.uint8)
    ref[1:3, 1:4, 1:4] = 5
    pred = np.zeros_like(ref)
    pred[1:3, 1:4, 1:4] = 1
    pred[3, 0, 0] = 2
    scores = evaluate_labelmaps(pred, ref, (1, 1, 1), labels=[1], ref_labels=[5])
    assert scores[0].dice == 1.0 and scores[0].hd95_mm == 0.0
    ps = per_slice_dice(pred == 1, ref == 5)
    assert math.isnan(ps[0]) and ps[1] == 1.0 and math.isnan(ps[3])


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(*[st.integers(4, 9)] * 3),
    spacing=st.tuples(*[st.floats(0.3, 4.0)] * 3),
    seed=st.integers(0, 10_000),
)
def test_properties(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random(shape) > 0.6, rng.random(shape) > 0.6
    if not a.any() or not b.any():
        return
    d1, _ = dice_iou(a, b)
    d2, _ = dice_iou(b, a)
    assert 0 <= d1 <= 1 and d1 == pytest.approx(d2)
    hd, assd, nsd = surface_metrics(a, b, spacing)
    hd2, assd2, _ = surface_metrics(b, a, spacing)
    assert hd == pytest.approx(hd2, rel=1e-5) and assd == pytest.approx(assd2, rel=1e-5)
    assert 0 <= nsd <= 1 and assd <= hd + 1e-6 or assd >= 0
    assert surface_metrics(a, a, spacing)[0] == 0.0 and dice_iou(a, a)[0] == 1.0
