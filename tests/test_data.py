"""The example data's derived references."""

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg import data


def _chest(path: Path) -> Path:
    """A synthetic chest CT: a body, two lungs (lung tissue, about -800 HU) and, under the
    left lung and apart from it, a pocket of gas (about -1000 HU) larger than 50 ml."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:40, 0:96, 0:128].astype(float)
    a = np.full(z.shape, -1000.0)
    a[((y - 48) / 44) ** 2 + ((x - 64) / 60) ** 2 < 1] = 40.0  # the body
    for cx in (36, 92):  # right lung (low x), left lung (high x): z 12..37
        a[(((y - 48) / 22) ** 2 + ((x - cx) / 18) ** 2 < 1) & (z >= 12) & (z <= 37)] = -800.0
    gas = (((y - 48) / 12) ** 2 + ((x - 90) / 12) ** 2 < 1) & (z >= 1) & (z <= 9)
    a[gas] = -1000.0
    a += rng.normal(0, 20, a.shape)
    img = sitk.GetImageFromArray(a.astype(np.int16))
    img.SetSpacing((2.0, 2.0, 5.0))
    assert gas.sum() * 20 / 1000 > 50  # the gas pocket alone passes the size rule
    sitk.WriteImage(img, str(path))
    return path


def test_derived_lungs_leave_gas_out(tmp_path):
    """A pocket of gas under a lung (the stomach's) is not lung: the left lung's extent is
    the lung's own."""
    lungs = sitk.GetArrayFromImage(data.derived_lungs(_chest(tmp_path / "chest.nrrd")))
    for value in (1, 2):
        z = np.nonzero((lungs == value).any(axis=(1, 2)))[0]
        assert (z.min(), z.max()) == (12, 37), value
    assert not lungs[:10].any()


def test_a_cache_from_another_derivation_is_derived_again(tmp_path):
    """Derived references written by another derivation are made again, not reused."""
    stale = tmp_path / "derived" / "lung1_lungs.nii.gz"
    stale.parent.mkdir()
    stale.write_bytes(b"made by an earlier derivation")
    data._derive(tmp_path)
    assert not stale.exists()
    stale.parent.mkdir()
    stale.write_bytes(b"made by this derivation")
    (stale.parent / ".derivation").write_text(data.DERIVATION)
    data._derive(tmp_path)
    assert stale.read_bytes() == b"made by this derivation"
