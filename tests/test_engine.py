"""The real sam2 predictor with a random-weight checkpoint (CPU, image size 256)."""

import numpy as np
import pytest

from medseg.checkpoints import build_random_checkpoint, infer_model_size, load_state_dict
from medseg.errors import DeviceError, ModelError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(random_checkpoint):
    from medseg.engine import Sam2Engine

    return Sam2Engine("tiny", str(random_checkpoint), "cpu", batch_size=3)


def frames(n=7, h=48, w=56, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, h, w)).astype(np.float32)


def test_state_has_stock_keys(engine, tmp_path):
    """Our in-memory state matches what sam2's own init_state builds from JPEGs."""
    from PIL import Image

    for i in range(2):
        Image.fromarray((frames(1)[0] * 255).astype(np.uint8)).convert("RGB").save(
            tmp_path / f"{i:05d}.jpg")
    stock = engine.predictor.init_state(str(tmp_path))
    ours = engine.new_state(list(frames(2)), 48, 56)
    assert set(stock) == set(ours)
    assert stock["images"][0].shape == ours["images"][0].shape


def test_checkpoint_loaded_through_sam2_builder(engine, random_checkpoint):
    sd, meta = load_state_dict(random_checkpoint)
    assert meta["random_weights"] and infer_model_size(sd) == "tiny"
    own = engine.predictor.state_dict()
    k = "image_encoder.trunk.patch_embed.proj.weight"
    np.testing.assert_array_equal(own[k].numpy(), sd[k].numpy())
    assert engine.describe()["random_weights"] is True
    assert engine.image_size == 256


def test_pairs_and_volume_shapes(engine):
    q = frames()
    bank = frames(3, seed=1)
    masks = np.zeros((3, 2, 48, 56), bool)
    masks[:, 0, 5:20, 5:20] = True
    masks[:, 1, 30:40, 30:50] = True
    out = engine.run_pairs(q, bank, masks)  # matched with SAM2 features
    assert out.labels.shape == q.shape and out.labels.dtype == np.uint8
    assert set(np.unique(out.labels)) <= {0, 1, 2}
    assert out.distances.shape == (7, 3) and out.matches.shape == (7,)
    np.testing.assert_array_equal(out.matches, out.distances.argmin(1))
    assert np.isfinite(out.object_scores).all()
    vol = engine.run_volume(q, bank[0], masks[0], insert_at=3)
    assert vol.labels.shape == q.shape and np.isfinite(vol.object_scores).all()
    # an object absent from the support yields nothing and no score
    masks[:, 1] = False
    out = engine.run_pairs(q, bank, masks, matches=np.zeros(7, int))
    assert not (out.labels == 2).any() and np.isnan(out.object_scores[:, 1]).all()


def test_reused_prompts_give_the_same_masks(engine):
    """Encoding each member's mask prompt once and reusing it changes nothing."""
    q = frames(n=6, seed=7)
    bank = frames(2, seed=8)
    masks = np.zeros((2, 2, 48, 56), bool)
    masks[:, 0, 5:25, 5:25] = True
    masks[:, 1, 30:44, 20:50] = True
    m = np.array([0, 1, 0, 0, 1, 1])
    fresh = engine.run_pairs(q, bank, masks, m, reuse_prompts=False)
    reused = engine.run_pairs(q, bank, masks, m, reuse_prompts=True)
    np.testing.assert_array_equal(fresh.labels, reused.labels)
    np.testing.assert_array_equal(fresh.object_scores, reused.object_scores)


def test_identity_member_matches_itself(engine):
    bank = frames(4, seed=3)
    d, kept = engine.descriptors(bank)
    assert kept == {}
    import torch

    dist = torch.cdist(d, d).pow(2).numpy()
    np.testing.assert_array_equal(dist.argmin(1), np.arange(4))


def test_features_from_matching_are_reused(engine):
    """Volume mode with encoder features kept from matching gives the same result."""
    q = frames(n=9, h=40, w=40, seed=6)
    m = np.zeros((1, 40, 40), bool)
    m[0, 8:20, 8:20] = True
    _, kept = engine.descriptors(q, keep_mb=1e6)
    assert sorted(kept) == list(range(9))
    _, few = engine.descriptors(q, keep_mb=1.5 * engine.entry_bytes(kept[0]) / 2**20)
    assert sorted(few) == [0]
    fresh = engine.run_volume(q, q[4], m, insert_at=4)
    reused = engine.run_volume(q, q[4], m, insert_at=4, features=kept)
    np.testing.assert_array_equal(fresh.labels, reused.labels)
    np.testing.assert_allclose(fresh.object_scores, reused.object_scores, atol=1e-5)
    assert reused.timings["encode_s"] < fresh.timings["encode_s"]


def test_pruning_keeps_results_exact(engine):
    """Dropping outputs beyond SAM2's memory window changes nothing."""
    q = frames(n=engine.window * 2 + 6, h=32, w=32, seed=4)
    m = np.zeros((1, 32, 32), bool)
    m[0, 8:20, 8:20] = True
    pruned = engine.run_volume(q, q[10], m, insert_at=10)
    w = engine.window
    engine.window = 10**6
    try:
        full = engine.run_volume(q, q[10], m, insert_at=10)
    finally:
        engine.window = w
    np.testing.assert_array_equal(pruned.labels, full.labels)
    np.testing.assert_allclose(pruned.object_scores, full.object_scores, rtol=0, atol=0)


