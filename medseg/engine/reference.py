"""Stock sam2, driven only through its public API: the reference medseg's engine must equal.

Frames go to sam2's own loader as a folder of lossless PNG data under the ``00000.jpg``
names it expects, at the model's input size (so its loader does not resize them); masks
enter with ``add_new_mask`` and propagate with ``propagate_in_video`` forward, then
backward. Used by the tests and ``scripts/check_equivalence.py``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .._lazy import lazy_import
from ..checkpoints import model_spec

torch = lazy_import("torch")
pil_image = lazy_import("PIL.Image", install="pip install pillow")
sam2_build = lazy_import("sam2.build_sam")


def stock_predictor(engine):
    """sam2's own ``SAM2VideoPredictor`` with the engine's config, checkpoint and size."""
    over = [f"++model.image_size={engine.image_size}"] if engine.image_size != 1024 else []
    return sam2_build.build_sam2_video_predictor(model_spec(engine.model_name).config,
                                      str(engine.checkpoint_path), device=str(engine.device),
                                      hydra_overrides_extra=over)


def stock_run(predictor, frames_u8: np.ndarray, prompt_frame: int, masks: np.ndarray,
              autocast: Callable) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n - 1, K, H, W) and object scores (n - 1, K) of every frame but the prompted one.

    ``predictor`` is sam2's own predictor (:func:`stock_predictor`); ``masks`` is
    (K, H, W) bool, object ``k`` = id ``k``.
    """
    n, h, w = frames_u8.shape
    k = len(masks)
    logits = np.full((n, k, h, w), np.nan, np.float32)
    scores = np.full((n, k), np.nan, np.float32)
    with tempfile.TemporaryDirectory() as d:
        for i, f in enumerate(frames_u8):
            pil_image.fromarray(f).convert("RGB").save(Path(d) / f"{i:05d}.jpg", format="PNG")
        with torch.inference_mode(), autocast():
            state = predictor.init_state(d)
            for o, m in enumerate(masks):
                predictor.add_new_mask(state, prompt_frame, o, torch.from_numpy(m))
            for reverse in (False, True):
                for f, _, lg in predictor.propagate_in_video(state, start_frame_idx=prompt_frame,
                                                             reverse=reverse):
                    logits[f] = lg[:, 0].float().cpu().numpy()
            for o in range(k):
                for f, out in state["output_dict_per_obj"][o]["non_cond_frame_outputs"].items():
                    scores[f, o] = float(out["object_score_logits"].float().reshape(-1)[0])
    keep = [i for i in range(n) if i != prompt_frame]
    return logits[keep], scores[keep]


def stock_run_prompts(predictor, frames_u8: np.ndarray, prompts: dict[int, dict[int, np.ndarray]],
                      objects: int, autocast: Callable) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n, K, H, W) and object scores (n, K) of every frame, with mask prompts on
    several frames (``prompts[frame][object]``), through stock sam2's public API: objects
    that start on the same frame in one ``init_state``, ``add_new_mask`` object by object on
    its frames in order, ``propagate_in_video`` forward and backward from its default
    start. Prompted frames hold their prompt's output."""
    n, h, w = frames_u8.shape
    logits = np.full((n, objects, h, w), np.nan, np.float32)
    scores = np.full((n, objects), np.nan, np.float32)
    first: dict[int, int] = {}
    for f in sorted(prompts):
        for o in prompts[f]:
            first.setdefault(o, f)
    groups: dict[int, list[int]] = {}
    for o in sorted(first):
        groups.setdefault(first[o], []).append(o)
    with tempfile.TemporaryDirectory() as d:
        for i, f in enumerate(frames_u8):
            pil_image.fromarray(f).convert("RGB").save(Path(d) / f"{i:05d}.jpg", format="PNG")
        for objs in groups.values():
            with torch.inference_mode(), autocast():
                state = predictor.init_state(d)
                for local, o in enumerate(objs):
                    for f in sorted(prompts):
                        if o in prompts[f]:
                            predictor.add_new_mask(state, f, local,
                                                   torch.from_numpy(prompts[f][o]))
                for reverse in (False, True):
                    for f, _, lg in predictor.propagate_in_video(state, reverse=reverse):
                        logits[f, objs] = lg[:, 0].float().cpu().numpy()
                for local, o in enumerate(objs):
                    per = state["output_dict_per_obj"][local]
                    for f, out in {**per["cond_frame_outputs"],
                                   **per["non_cond_frame_outputs"]}.items():
                        scores[f, o] = float(out["object_score_logits"].float().reshape(-1)[0])
    return logits, scores


