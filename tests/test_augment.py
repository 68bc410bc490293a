import cv2
import numpy as np
import pytest

from medseg.config import BankConfig
from medseg.errors import UsageError
from medseg.metrics import dice_iou
from medseg.support import Bank, build_bank


def shapes(h=96, w=112):
    img = np.zeros((h, w), np.float32)
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (40, 50), 18, 1, -1)
    cv2.rectangle(mask, (70, 20), (95, 40), 2, -1)
    img[mask == 1] = 0.6
    img[mask == 2] = 0.9
    return img, mask


def channels(mask, values=(1, 2)):
    """(K, H, W) bool masks of a labelmap."""
    return np.stack([mask == v for v in values])


def test_identity_member_and_size():
    img, mask = shapes()
    bank = build_bank(img, channels(mask), BankConfig(size=6, seed=1))
    assert len(bank) == 7 and bank.masks.shape == (7, 2, 96, 112) and bank.masks.dtype == bool
    np.testing.assert_array_equal(bank.images[0], img)
    np.testing.assert_array_equal(bank.masks[0], channels(mask))
    assert bank.params[0]["identity"]
    one = build_bank(img, channels(mask, (1,)), BankConfig(size=2, seed=1))
    assert one.masks.shape == (3, 1, 96, 112)


def test_mask_follows_image_under_affine():
    img, mask = shapes()
    cfg = BankConfig(size=8, seed=3, p_affine=1.0, p_intensity=0.0)
    bank = build_bank(img, channels(mask), cfg)
    for i in range(1, len(bank)):
        for k, level in ((0, 0.6), (1, 0.9)):
            from_image = np.abs(bank.images[i] - level) < 0.15
            d, _ = dice_iou(from_image, bank.masks[i, k])
            assert d > 0.9, (i, k, d)
        # the recorded matrix reproduces the member's mask
        aff = next(t for t in bank.params[i]["applied"] if t["transform"] == "Affine")
        m = np.asarray(aff["matrix"])[:2]
        warped = cv2.warpAffine(mask, m, (112, 96), flags=cv2.INTER_NEAREST)
        d, _ = dice_iou(warped > 0, bank.masks[i].any(axis=0))
        assert d > 0.97
        assert -15 <= aff["rotate"] <= 15


def test_reproducible_and_seeded():
    img, mask = shapes()
    a = build_bank(img, channels(mask), BankConfig(size=4, seed=7))
    b = build_bank(img, channels(mask), BankConfig(size=4, seed=7))
    c = build_bank(img, channels(mask), BankConfig(size=4, seed=8))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert a.params == b.params
    assert not np.array_equal(a.images[1:], c.images[1:])
    assert a.images.min() >= 0 and a.images.max() <= 1


def test_intensity_only_keeps_geometry():
    img, mask = shapes()
    bank = build_bank(img, channels(mask), BankConfig(size=4, seed=0, p_affine=0.0,
                                                     p_intensity=1.0))
    for i in range(len(bank)):
        np.testing.assert_array_equal(bank.masks[i], channels(mask))
    assert not np.allclose(bank.images[1], img)


def test_config_checks_and_concat():
    with pytest.raises(UsageError):
        BankConfig(size=-1)
    with pytest.raises(UsageError):
        BankConfig(scale=(1.2, 0.8))
    img, mask = shapes()
    m = channels(mask)
    a, b = build_bank(img, m, BankConfig(size=1), 3), build_bank(img, m, BankConfig(size=2), 9)
    c = Bank.concat([a, b])
    assert len(c) == 5 and c.source_slices == [3, 3, 9, 9, 9]


def test_several_support_slices_share_one_bank():
    """One slice: the slice and ``size`` augmentations (the paper's bank); k slices: a bank
    of ``size`` members shared, each slice with ``size // k - 1`` copies, none from ``size``
    slices on."""
    from medseg.support.groups import bank_copies

    assert bank_copies(16, 1) == 16
    assert [k * (1 + bank_copies(16, k)) for k in (2, 4, 8, 16)] == [16, 16, 16, 16]
    assert bank_copies(16, 5) == 2 and bank_copies(16, 20) == 0 and bank_copies(0, 1) == 0
