"""Faults and awkward inputs: interrupted runs, GPU OOM, random geometries."""

import numpy as np
import pytest
from conftest import rotation, write_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg.cli import main
from medseg.errors import EXIT_INTERRUPTED, EXIT_RUNTIME
from medseg.io import Volume, read_image, write_image


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(2, 7), st.integers(2, 7)),
    spacing=st.tuples(*[st.floats(0.2, 6.0)] * 3),
    angles=st.lists(st.floats(-3.1, 3.1), min_size=3, max_size=3),
    flip=st.booleans(),
    origin=st.tuples(*[st.floats(-500, 500)] * 3),
    suffix=st.sampled_from([".nii.gz", ".nrrd"]),
)
def test_loader_round_trip_property(tmp_path, shape, spacing, angles, flip, origin, suffix):
    d = rotation(*angles) @ np.diag([1.0, 1.0, -1.0 if flip else 1.0])
    arr = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    vol = Volume(arr, spacing, origin, d)
    p = tmp_path / f"v{suffix}"
    write_image(vol, p)
    back = read_image(p)
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.spacing, spacing, rtol=1e-5)
    np.testing.assert_allclose(back.origin, origin, atol=1e-3)
    np.testing.assert_allclose(back.direction, d, atol=1e-5)


@pytest.fixture
def small_case(tmp_path):
    return write_case(tmp_path)


@pytest.mark.slow
def test_ctrl_c_while_writing_leaves_nothing(tmp_path, small_case, random_checkpoint, monkeypatch,
                                             capsys):
    import medseg.export.seg_nrrd as writer

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "seg_nrrd", interrupted)
    out = tmp_path / "out"
    code = main(["segment", "-s", str(small_case["s"]), "-l", str(small_case["l"]), "-i",
                 str(small_case["q"]), "-o", str(out), "--checkpoint", str(random_checkpoint),
                 "--device", "cpu", "--bank-size", "1", "--labels", "1"])
    assert code == EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # the NIfTI written before the interrupt was removed too


@pytest.mark.slow
def test_gpu_oom_retry_then_clear_error(small_case, random_checkpoint, monkeypatch):
    """OOM: retried once with batch size 1 and offloading, then a clear DeviceError."""
    import torch

    from medseg.api import Segmenter
    from medseg.errors import DeviceError

    seg = Segmenter(model="tiny", checkpoint=random_checkpoint, device="cpu", batch_size=4)
    real = seg.engine.run_pairs
    calls = []

    def flaky(*a, **k):
        calls.append(seg.engine.batch_size)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(*a, **k)

    monkeypatch.setattr(seg.engine, "run_pairs", flaky)
    with pytest.warns(UserWarning, match="retrying with batch size 1"):
        res = seg.segment(small_case["s"], small_case["l"], small_case["q"], labels=[1],
                          bank_size=1, matcher="ncc")
    assert calls == [4, 1] and res.labels.shape == read_image(small_case["q"]).shape
    assert seg.engine.batch_size == 4  # the next query starts with the configured size

    def always(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(seg.engine, "run_pairs", always)
    with pytest.raises(DeviceError, match="out of GPU memory") as err:
        seg.segment(small_case["s"], small_case["l"], small_case["q"], labels=[1], bank_size=1,
                    matcher="ncc")
    assert err.value.exit_code == EXIT_RUNTIME
