"""SAM2 video predictor driven from in-memory frames.

The real ``sam2`` builder and predictor are used unchanged. What medseg adds around them:

* an inference state built from normalised frames in memory (no JPEG/mp4 round trip);
  the state has exactly the keys of ``SAM2VideoPredictor.init_state`` (checked by a test);
* the image encoder runs in batches: features for the next ``batch_size`` frames are put
  into the state's feature cache before the predictor asks for them;
* on long volumes, outputs of frames that SAM2's memory can no longer reach are dropped,
  so memory stays bounded;
* two prompting modes: ``pair`` (Zu et al. 2025: a 2-frame clip [matched support, query
  frame] per query frame) and ``volume`` (the matched support inserted into the query
  stack, masks propagated forward and backward with SAM2's memory).

Overlap rule when several labels are segmented together: a pixel goes to the label with the
highest mask logit among those whose logit is positive.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .checkpoints import model_spec, resolve_checkpoint, sha256, validate_checkpoint
from .errors import DeviceError, ModelError
from .frames import to_model_input

log = logging.getLogger(__name__)

MODES = ("pair", "volume")
MATCH_POOL = 16  # LPIPS-style distance on features average-pooled to 16 x 16


def select_device(spec: str = "auto"):
    """``auto|cpu|cuda|cuda:N|mps`` -> torch.device, with a clear error if unavailable."""
    import torch

    spec = (spec or "auto").lower()
    if spec == "gpu":
        spec = "cuda"
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {spec}: no CUDA GPU is available to this torch "
                f"({torch.__version__}); use --device cpu (slow) or install a CUDA build of torch"
            )
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
        return dev
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError("--device mps: Apple MPS is not available here; use --device cpu")
        return torch.device("mps")
    if spec == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"--device {spec!r}: use auto, cpu, cuda, cuda:N or mps")


@contextlib.contextmanager
def _sam2_quiet() -> Iterator[None]:
    """Silence sam2's per-call progress bar (medseg shows its own)."""
    import sam2.sam2_video_predictor as svp

    original = svp.tqdm
    svp.tqdm = lambda it, *a, **k: it
    try:
        with warnings.catch_warnings():
            # without sam2's optional CUDA extension it skips hole filling; harmless
            warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
            yield
    finally:
        svp.tqdm = original


class LazyFrames:
    """Frames for SAM2's state, converted to model input only when asked for."""

    def __init__(self, frames: Sequence[np.ndarray], image_size: int):
        self.frames = frames
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, idx: int):
        return to_model_input(np.asarray(self.frames[idx])[None], self.image_size)[0]


@dataclass
class EngineOutput:
    """Per-frame results of one run (query frames only)."""

    labels: np.ndarray  # (n, H, W) uint8: 0 or 1..K (object index + 1)
    object_scores: np.ndarray  # (n, K) SAM2 object-score logits (NaN where not run)
    matches: np.ndarray  # (n,) bank member used per query frame
    distances: np.ndarray | None = None  # (n, M) matcher distances, if computed here
    timings: dict[str, float] = field(default_factory=dict)
    logits: np.ndarray | None = None  # (n, K, H, W) float32 mask logits, if asked for (NaN: not run)