def stock_pairs(predictor, support_u8: np.ndarray, queries_u8: np.ndarray, masks: np.ndarray,
                autocast: Callable) -> tuple[np.ndarray, np.ndarray]:
    """One stock 2-frame video [support, query] per query frame; results of frame 1."""
    res = [stock_run(predictor, np.stack([support_u8, q]), 0, masks, autocast) for q in queries_u8]
    return np.concatenate([r[0] for r in res]), np.concatenate([r[1] for r in res])


def compare(ours: tuple[np.ndarray, np.ndarray], stock: tuple[np.ndarray, np.ndarray]) -> dict:
    """How two runs' logits (n, K, H, W) and object scores (n, K) differ, over every frame.

    A frame one side computed and the other did not (NaN on one side only), or arrays of
    different shapes, count as ``frames_missing`` and make every difference infinite: a
    comparison never passes on the frames both happened to compute.

    Returns:
        ``max_abs_logit_diff`` and ``max_abs_score_diff`` (the largest over every frame),
        ``frames_missing``, ``pixels_differing`` (mask pixels, logit > 0), ``pixels`` and
        ``bitwise_equal``.
    """
    (la, sa), (lb, sb) = ours, stock
    if la.shape != lb.shape or sa.shape != sb.shape:
        return {"max_abs_logit_diff": float("inf"), "max_abs_score_diff": float("inf"),
                "frames_missing": abs(len(la) - len(lb)) or len(la), "pixels_differing":
                int(max(la.size, lb.size)), "pixels": int(max(la.size, lb.size)),
                "bitwise_equal": False}
    axes = tuple(range(1, la.ndim))
    missing = int(((np.isnan(la).all(axis=axes) != np.isnan(lb).all(axis=axes))
                   | (np.isnan(sa).all(axis=1) != np.isnan(sb).all(axis=1))).sum())
    nan_differs = bool((np.isnan(la) != np.isnan(lb)).any() or (np.isnan(sa) != np.isnan(sb)).any())

    def largest(a: np.ndarray, b: np.ndarray) -> float:
        if missing or nan_differs:
            return float("inf")
        d = np.abs(a - b)
        return float(np.nanmax(d)) if not np.isnan(d).all() else 0.0

    return {
        "max_abs_logit_diff": largest(la, lb),
        "max_abs_score_diff": largest(sa, sb),
        "frames_missing": missing,
        "pixels_differing": int(((la > 0) != (lb > 0)).sum()),
        "pixels": int(la.size),
        "bitwise_equal": bool(not missing and np.array_equal(la, lb, equal_nan=True)
                              and np.array_equal(sa, sb, equal_nan=True)),
    }


def sample_frames(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames with smooth structures and noise, plus two object masks (2, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    small = ((yy + 0.4) / 0.2) ** 2 + ((xx - 0.5) / 0.15) ** 2 < 1
    frames = []
    for i in range(n):
        c = 0.05 * np.sin(i)
        img = 0.3 + 0.4 * (((yy - c) / 0.5) ** 2 + ((xx + c) / 0.35) ** 2 < 1) + 0.2 * small
        img = img + rng.normal(0, 0.05, img.shape)
        frames.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    masks = np.stack([(yy / 0.5) ** 2 + (xx / 0.35) ** 2 < 1, small])
    return np.stack(frames), masks
