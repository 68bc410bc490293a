"""Building SAM2 through sam2's own builder: medseg's predictor for real checkpoints, and
random-weight models (tests, timing) from the same config and build path.

sam2 chooses its predictor class with the Hydra override ``++model._target_=...``;
medseg passes its own subclass the same way, so the real builder and config are used
unchanged. The checkpoint is read once (checked by :mod:`medseg.checkpoints`) and its
state dict loaded into the model the builder made, strictly, as sam2's own
``_load_checkpoint`` loads it (a missing or unexpected key fails). A Hydra set up by another
application (a notebook, a host program) is set aside while sam2's config module is used,
and restored afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

from .._lazy import MissingDependency, lazy_import
from ..checkpoints import model_spec
from ..errors import DeviceError, ModelError

torch = lazy_import("torch")
hydra = lazy_import("hydra")
global_hydra = lazy_import("hydra.core.global_hydra")
sam2_build = lazy_import("sam2.build_sam", install="see README.md, 'Quick start' (scripts/setup.sh)")
predictor_module = lazy_import("medseg.engine.predictor")  # imports torch and sam2


def random_state_dict(config: str, image_size: int, seed: int) -> dict:
    """The state dict of a SAM2 model built by sam2's own builder from ``config`` with
    random weights (seeded; the caller's random state is left as it was)."""
    return _build_sam2(config, None, "cpu", [f"++model.image_size={image_size}"],
                       seed=seed).state_dict()


def build_predictor(config: str, path, device, image_size: int, state_dict: dict | None = None):
    """medseg's predictor through sam2's own builder (Hydra config, ``weights_only`` load);
    with ``state_dict`` (the checkpoint at ``path`` as already read) the file is not read
    again."""
    try:
        check_compatibility = predictor_module.check_compatibility  # imports torch and sam2
    except (ImportError, MissingDependency) as exc:
        raise ModelError(f"the sam2 package is not installed or broken ({exc}); see README.md, "
                         "'Quick start'") from exc
    check_compatibility()
    overrides = [f"++model._target_={predictor_module.TARGET}"]
    if image_size != 1024:
        overrides.append(f"++model.image_size={image_size}")
    try:
        if state_dict is None:
            predictor = _build_sam2(config, str(path), str(device), overrides)
        else:
            predictor = _build_sam2(config, None, str(device), overrides)
            predictor.load_state_dict(state_dict)  # strict, as sam2's _load_checkpoint
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise DeviceError(f"out of GPU memory while loading the model on {device}") from exc
        raise ModelError(f"checkpoint {path} does not fit the SAM2.1 config {config} "
                         f"({str(exc).splitlines()[0][:200] or 'missing or unexpected keys'})"
                         ) from exc
    check_compatibility(predictor)
    return predictor


def _build_sam2(config: str, checkpoint: str | None, device: str, overrides: list[str],
                seed: int | None = None):
    """``build_sam2_video_predictor`` without moving the caller's random state (``seed``
    seeds the random initialisation), also while another application's Hydra is set up."""
    def build():
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return sam2_build.build_sam2_video_predictor(config, checkpoint, device=device,
                                                         hydra_overrides_extra=overrides)

    try:
        return build()
    except Exception as exc:  # Hydra initialised elsewhere: "Cannot find primary config"
        if "primary config" not in str(exc):
            raise
        return _with_sam2_hydra(build)


def _with_sam2_hydra(build):
    """Build with sam2's Hydra config module while another application's Hydra setup is
    active; that setup is restored afterwards."""
    GlobalHydra = global_hydra.GlobalHydra
    gh = GlobalHydra.instance()
    saved = gh.config_loader() if gh.is_initialized() else None
    gh.clear()
    try:
        with hydra.initialize_config_module("sam2", version_base="1.2"):
            return build()
    finally:
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


def build_random_checkpoint(
    path: str | os.PathLike,
    model: str = "tiny",
    image_size: int = 256,
    seed: int = 0,
    object_score_bias: float | None = None,
) -> Path:
    """Save a SAM2.1 checkpoint with random weights, built from the real sam2 config.

    For tests, smoke runs and speed benchmarks only: its masks carry no anatomy, and the file
    is marked ``random_weights`` so reports and pictures say so. ``object_score_bias`` sets
    the bias of the object-score head (positive: the model "sees" an object on every frame,
    so code paths that handle non-empty masks are exercised).
    """
    sd = random_state_dict(model_spec(model).config, image_size, seed)
    if object_score_bias is not None:
        sd["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(float(object_score_bias))
    meta = {"image_size": int(image_size), "random_weights": True, "model": model, "seed": seed,
            "object_score_bias": object_score_bias}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    torch.save({"model": sd, "medseg": meta}, tmp)
    os.replace(tmp, out)
    return out
