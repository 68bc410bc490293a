import gzip
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import OBLIQUE, phantom, rotation, write_dicom_series
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg.errors import InputError
from medseg.io import (
    Volume,
    canonical_orientation,
    check_finite,
    from_canonical,
    orientation_code,
    read_image,
    to_canonical,
    write_image,
)


def assert_same_geometry(a: Volume, b: Volume, tol=1e-5):
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, atol=tol)
    np.testing.assert_allclose(a.origin, b.origin, atol=tol)
    np.testing.assert_allclose(a.direction, b.direction, atol=tol)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_round_trip_oblique_anisotropic(tmp_path, oblique_pair, suffix):
    img, lab = oblique_pair
    for vol in (img, lab):
        p = tmp_path / f"v{suffix}"
        write_image(vol, p)
        back = read_image(p)
        assert_same_geometry(vol, back)
        np.testing.assert_array_equal(back.array, vol.array)


def test_canonical_is_exact_inverse(oblique_pair):
    img, _ = oblique_pair
    canon, orient = to_canonical(img)
    np.testing.assert_array_equal(from_canonical(canon, orient), img.array)


def _signed_perm(perm, signs):
    m = np.zeros((3, 3))
    for col, (row, s) in enumerate(zip(perm, signs)):
        m[row, col] = s
    return m


@settings(max_examples=60, deadline=None)
@given(
    perm=st.permutations([0, 1, 2]),
    signs=st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3),
    angles=st.lists(st.floats(-0.35, 0.35), min_size=3, max_size=3),
    shape=st.tuples(*[st.integers(1, 6)] * 3),
)
def test_canonical_axes_point_lps(perm, signs, angles, shape):
    """After canonicalisation, array axes (z, y, x) run along +S, +P, +L (up to obliquity)."""
    d = rotation(*angles) @ _signed_perm(perm, signs)
    vol = Volume(np.arange(np.prod(shape)).reshape(shape).astype(np.int32), direction=d)
    canon, orient = to_canonical(vol)
    np.testing.assert_array_equal(from_canonical(canon, orient), vol.array)
    # world direction of each canonical ITK axis: column of d for its source axis, sign-flipped
    for k_can in range(3):  # canonical array axis
        src_array_axis = orient.perm[k_can]
        col = d[:, 2 - src_array_axis] * (-1 if orient.flip[k_can] else 1)
        assert int(np.argmax(np.abs(col))) == 2 - k_can
        assert col[2 - k_can] > 0
    assert orientation_code(d @ np.diag([1, 1, 1])) in {
        a + b + c for a in "LRPAIS" for b in "LRPAIS" for c in "LRPAIS"}


def test_orientation_code():
    assert orientation_code(np.eye(3)) == "LPS"
    assert orientation_code(np.diag([-1, -1, 1])) == "RAS"
    assert canonical_orientation(np.eye(3)).perm == (0, 1, 2)


def test_dicom_series_and_choice(tmp_path, oblique_pair):
    img, _ = oblique_pair
    vol = Volume(img.array[:6], spacing=(0.7, 0.7, 2.0), direction=np.eye(3))
    folder = tmp_path / "dcm"
    write_dicom_series(folder, vol, "1.2.3.1")
    write_dicom_series(folder, Volume(vol.array[:3], vol.spacing, vol.origin, vol.direction),
                       "1.2.3.2")
    with pytest.warns(UserWarning, match="2 DICOM series found; using 1.2.3.1"):
        got = read_image(folder)
    assert got.shape[0] == 6 and got.meta["dicom_series"] == "1.2.3.1"
    np.testing.assert_allclose(got.spacing[2], 2.0, atol=1e-4)
    assert read_image(folder, series="1.2.3.2").shape[0] == 3
    with pytest.raises(InputError, match="no DICOM series '9.9'"):
        read_image(folder, series="9.9")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no DICOM image series"):
        read_image(empty)


def test_bad_files(tmp_path, oblique_pair):
    img, _ = oblique_pair
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "missing.nii.gz")
    good = tmp_path / "good.nii.gz"
    write_image(img, good)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_image(cut)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(InputError, match="not a supported medical image"):
        read_image(txt)
    png = tmp_path / "photo.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint8)), str(png))
    with pytest.raises(InputError, match="2D image"):
        read_image(png)
    (tmp_path / "empty.nii").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image(tmp_path / "empty.nii")
    gz = tmp_path / "junk.nii.gz"
    gz.write_bytes(gzip.compress(b"x" * 400))
    with pytest.raises(InputError):
        read_image(gz)


