import numpy as np
import pytest
from conftest import phantom

from medseg.errors import UsageError
from medseg.frames import (
    CT_WINDOWS,
    canonical_to_frames,
    frames_to_canonical,
    guess_modality,
    label_to_frames,
    normalize_intensity,
    parse_window,
    resample_frame,
    to_model_input,
    volume_to_frames,
)


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_frames_round_trip(axis):
    img, lab = phantom()
    stack = volume_to_frames(img, axis)
    lf = label_to_frames(lab, axis)
    assert lf.shape == stack.frames.shape
    np.testing.assert_array_equal(stack.to_volume_array(lf), lab.array)
    a = np.random.default_rng(0).random((3, 4, 5))
    np.testing.assert_array_equal(frames_to_canonical(canonical_to_frames(a, axis), axis), a)
    k, idx = stack.source_index(img.shape)
    for f in (0, len(idx) - 1):
        np.testing.assert_array_equal(
            np.sort(np.take(lab.array, idx[f], axis=k).ravel()), np.sort(lf[f].ravel()))


def test_spacing_follows_axis():
    img, _ = phantom(spacing=(0.8, 0.6, 2.5), direction=np.eye(3))
    assert volume_to_frames(img, "axial").spacing == (2.5, 0.6, 0.8)
    assert volume_to_frames(img, "coronal").spacing == (0.6, 2.5, 0.8)
    assert volume_to_frames(img, "sagittal").spacing == (0.8, 2.5, 0.6)


def test_windows_and_modality():
    assert parse_window(None) is None
    assert parse_window("abdomen") == CT_WINDOWS["abdomen"] == (-125.0, 275.0)
    assert parse_window("40,400") == (-160.0, 240.0)
    for bad in ("wide", "40", "40,-1"):
        with pytest.raises(UsageError):
            parse_window(bad)
    ct = np.array([-1000.0, -125.0, 75.0, 275.0, 1000.0]).reshape(1, 1, 5)
    out, how = normalize_intensity(ct, "auto")
    assert how["modality"] == "ct"
    np.testing.assert_allclose(out.ravel(), [0, 0, 0.5, 1, 1])
    mr = np.random.default_rng(0).gamma(2.0, 100.0, (8, 16, 16))
    mr[:, :4] = 0
    assert guess_modality(mr) == "mr"
    out, how = normalize_intensity(mr, "auto")
    assert how["modality"] == "mr" and 0 <= out.min() and out.max() <= 1
    fg = mr[mr > 0]
    np.testing.assert_allclose(how["clip"], np.percentile(fg, [0.5, 99.5]), rtol=1e-6)


def test_resample_frame_keeps_physical_size():
    f = np.zeros((40, 40), np.float32)
    f[10:30, 10:30] = 1  # 20 px at 1 mm = 20 mm
    out = resample_frame(f, (1.0, 1.0), (80, 80), (0.5, 0.5), order=0)
    assert out.sum() == pytest.approx(40 * 40, rel=0.06)  # 20 mm = 40 px at 0.5 mm
    ys, xs = np.nonzero(out)
    assert abs(ys.mean() - 39.5) < 1 and abs(xs.mean() - 39.5) < 1


def test_model_input():
    t = to_model_input(np.zeros((2, 30, 50), np.float32), 64)
    assert tuple(t.shape) == (2, 3, 64, 64)
    np.testing.assert_allclose(t[0, :, 0, 0].numpy(), [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
                               rtol=1e-5)
