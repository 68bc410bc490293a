"""The real sam2 predictor with a random-weight checkpoint (CPU, image size 256).

Runs of SAM2 end to end are marked ``slow``; the engine's unit tests (build, state keys,
checkpoint checks, the overlap rule, the comparison with stock sam2) run in the fast
suite."""

import numpy as np
import pytest

from medseg.checkpoints import infer_model_size, load_state_dict
from medseg.engine import build_random_checkpoint
from medseg.errors import DeviceError, ModelError


@pytest.fixture(scope="module")
def engine(random_checkpoint):
    from medseg.engine import Sam2Engine

    return Sam2Engine(model="tiny", checkpoint=str(random_checkpoint), device="cpu", batch_size=3)


def frames(n=7, h=48, w=56, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, h, w)).astype(np.float32)


def test_state_has_stock_keys(engine, tmp_path):
    """The predictor's state has the keys of sam2's own init_state (plus medseg's source)."""
    from PIL import Image

    from medseg.engine.predictor import FEATURES, STATE_KEYS, _init_state_keys

    for i in range(2):
        Image.fromarray((frames(1)[0] * 255).astype(np.uint8)).convert("RGB").save(
            tmp_path / f"{i:05d}.jpg")
    stock = engine.predictor.init_state(str(tmp_path))
    ours = engine.predictor.new_state(2, 48, 56, lambda i: None)
    assert set(stock) == set(ours) - {FEATURES} == STATE_KEYS == _init_state_keys()


def test_built_through_sam2_builder_as_subclass(engine, random_checkpoint):
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    from medseg.engine.predictor import MedsegVideoPredictor

    assert type(engine.predictor) is MedsegVideoPredictor
    assert isinstance(engine.predictor, SAM2VideoPredictor)
    sd, meta = load_state_dict(random_checkpoint)
    assert meta["random_weights"] and infer_model_size(sd) == "tiny"
    own = engine.predictor.state_dict()
    k = "image_encoder.trunk.patch_embed.proj.weight"
    np.testing.assert_array_equal(own[k].numpy(), sd[k].numpy())
    assert engine.describe()["random_weights"] is True
    assert engine.image_size == 256


def test_memory_window_follows_the_config(engine):
    p = engine.predictor
    assert (p.num_maskmem, p.max_obj_ptrs_in_encoder, p.memory_temporal_stride_for_eval) == \
        (7, 16, 1)
    assert p.memory_window() == 14
    p.memory_temporal_stride_for_eval = 4
    try:
        assert p.memory_window() == 23  # (7 - 2) * 4 + 3 > 14
    finally:
        p.memory_temporal_stride_for_eval = 1


def test_unsupported_sam2_is_refused(monkeypatch):
    import importlib.metadata as md

    from medseg.engine import predictor

    real = md.version
    monkeypatch.setattr(md, "version", lambda n: "2.0.0" if n == "sam2" else real(n))
    with pytest.raises(ModelError, match=r"sam2 \(2.0.0\) is not supported.*>=1.1.0,<1.2"):
        predictor.check_compatibility()
    monkeypatch.setattr(md, "version", real)
    monkeypatch.setattr(predictor, "_init_state_keys", lambda: predictor.STATE_KEYS | {"new"})
    with pytest.raises(ModelError, match="init_state keys changed: new"):
        predictor.check_compatibility()


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 3])
def test_equal_to_stock_sam2(random_checkpoint, batch_size):
    """medseg's engine against stock sam2's public API on the same frames: bit-identical at
    batch size 1; batched kernels within 1e-5 (logits), a pixel flipped only at a logit that
    close to 0."""
    from medseg.engine import Sam2Engine
    from medseg.engine.reference import (
        compare,
        sample_frames,
        stock_pairs,
        stock_predictor,
        stock_run,
    )

    e = Sam2Engine(model="tiny", checkpoint=str(random_checkpoint), device="cpu",
                   batch_size=batch_size)
    ref = stock_predictor(e)
    u8, masks = sample_frames(6, 256, seed=2)
    s = 2
    q_u8 = np.delete(u8, s, axis=0)
    q, sup = (q_u8 / 255.0).astype(np.float32), (u8[s] / 255.0).astype(np.float32)
    vol = e.run_volume(q, sup, masks, insert_at=s, keep_logits=True)
    pair = e.run_pairs(q, sup[None], masks[None], np.zeros(len(q), int), keep_logits=True)
    for ours, stock in (((vol.logits, vol.object_scores),
                         stock_run(ref, u8, s, masks, e.autocast)),
                        ((pair.logits, pair.object_scores),
                         stock_pairs(ref, u8[s], q_u8, masks, e.autocast))):
        c = compare(ours, stock)
        if batch_size == 1:
            assert c["bitwise_equal"], c
        assert c["max_abs_logit_diff"] <= 1e-5, c
        # a batched kernel may move a logit by an ulp: a pixel may flip only where the
        # stock logit lies within that difference of 0
        flipped = (ours[0] > 0) != (stock[0] > 0)
        assert np.all(np.abs(stock[0][flipped]) <= c["max_abs_logit_diff"]), c
    # a one-level change of one pixel moves the logits: the comparison is sensitive
    q2 = q.copy()
    q2[0, 100, 100] += 1 / 255
    moved = e.run_pairs(q2, sup[None], masks[None], np.zeros(len(q), int), keep_logits=True)
    assert not np.array_equal(moved.logits[0], pair.logits[0])


