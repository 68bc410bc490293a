"""Shared fixtures: synthetic volumes with awkward geometry and a random-weight SAM2."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.io import Volume


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Proper rotation matrix from three angles (radians)."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = rotation(0.3, -0.2, 0.5) @ np.diag([1.0, -1.0, 1.0])  # oblique and left-handed


def phantom(shape=(24, 40, 48), spacing=(0.8, 0.6, 2.5), direction=OBLIQUE,
            origin=(12.5, -30.25, 101.0), seed=0) -> tuple[Volume, Volume]:
    """A CT-like phantom (HU) with two ellipsoid 'organs' and its label map (1, 2)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (y / 0.9) ** 2 + (x / 0.95) ** 2 < 1
    organ1 = ((z / 0.8) ** 2 + ((y + 0.2) / 0.4) ** 2 + ((x - 0.3) / 0.35) ** 2) < 1
    organ2 = ((z / 0.5) ** 2 + ((y - 0.3) / 0.25) ** 2 + ((x + 0.4) / 0.2) ** 2) < 1
    img = np.full(shape, -1000.0, np.float32)
    img[body] = 0
    img[organ1] = 60
    img[organ2] = 120
    img += rng.normal(0, 8, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[organ1] = 1
    lab[organ2] = 2
    geo = dict(spacing=spacing, origin=origin, direction=direction)
    return Volume(img.astype(np.int16), **geo), Volume(lab, **geo)


def write_case(folder, support_shape=(10, 32, 36), query_shape=(8, 30, 32)):
    """Support image + label (axis-aligned) and an oblique query, as NIfTI files."""
    from medseg.io import write_image

    s_img, s_lab = phantom(shape=support_shape, direction=np.eye(3), seed=3)
    q_img, _ = phantom(shape=query_shape, seed=4)
    files = {}
    for k, v in (("s", s_img), ("l", s_lab), ("q", q_img)):
        files[k] = folder / f"{k}.nii.gz"
        write_image(v, files[k])
    return files


@pytest.fixture
def oblique_pair():
    return phantom()


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory):
    """A tiny SAM2.1 built from the real config with random weights (image size 256),
    whose object-score head is biased so masks are non-empty."""
    from medseg.engine import build_random_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_tiny_random256.pt"
    return build_random_checkpoint(path, "tiny", image_size=256, seed=0, object_score_bias=5.0)


@pytest.fixture(scope="session")
def segmenter(random_checkpoint):
    from medseg.api import Segmenter

    return Segmenter(model="tiny", checkpoint=random_checkpoint, device="cpu", batch_size=4)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` where torch sees no CUDA device."""
    gpu_items = [i for i in items if "gpu" in i.keywords]
    if not gpu_items:
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in gpu_items:
            item.add_marker(skip)


TRANSFER = ["--method", "transfer", "--bank-size", "1", "--no-download"]  # no model needed


def run_cli(args, capsys):
    """(exit code, stdout, stderr) of ``medseg ARGS`` run in this process."""
    from medseg.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def write_dicom_series(folder, vol, series: str = "1.2.3.4", skip: int | None = None,
                       name: str = "s"):
    """Slices of ``vol`` as a DICOM series (its in-plane direction kept): one file per
    slice."""
    import SimpleITK as sitk

    folder.mkdir(exist_ok=True)
    for k in range(vol.shape[0]):
        if k == skip:
            continue
        sl = sitk.GetImageFromArray(vol.array[k : k + 1].astype(np.int16))
        sl.SetSpacing(vol.spacing)
        pos = vol.index_to_world([0, 0, k])
        sl.SetOrigin(tuple(pos))
        sl.SetDirection(tuple(vol.direction.ravel()))
        iop = "\\".join(f"{c:.6f}" for c in (*vol.direction[:, 0], *vol.direction[:, 1]))
        for tag, value in (("0020|000e", series), ("0020|0013", str(k + 1)),
                           ("0020|0032", "\\".join(f"{c:.4f}" for c in pos)),
                           ("0020|0037", iop), ("0008|0060", "CT")):
            sl.SetMetaData(tag, value)
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(folder / f"{name}{series}_{k:03d}.dcm"))
        w.Execute(sl)
    return folder