def test_4d(tmp_path):
    arr = np.zeros((3, 4, 5, 6), np.int16)  # t, z, y, x
    p = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(a) for a in arr]), str(p))
    with pytest.raises(InputError, match=r"is 4D \(3 volumes"):
        read_image(p)
    p1 = tmp_path / "one.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(arr[0])]), str(p1))
    v = read_image(p1)
    assert v.shape == (4, 5, 6)


def test_nan_and_constant():
    arr = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    arr[0, 0, :3] = np.nan
    arr[1, 1, 1] = np.inf
    with pytest.warns(UserWarning, match="4 NaN/inf voxels"):
        v = check_finite(Volume(arr))
    assert np.isfinite(v.array).all()
    with pytest.raises(InputError, match="constant"):
        check_finite(Volume(np.ones((3, 3, 3), np.float32)))
    with pytest.raises(InputError, match="every voxel is NaN"):
        check_finite(Volume(np.full((2, 2, 2), np.nan, np.float32)))


def test_non_orthonormal_direction(tmp_path):
    import nibabel as nib

    aff = np.array([[1.0, 0.4, 0, 0], [0, 1.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.random.default_rng(0).random((5, 6, 7)).astype(np.float32), aff)
    img.set_qform(None, code=0)
    img.set_sform(aff, code=1)
    p = tmp_path / "skew.nii.gz"
    nib.save(img, p)
    with pytest.raises(InputError, match="orthonormal"):
        read_image(p)


def test_qform_sform_disagree(tmp_path):
    import nibabel as nib

    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    q = np.diag([2.0, 2.0, 2.0, 1.0])
    s = q.copy()
    s[:3, 3] = [10.0, -5.0, 3.0]
    img = nib.Nifti1Image(data, s)
    img.set_qform(q, code=1)
    img.set_sform(s, code=1)
    p = tmp_path / "qs.nii.gz"
    nib.save(img, p)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        v = read_image(p)
    msgs = [str(x.message) for x in w if "qform and sform disagree" in str(x.message)]
    assert msgs and v.meta["nifti_transform_used"] in msgs[0]


def test_phantom_geometry_is_oblique():
    img, _ = phantom()
    assert not np.allclose(np.abs(img.direction), np.eye(3))
    assert np.linalg.det(OBLIQUE) < 0


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("qfac", [1, -1])
def test_nifti_header_read_without_a_nifti_library(tmp_path, version, qfac):
    """The read path's own header parse agrees with nibabel on shape, data offset, qform
    (from the quaternion, both qfac signs) and sform, NIfTI-1 and -2, gzipped or not."""
    import nibabel as nib

    from medseg.io.nifti import header, qform

    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    c, s = np.cos(0.3), np.sin(0.3)
    rot = rot @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.7, 0.8, 2.5 * qfac])
    aff[:3, 3] = [10.5, -20.25, 33.0]
    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    img = cls(np.zeros((5, 6, 7), np.int16), aff)
    img.set_qform(aff, 1)
    img.set_sform(aff @ np.diag([1, 1, 1, 1]) + np.array([[0, 0, 0, 0.5]] * 3 + [[0, 0, 0, 0]]),
                  2)
    for name in ("a.nii", "a.nii.gz"):
        nib.save(img, tmp_path / name)
        h, ref = header(tmp_path / name), nib.load(tmp_path / name).header
        assert h["shape"] == [5, 6, 7] and h["bitpix"] == 16
        assert h["vox_offset"] == (352 if version == 1 else 544)  # as nibabel writes it
        np.testing.assert_allclose(qform(h), ref.get_qform()[:3], atol=1e-5)
        np.testing.assert_allclose(h["sform"], ref.get_sform()[:3], atol=1e-5)
    assert header(tmp_path / "missing.nii") is None


@pytest.mark.parametrize("values", [
    np.array([-1024, 3071, 0, 40, 40, -1024], np.int16),  # a scan's integers: counted
    np.array([0, 1, 1, 5], np.uint8),
    np.array([True, False, True]),
    np.array([-2**31, 0, 2**31 - 1], np.int32),  # a range too wide to count: sorted
    np.array([7], np.uint16),
    np.array([2**64 - 1, 2**64 - 3], np.uint64),  # counted from the minimum, unsigned
    np.array([], np.int16),
])
def test_distinct_values_equal_numpy_unique(values):
    from medseg.io.checks import distinct_values

    got = distinct_values(values)
    assert got.dtype == np.unique(values).dtype and np.array_equal(got, np.unique(values))