@pytest.mark.slow
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
    assert {"encode", "match", "track"} <= set(out.timings)
    vol = engine.run_volume(q, bank[0], masks[0], insert_at=3)
    assert vol.labels.shape == q.shape and np.isfinite(vol.object_scores).all()
    # an object absent from the support yields nothing and no score
    masks[:, 1] = False
    out = engine.run_pairs(q, bank, masks, matches=np.zeros(7, int))
    assert not (out.labels == 2).any() and np.isnan(out.object_scores[:, 1]).all()


@pytest.mark.slow
def test_inline_matching_with_prior(engine):
    """A prior added to the SAM2-feature distances steers the matches."""
    q, bank = frames(n=5, seed=7), frames(3, seed=8)
    masks = np.zeros((3, 1, 48, 56), bool)
    masks[:, 0, 5:25, 5:25] = True
    free = engine.run_pairs(q, bank, masks)
    prior = np.full((5, 3), 1e3, np.float32)
    prior[:, 2] = 0
    steered = engine.run_pairs(q, bank, masks, prior=prior)
    assert (steered.matches == 2).all()
    np.testing.assert_allclose(steered.distances - prior, free.distances, atol=2e-4)  # fp32 at 1e3


@pytest.mark.slow
def test_identity_member_matches_itself(engine):
    bank = frames(4, seed=3)
    d = engine.distances(engine.descriptors(engine.encode(bank)),
                         engine.descriptors(engine.encode(bank)))
    np.testing.assert_array_equal(d.argmin(1), np.arange(4))


@pytest.mark.slow
def test_feature_store_budget_and_reuse(engine):
    """Volume mode with encoder features kept from matching gives the same result."""
    from medseg.engine.features import entry_mb

    q = frames(n=9, h=40, w=40, seed=6)
    m = np.zeros((1, 40, 40), bool)
    m[0, 8:20, 8:20] = True
    store = engine.store(q, budget_mb=1e6)
    list(store.batches())
    assert store.kept == list(range(9))
    one = entry_mb(engine.encode(q[:1])[0])
    few = engine.store(q, budget_mb=1.5 * one)
    list(few.batches())
    assert few.kept == [0]
    fresh = engine.run_volume(q, q[4], m, insert_at=4)
    reused = engine.run_volume(q, q[4], m, insert_at=4, store=store)
    np.testing.assert_array_equal(fresh.labels, reused.labels)
    np.testing.assert_array_equal(fresh.object_scores, reused.object_scores)
    assert store.encode_seconds > 0 and reused.timings.get("encode", 0) < fresh.timings["encode"]


@pytest.mark.slow
def test_pruning_keeps_results_exact(engine):
    """Dropping outputs beyond SAM2's memory window changes nothing (both directions)."""
    w = engine.predictor.memory_window()
    q = frames(n=2 * w + 8, h=32, w=32, seed=4)
    m = np.zeros((1, 32, 32), bool)
    m[0, 8:20, 8:20] = True
    pruned = engine.run_volume(q, q[w + 3], m, insert_at=w + 3, keep_logits=True)
    engine.prune = False
    try:
        full = engine.run_volume(q, q[w + 3], m, insert_at=w + 3, keep_logits=True)
    finally:
        engine.prune = True
    np.testing.assert_array_equal(pruned.logits, full.logits)
    np.testing.assert_array_equal(pruned.object_scores, full.object_scores)


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


