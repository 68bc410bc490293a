import cv2
import numpy as np
import pytest
from test_augment import channels, shapes

from medseg.config import BankConfig
from medseg.match import best_members, ncc_distance, ssim_distance, transfer_masks
from medseg.support import build_bank


def textured(seed=0, h=96, w=112):
    img, mask = shapes(h, w)
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 3)
    return np.clip(0.5 * img + 0.5 * noise, 0, 1).astype(np.float32), mask


@pytest.mark.parametrize("dist", [ssim_distance, ncc_distance])
def test_identity_matches_itself(dist):
    img, mask = textured()
    bank = build_bank(img, channels(mask), BankConfig(size=10, seed=2))
    d = dist(bank.images, bank.images)
    assert d.shape == (11, 11)
    np.testing.assert_array_equal(best_members(d), np.arange(11))
    assert np.allclose(np.diag(d), 0, atol=1e-4)


@pytest.mark.parametrize("dist", [ssim_distance, ncc_distance])
def test_rotated_query_matches_rotated_member(dist):
    img, mask = textured()
    cfg = BankConfig(size=12, seed=5, p_affine=1.0, p_intensity=0.0, rotate_deg=30)
    bank = build_bank(img, channels(mask), cfg)
    angles = [next(t for t in p["applied"] if t["transform"] == "Affine")["rotate"]
              for p in bank.params[1:]]
    target = int(np.argmax(np.abs(angles))) + 1
    aff = next(t for t in bank.params[target]["applied"] if t["transform"] == "Affine")
    m = np.asarray(aff["matrix"])[:2]
    query = cv2.warpAffine(img, m, (112, 96), flags=cv2.INTER_LINEAR)  # the same motion
    d = dist(query[None], bank.images)
    assert best_members(d)[0] == target
    got = transfer_masks(best_members(d), bank.masks)
    np.testing.assert_array_equal(got[0], bank.masks[target])


def test_ssim_matches_reference_implementation():
    skimage = pytest.importorskip("skimage.metrics")
    a, _ = textured(1, 128, 128)
    b, _ = textured(2, 128, 128)
    ref = skimage.structural_similarity(a, b, data_range=1.0, win_size=7)
    ours = 1 - ssim_distance(a[None], b[None])[0, 0]
    assert ours == pytest.approx(ref, abs=0.02)