def test_checkpoint_errors(tmp_path, random_checkpoint):
    from medseg.checkpoints import resolve_checkpoint, validate_checkpoint

    bad = tmp_path / "sam2.1_hiera_tiny.pt"
    bad.write_bytes(random_checkpoint.read_bytes()[:100_000])
    with pytest.raises(ModelError, match="truncated, corrupt"):
        validate_checkpoint(bad, "tiny", from_cache=True)
    assert not bad.exists()  # a broken cached file is removed
    with pytest.raises(ModelError, match="is a SAM2.1 'tiny' model but --model small"):
        validate_checkpoint(random_checkpoint, "small")
    with pytest.raises(ModelError, match="no such file"):
        resolve_checkpoint("tiny", tmp_path / "nope.pt")


def test_pickle_with_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"model": Evil()}, fh)
    with pytest.raises(ModelError, match="cannot be loaded safely"):
        load_state_dict(p)


def test_offline_download_message(tmp_path, monkeypatch):
    from medseg import checkpoints

    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path))
    monkeypatch.delenv("MEDSEG_CHECKPOINT", raising=False)
    monkeypatch.setattr(checkpoints, "BASE_URL", "http://127.0.0.1:9/nowhere")
    with pytest.raises(ModelError) as err:
        checkpoints.resolve_checkpoint("tiny", progress=False)
    msg = str(err.value)
    assert "http://127.0.0.1:9/nowhere/sam2.1_hiera_tiny.pt" in msg
    assert str(tmp_path / "checkpoints" / "sam2.1_hiera_tiny.pt") in msg
    assert not list((tmp_path / "checkpoints").glob("*.part"))


def test_env_checkpoint(monkeypatch, random_checkpoint):
    from medseg.checkpoints import resolve_checkpoint

    monkeypatch.setenv("MEDSEG_CHECKPOINT", str(random_checkpoint))
    assert resolve_checkpoint("tiny") == (random_checkpoint, "environment")


def test_model_size_detected(tmp_path):
    p = build_random_checkpoint(tmp_path / "s.pt", "small", image_size=256)
    assert infer_model_size(load_state_dict(p)[0]) == "small"


def test_device_errors(monkeypatch):
    import torch

    from medseg.engine import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        select_device("cuda")
    with pytest.raises(DeviceError, match="use auto, cpu"):
        select_device("tpu")
    assert select_device("auto").type in ("cpu", "mps")


@pytest.mark.gpu
def test_cuda_bf16(random_checkpoint):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from medseg.engine import Sam2Engine

    e = Sam2Engine("tiny", str(random_checkpoint), "cuda")
    q = frames()
    m = np.zeros((1, 48, 56), bool)
    m[0, 5:20, 5:20] = True
    out = e.run_volume(q, q[0], m, insert_at=0)
    assert out.labels.shape == q.shape


def test_truncated_download_is_rejected(tmp_path, monkeypatch, random_checkpoint):
    """A download that is cut short or the wrong size is removed, never cached."""
    from medseg import checkpoints

    src = tmp_path / "server"
    src.mkdir()
    (src / "sam2.1_hiera_tiny.pt").write_bytes(random_checkpoint.read_bytes()[:1_000_000])
    monkeypatch.setattr(checkpoints, "BASE_URL", src.as_uri())
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDSEG_CHECKPOINT", raising=False)
    with pytest.raises(ModelError, match="incomplete or wrong"):
        checkpoints.resolve_checkpoint("tiny", progress=False)
    assert not any((tmp_path / "home" / "checkpoints").iterdir())
    # a complete file of the published size that is not loadable is refused too
    spec = checkpoints.MODELS["tiny"]
    (src / spec.filename).write_bytes(b"\0" * int(spec.approx_mb * 1e6))
    with pytest.raises(ModelError, match="cannot be loaded safely"):
        checkpoints.resolve_checkpoint("tiny", progress=False)
    assert not any((tmp_path / "home" / "checkpoints").iterdir())
    # the real file (random weights here) is accepted and moved into the cache atomically
    monkeypatch.setattr(checkpoints, "SIZE_TOLERANCE", 1.0)
    (src / spec.filename).write_bytes(random_checkpoint.read_bytes())
    path, how = checkpoints.resolve_checkpoint("tiny", progress=False)
    assert how == "download" and path.read_bytes() == random_checkpoint.read_bytes()


def test_absent_object_gives_empty_masks(tmp_path):
    """Where SAM2's object score says 'absent' (negative), the masks are empty."""
    from medseg.engine import Sam2Engine

    ck = build_random_checkpoint(tmp_path / "neg.pt", "tiny", image_size=256, object_score_bias=-5.0)
    e = Sam2Engine("tiny", str(ck), "cpu", batch_size=4)
    q = frames(n=4)
    m = np.zeros((1, 1, 48, 56), bool)
    m[0, 0, 10:30, 10:30] = True
    out = e.run_pairs(q, q[:1], m, matches=np.zeros(4, int))
    assert (out.object_scores < 0).all() and not out.labels.any()
    vol = e.run_volume(q, q[0], m[0], insert_at=2)
    assert (vol.object_scores < 0).all() and not vol.labels.any()


def test_overlap_rule():
    """Highest positive logit wins; nothing where every logit is <= 0."""
    import torch

    from medseg.engine import Sam2Engine

    logits = torch.tensor([[[[2.0, -1.0, 0.5, -3.0]]], [[[1.0, 3.0, 0.7, -2.0]]]])
    lab = Sam2Engine.merge(logits, [1, 2])
    np.testing.assert_array_equal(lab, [[1, 2, 2, 0]])