def test_checkpoint_is_read_once_and_loaded_strictly(random_checkpoint, tmp_path, monkeypatch):
    """The model is built from the state dict the checks read (one torch.load), with
    sam2's strictness: a checkpoint lacking a key is refused in one line."""
    import torch

    from medseg.engine import Sam2Engine

    real, calls = torch.load, []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    e = Sam2Engine(model="tiny", checkpoint=str(random_checkpoint), device="cpu")
    assert len(calls) == 1
    monkeypatch.setattr(torch, "load", real)
    sd = real(random_checkpoint, map_location="cpu", weights_only=True)["model"]
    own = e.predictor.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items()) and set(own) == set(sd)
    del sd["sam_mask_decoder.pred_obj_score_head.layers.2.bias"]
    torch.save({"model": sd}, tmp_path / "lacking.pt")
    with pytest.raises(ModelError, match="does not fit the SAM2.1 config"):
        Sam2Engine(model="tiny", checkpoint=str(tmp_path / "lacking.pt"), device="cpu")


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


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_equal_to_stock(random_checkpoint, precision):
    """On a GPU, in fp32 and bf16: bit-identical to stock sam2 at batch size 1."""
    from medseg.engine import Sam2Engine
    from medseg.engine.reference import compare, sample_frames, stock_pairs, stock_predictor

    e = Sam2Engine(model="tiny", checkpoint=str(random_checkpoint), device="cuda", batch_size=1,
                   precision=precision)
    u8, masks = sample_frames(4, 256, seed=1)
    q = (u8[1:] / 255.0).astype(np.float32)
    pair = e.run_pairs(q, q[:1] * 0 + u8[0] / 255.0, masks[None], np.zeros(3, int),
                       keep_logits=True)
    c = compare((pair.logits, pair.object_scores),
                stock_pairs(stock_predictor(e), u8[0], u8[1:], masks, e.autocast))
    assert c["bitwise_equal"], c


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
    digest = checkpoints.sha256(path)
    assert checkpoints.provenance(path, digest, {}).startswith("official SAM2.1 release")
    assert checkpoints.provenance(random_checkpoint, checkpoints.sha256(random_checkpoint),
                                  {}).startswith("supplied by the user")


@pytest.mark.slow
def test_absent_object_gives_empty_masks(tmp_path):
    """Where SAM2's object score says 'absent' (negative), the masks are empty."""
    from medseg.engine import Sam2Engine

    ck = build_random_checkpoint(tmp_path / "neg.pt", "tiny", image_size=256, object_score_bias=-5.0)
    e = Sam2Engine(model="tiny", checkpoint=str(ck), device="cpu", batch_size=4)
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

    from medseg.engine import merge

    logits = torch.tensor([[[[2.0, -1.0, 0.5, -3.0]]], [[[1.0, 3.0, 0.7, -2.0]]]])
    lab = merge(logits, [1, 2])
    np.testing.assert_array_equal(lab, [[1, 2, 2, 0]])


@pytest.mark.slow
def test_kept_masks_are_each_objects_own(engine):
    """``keep_masks``: every object's mask is its logit > 0 (overlaps included) and the
    labelmap is the one made without them."""
    q = frames()
    bank = frames(2, seed=1)
    masks = np.zeros((2, 2, 48, 56), bool)
    masks[:, 0, 10:30, 10:40] = True
    masks[:, 1, 20:40, 25:50] = True  # overlaps object 0
    matches = np.array([0, 1, 0, 1, 0, 1, 0])
    plain = engine.run_pairs(q, bank, masks, matches)
    kept = engine.run_pairs(q, bank, masks, matches, keep_logits=True, keep_masks=True)
    np.testing.assert_array_equal(kept.labels, plain.labels)
    np.testing.assert_array_equal(kept.masks, kept.logits > 0)
    vol = engine.run_volume(q, bank[0], masks[0], 3, keep_logits=True, keep_masks=True)
    np.testing.assert_array_equal(vol.masks, vol.logits > 0)
    np.testing.assert_array_equal(vol.labels, engine.run_volume(q, bank[0], masks[0], 3).labels)
    for out in (kept, vol):  # the labelmap says one of the objects whose mask is there
        lab = out.labels
        for k in range(2):
            assert out.masks[:, k][lab == k + 1].all()
        assert not out.masks.any(axis=1)[lab == 0].any()