class Sam2Engine:
    """A loaded SAM2.1 video predictor plus medseg's batching and prompting."""

    def __init__(
        self,
        model: str = "tiny",
        checkpoint: str | None = None,
        device: str = "auto",
        image_size: int | None = None,
        batch_size: int = 8,
        precision: str = "auto",
        allow_download: bool = True,
        progress: bool = True,
    ):
        import torch

        self.model_name = model
        spec = model_spec(model)
        self.device = select_device(device)
        path, source = resolve_checkpoint(model, checkpoint, allow_download=allow_download,
                                          progress=progress)
        meta = validate_checkpoint(path, model, from_cache=source in ("cache", "download"))
        self.checkpoint_path = path
        self.checkpoint_source = source
        self.checkpoint_meta = meta
        self.image_size = int(image_size or meta.get("image_size", 1024))
        self.batch_size = max(1, int(batch_size))
        t0 = time.perf_counter()
        self.predictor = _build_predictor(spec.config, path, self.device, self.image_size)
        self.load_seconds = time.perf_counter() - t0
        self._sha256: str | None = None
        if precision not in ("auto", "bf16", "fp32"):
            raise ModelError(f"precision {precision!r}: use auto, bf16 or fp32")
        use_bf16 = self.device.type == "cuda" and (
            precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported())
        )
        self.precision = "bf16" if use_bf16 else "fp32"
        self.window = max(self.predictor.num_maskmem, self.predictor.max_obj_ptrs_in_encoder) + 1

    # -- bookkeeping ---------------------------------------------------------------------
    @property
    def checkpoint_sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256(self.checkpoint_path)
        return self._sha256

    def describe(self) -> dict:
        return {
            "model": self.model_name,
            "checkpoint": str(self.checkpoint_path),
            "checkpoint_source": self.checkpoint_source,
            "checkpoint_sha256": self.checkpoint_sha256,
            "random_weights": bool(self.checkpoint_meta.get("random_weights", False)),
            "image_size": self.image_size,
            "device": str(self.device),
            "precision": self.precision,
            "batch_size": self.batch_size,
        }

    def autocast(self):
        import torch

        if self.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- image encoder ---------------------------------------------------------------------
    def encode(self, frames: np.ndarray) -> list[tuple]:
        """(B, H, W) [0, 1] frames -> per frame (image tensor, backbone_out) cache entries."""
        import torch

        with torch.inference_mode(), self.autocast():
            images = to_model_input(frames, self.image_size, device=self.device)
            out = self.predictor.forward_image(images)
        # positional encodings are the same for every frame: one shared copy; the image itself
        # is never read back from the cache (only its shape), so a zero-stride view stands in
        pos = [p[:1].clone() for p in out["vision_pos_enc"]]
        placeholder = images.new_zeros(1, 3, 1, 1).expand(1, 3, *images.shape[-2:])
        del images
        entries = []
        for i in range(len(frames)):
            bo = {
                "vision_features": out["vision_features"][i : i + 1],
                "vision_pos_enc": pos,
                "backbone_fpn": [f[i : i + 1] for f in out["backbone_fpn"]],
            }
            entries.append((placeholder, bo))
        return entries

    @staticmethod
    def match_descriptor(entries: list[tuple]):
        """LPIPS-style descriptors: unit-normalised channels per level, pooled, flattened.

        The squared Euclidean distance between two descriptors equals the mean over levels
        and (pooled) positions of the squared difference of unit-normalised features.
        """
        import torch
        import torch.nn.functional as F

        levels = len(entries[0][1]["backbone_fpn"])
        parts = []
        for lv in range(levels):
            f = torch.cat([e[1]["backbone_fpn"][lv] for e in entries]).float()
            f = F.normalize(f, dim=1)
            f = F.adaptive_avg_pool2d(f, MATCH_POOL)
            parts.append(f.flatten(1) / np.sqrt(levels * MATCH_POOL * MATCH_POOL))
        return torch.cat(parts, dim=1)

    @staticmethod
    def entry_bytes(entry: tuple) -> int:
        """Memory of one frame's cached features (shared positional encodings excluded)."""
        return sum(f.numel() * f.element_size() for f in entry[1]["backbone_fpn"])

    def descriptors(self, frames: np.ndarray, keep_mb: float = 0.0):
        """Match descriptors of many frames, encoded in batches.

        With ``keep_mb`` > 0, the encoder features of the first frames are also returned
        (up to that many MB), so a later propagation over the same frames need not encode
        them again. Returns ``(descriptors, {frame: cache entry})``.
        """
        import torch

        out, kept, used = [], {}, 0.0
        for i in range(0, len(frames), self.batch_size):
            entries = self.encode(frames[i : i + self.batch_size])
            out.append(self.match_descriptor(entries))
            for j, e in enumerate(entries):
                size = self.entry_bytes(e) / 2**20
                if used + size <= keep_mb:
                    kept[i + j] = e
                    used += size
        return torch.cat(out), kept

    # -- inference state ------------------------------------------------------------------
    def new_state(self, frames: Sequence[np.ndarray], height: int, width: int,
                  offload_state: bool = False) -> dict:
        """An inference state like ``init_state`` makes, over in-memory frames."""
        import torch

        storage = torch.device("cpu") if offload_state else self.device
        return {
            "images": LazyFrames(frames, self.image_size),
            "num_frames": len(frames),
            "offload_video_to_cpu": True,
            "offload_state_to_cpu": offload_state,
            "video_height": height,
            "video_width": width,
            "device": self.device,
            "storage_device": storage,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }

    @staticmethod
    def _object_score(state: dict, obj_idx: int, frame_idx: int) -> float:
        out_dict = state["output_dict_per_obj"][obj_idx]
        out = out_dict["non_cond_frame_outputs"].get(frame_idx) or out_dict[
            "cond_frame_outputs"
        ].get(frame_idx)
        if out is None:
            return float("nan")
        return float(out["object_score_logits"].float().reshape(-1)[0])

    @staticmethod
    def merge(logits, obj_to_label: Sequence[int]) -> np.ndarray:
        """(K, 1, H, W) logits -> (H, W) uint8 labelmap by the highest positive logit."""
        import torch

        lg = logits[:, 0].float()
        best, idx = torch.max(lg, dim=0)
        lut = torch.tensor([v for v in obj_to_label], dtype=torch.uint8, device=idx.device)
        lab = torch.where(best > 0, lut[idx], torch.zeros_like(idx, dtype=torch.uint8))
        return lab.cpu().numpy()

    # -- modes --------------------------------------------------------------------------------
    def run_pairs(
        self,
        query: np.ndarray,
        bank_images: np.ndarray,
        bank_masks: np.ndarray,
        matches: np.ndarray | None = None,
        progress: Callable[[int], None] | None = None,
        reuse_prompts: bool = True,
        keep_logits: bool = False,
    ) -> EngineOutput:
        """Mode ``pair``: per query frame a clip [matched support, query], mask prompt on 0.

        ``bank_masks`` is (M, K, H, W) bool; object k gets label k + 1. If ``matches`` is
        None the members are matched here with SAM2 encoder features (LPIPS-style), reusing
        the encoder pass the propagation needs anyway.
        """
        import torch

        n, h, w = query.shape
        k = bank_masks.shape[1]
        labels = np.zeros((n, h, w), np.uint8)
        scores = np.full((n, k), np.nan, np.float32)
        kept = np.full((n, k, h, w), np.nan, np.float32) if keep_logits else None
        t = {"encode_s": 0.0, "match_s": 0.0, "propagate_s": 0.0}
        t0 = time.perf_counter()
        # every member is needed to match here; with matches given, only the matched ones
        members = list(range(len(bank_images))) if matches is None else sorted(set(map(int, matches)))
        encoded = [e for i in range(0, len(members), self.batch_size)
                   for e in self.encode(bank_images[members[i : i + self.batch_size]])]
        bank_entries = dict(zip(members, encoded))
        t["encode_s"] += time.perf_counter() - t0
        cond_cache: dict[int, list[dict]] = {}  # member -> encoded mask prompt per object
        dist_all = None
        if matches is None:
            t0 = time.perf_counter()
            bank_desc = self.match_descriptor(encoded)
            dist_all = np.zeros((n, len(bank_images)), np.float32)
            matches = np.zeros(n, np.int64)
            t["match_s"] += time.perf_counter() - t0
        with _sam2_quiet(), torch.inference_mode(), self.autocast():
            for start in range(0, n, self.batch_size):
                t0 = time.perf_counter()
                q_entries = self.encode(query[start : start + self.batch_size])
                t["encode_s"] += time.perf_counter() - t0
                if dist_all is not None:
                    t0 = time.perf_counter()
                    qd = self.match_descriptor(q_entries)
                    d = torch.cdist(qd, bank_desc).pow(2).cpu().numpy()
                    dist_all[start : start + len(q_entries)] = d
                    matches[start : start + len(q_entries)] = d.argmin(axis=1)
                    t["match_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                for j, q_entry in enumerate(q_entries):
                    i = start + j
                    m = int(matches[i])
                    objs = [o for o in range(k) if bank_masks[m, o].any()]
                    if not objs:
                        continue
                    state = self.new_state([bank_images[m], query[i]], h, w)
                    state["cached_features"] = {0: bank_entries[m], 1: q_entry}
                    if m in cond_cache:
                        self._restore_prompt(state, objs, cond_cache[m])
                    else:
                        for o in objs:
                            self.predictor.add_new_mask(state, 0, o,
                                                        torch.from_numpy(bank_masks[m, o]))
                    for fidx, _, logits in self.predictor.propagate_in_video(state):
                        if fidx == 1:
                            labels[i] = self.merge(logits, [o + 1 for o in objs])
                            if kept is not None:
                                kept[i, objs] = logits[:, 0].float().cpu().numpy()
                    for idx, o in enumerate(objs):
                        scores[i, o] = self._object_score(state, idx, 1)
                    if reuse_prompts and m not in cond_cache:
                        cond_cache[m] = [state["output_dict_per_obj"][idx]["cond_frame_outputs"][0]
                                         for idx in range(len(objs))]
                    if progress:
                        progress(1)
                t["propagate_s"] += time.perf_counter() - t0
        return EngineOutput(labels, scores, np.asarray(matches), dist_all, t, kept)

    def _restore_prompt(self, state: dict, objs: list[int], outputs: list[dict]) -> None:
        """Put a support member's already-encoded mask prompt into a new 2-frame state.

        The conditioning output of frame 0 (mask decoding + memory encoding of the support
        with its mask) depends on the member alone, so it is computed once per member and
        reused for every query frame matched to it; the result is the same as calling
        ``add_new_mask`` again (checked by a test).
        """
        for o, out in zip(objs, outputs):
            idx = self.predictor._obj_id_to_idx(state, o)
            state["output_dict_per_obj"][idx]["cond_frame_outputs"][0] = out
            state["frames_tracked_per_obj"][idx][0] = {"reverse": False}

    def run_volume(
        self,
        query: np.ndarray,
        support_image: np.ndarray,
        support_masks: np.ndarray,
        insert_at: int,
        progress: Callable[[int], None] | None = None,
        offload_state: bool = False,
        features: dict[int, tuple] | None = None,
        keep_logits: bool = False,
    ) -> EngineOutput:
        """Mode ``volume``: the support is inserted before query frame ``insert_at`` and
        masks propagate forward and backward through the whole stack with SAM2's memory.

        ``support_masks`` is (K, H, W) bool; object k gets label k + 1. ``features`` holds
        encoder outputs already computed for query frames (e.g. while matching).
        """
        import torch

        n, h, w = query.shape
        k = support_masks.shape[0]
        objs = [o for o in range(k) if support_masks[o].any()]
        labels = np.zeros((n, h, w), np.uint8)
        scores = np.full((n, k), np.nan, np.float32)
        kept = np.full((n, k, h, w), np.nan, np.float32) if keep_logits else None
        t = {"encode_s": 0.0, "propagate_s": 0.0}
        if not objs:
            return EngineOutput(labels, scores, np.full(n, -1), None, t, kept)
        frames: list[np.ndarray] = [*query[:insert_at], support_image, *query[insert_at:]]
        s = insert_at  # index of the support frame in the stack

        def to_query(fidx: int) -> int:
            return fidx if fidx < s else fidx - 1

        state = self.new_state(frames, h, w, offload_state=offload_state)
        with _sam2_quiet(), torch.inference_mode(), self.autocast():
            for o in objs:
                self.predictor.add_new_mask(state, s, o, torch.from_numpy(support_masks[o]))
            for reverse in (False, True):
                gen = self.predictor.propagate_in_video(state, start_frame_idx=s, reverse=reverse)
                step = -1 if reverse else 1
                nxt = s
                while True:
                    # batch the encoder: fill the cache for the next frames before they are needed
                    if 0 <= nxt < len(frames) and nxt not in state["cached_features"] and nxt != s:
                        t0 = time.perf_counter()
                        idx = list(range(nxt, nxt + step * self.batch_size, step))
                        idx = [i for i in idx if 0 <= i < len(frames) and i != s]
                        cache = {i: features[to_query(i)] for i in idx
                                 if features and to_query(i) in features}
                        todo = [i for i in idx if i not in cache]
                        if todo:
                            batch = np.stack([frames[i] for i in todo])
                            cache.update(zip(todo, self.encode(batch)))
                        state["cached_features"] = cache
                        t["encode_s"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    try:
                        fidx, _, logits = next(gen)
                    except StopIteration:
                        break
                    if fidx != s:
                        qi = to_query(fidx)
                        labels[qi] = self.merge(logits, [o + 1 for o in objs])
                        if kept is not None:
                            kept[qi, objs] = logits[:, 0].float().cpu().numpy()
                        for idx_o, o in enumerate(objs):
                            scores[qi, o] = self._object_score(state, idx_o, fidx)
                        if progress:
                            progress(1)
                    self._prune(state, fidx, s)
                    t["propagate_s"] += time.perf_counter() - t0
                    nxt = fidx + step
        return EngineOutput(labels, scores, np.full(n, -1), None, t, kept)

    def _prune(self, state: dict, current: int, cond: int) -> None:
        """Drop outputs SAM2's memory can no longer reach (further than its window)."""
        for out_dict in state["output_dict_per_obj"].values():
            nc = out_dict["non_cond_frame_outputs"]
            for f in [f for f in nc if abs(f - current) > self.window and abs(f - cond) > self.window]:
                del nc[f]


def _build_predictor(config: str, path, device, image_size: int):
    """Build through sam2's own builder (Hydra config + ``weights_only`` checkpoint load)."""
    try:
        from sam2.build_sam import build_sam2_video_predictor
    except ImportError as exc:
        raise ModelError(
            f"the sam2 package is not installed or broken ({exc}); see README.md, 'Install'"
        ) from exc
    overrides = [f"++model.image_size={image_size}"] if image_size != 1024 else []

    def build():
        return build_sam2_video_predictor(config, str(path), device=str(device),
                                          hydra_overrides_extra=overrides)

    try:
        try:
            return build()
        except Exception as exc:  # Hydra initialised elsewhere: "Cannot find primary config"
            if "primary config" not in str(exc):
                raise
            from hydra import initialize_config_module
            from hydra.core.global_hydra import GlobalHydra

            GlobalHydra.instance().clear()
            initialize_config_module("sam2", version_base="1.2")
            return build()
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise DeviceError(f"out of GPU memory while loading the model on {device}") from exc
        raise ModelError(
            f"checkpoint {path} does not fit the SAM2.1 config {config} "
            f"({str(exc).splitlines()[0][:200] or 'missing or unexpected keys'})"
        ) from exc