@pytest.mark.slow
def test_scan_mode_with_prompts_on_several_frames_equals_stock(random_checkpoint):
    """SAM2's interactive video mode on the painted scan: mask prompts on several frames
    (two objects, different frames, one empty prompt), propagated both ways from the first
    prompt -- bit-identical to stock sam2's add_new_mask + propagate_in_video at batch
    size 1, prompted frames kept as prompted."""
    from medseg.engine import Sam2Engine
    from medseg.engine.reference import compare, sample_frames, stock_predictor, stock_run_prompts

    e = Sam2Engine(model="tiny", checkpoint=str(random_checkpoint), device="cpu", batch_size=1)
    u8, masks = sample_frames(7, 256, seed=5)
    frames = (u8 / 255.0).astype(np.float32)
    prompts = {2: {0: masks[0]}, 5: {0: masks[0], 1: masks[1]}, 6: {1: np.zeros_like(masks[1])}}
    ours = e.run_scan(frames, prompts, 2, keep_logits=True, keep_masks=True)
    stock = stock_run_prompts(stock_predictor(e), u8, prompts, 2, e.autocast)
    c = compare((ours.logits, ours.object_scores), stock)
    assert c["bitwise_equal"], c
    assert not np.isnan(ours.logits).any()  # every frame, both directions
    # a prompted frame's output is its prompt as SAM2 sees it (the mask input at its low
    # resolution, used as output); medseg puts the drawn mask itself back (support.complete)
    a, b = ours.masks[5, 1], masks[1]
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95
    assert not ours.masks[6, 1].any() and ours.object_scores[6, 1] < 0
    # a wrong logit anywhere is caught: drop the backward pass
    broken = ours.logits.copy()
    broken[:2] = 0.0
    assert not compare((broken, ours.object_scores), stock)["bitwise_equal"]


def test_compare_counts_every_frame():
    """The comparison with stock sam2 covers every frame: a frame one side lacks makes it
    fail on logits (infinite difference), not only on pixels."""
    from medseg.engine.reference import compare

    rng = np.random.default_rng(0)
    logits, scores = rng.normal(size=(4, 2, 8, 8)).astype(np.float32), rng.normal(size=(4, 2))
    same = compare((logits, scores), (logits.copy(), scores.copy()))
    assert same["bitwise_equal"] and same["max_abs_logit_diff"] == 0 == same["frames_missing"]
    lacking, lacking_scores = logits.copy(), scores.copy()
    lacking[:2], lacking_scores[:2] = np.nan, np.nan  # e.g. no backward pass
    c = compare((lacking, lacking_scores), (logits, scores))
    assert c["frames_missing"] == 2 and c["max_abs_logit_diff"] == np.inf
    assert not c["bitwise_equal"]
    c = compare((logits[:3], scores[:3]), (logits, scores))
    assert c["max_abs_logit_diff"] == np.inf and not c["bitwise_equal"]
    moved = logits.copy()
    moved[3, 1, 4, 4] += 1e-3
    assert compare((moved, scores), (logits, scores))["max_abs_logit_diff"] == \
        pytest.approx(1e-3, rel=1e-2)


@pytest.mark.slow
def test_a_broken_engine_fails_the_comparison(random_checkpoint, monkeypatch):
    """An engine that skips the backward pass is caught by the logits comparison."""
    from medseg.engine import Sam2Engine
    from medseg.engine.reference import compare, sample_frames, stock_predictor, stock_run

    e = Sam2Engine(model="tiny", checkpoint=str(random_checkpoint), device="cpu", batch_size=1)
    u8, masks = sample_frames(5, 256, seed=3)
    s = 2
    q = (np.delete(u8, s, axis=0) / 255.0).astype(np.float32)
    track = e.predictor.track
    monkeypatch.setattr(e.predictor, "track", lambda state, start, reverse=False, prune=True:
                        iter(()) if reverse else track(state, start, reverse, prune))
    vol = e.run_volume(q, (u8[s] / 255.0).astype(np.float32), masks, insert_at=s,
                       keep_logits=True)
    c = compare((vol.logits, vol.object_scores), stock_run(stock_predictor(e), u8, s, masks,
                                                           e.autocast))
    assert c["frames_missing"] == 2 and c["max_abs_logit_diff"] == np.inf, c
