"""The SAM2 engine: a loaded model, its batched image encoder, and the prompting modes.

* ``pair`` (Zu et al. 2025): for every query frame a 2-frame clip [matched support member,
  query frame], the member's mask as prompt on frame 0. Clips are independent, so frame 1
  of many clips runs as one batched call; each member's prompt is encoded once.
* ``volume``: the support is inserted into the query stack and masks propagate forward
  and backward with SAM2's memory.
* ``scan`` (:meth:`Sam2Engine.run_scan`): the scan the user painted, every painted frame a
  mask prompt (SAM2's own interactive video mode), propagated forward from the first
  prompt and backward from it, as ``propagate_in_video`` does by default.

Overlap rule when several labels are segmented together: a pixel goes to the label with
the highest mask logit among those whose logit is positive.

Exactness: with ``batch_size=1`` the outputs are bit-identical to stock sam2's
``init_state`` / ``add_new_mask`` / ``propagate_in_video`` on the same frames, given at
the model's input size (tested against sam2's public API, :mod:`medseg.engine.reference`).
Larger batches change the arithmetic of batched kernels by about one unit in the last
place (``benchmarks/equivalence/``).

The engine owns the cache of support-bank encodings, keyed by the bank's content.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .._lazy import lazy_import
from ..checkpoints import model_spec, provenance, resolve_checkpoint, sha256, validate_checkpoint
from ..config import ModelConfig, with_options
from ..frames import to_model_input
from ..support.augment import content_key
from ..timing import Timer
from .build import build_predictor
from .device import select_device
from .features import FeatureStore

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")

MATCH_POOL = 16  # LPIPS-style distance on features average-pooled to 16 x 16
BANK_CACHE = 8  # support banks whose encodings the engine keeps
Progress = Callable[[int], None]


@dataclass
class EngineOutput:
    """Per-frame results of one run (query frames only)."""

    labels: np.ndarray  # (n, H, W) uint8: 0 or 1..K (object index + 1)
    object_scores: np.ndarray  # (n, K) SAM2 object-score logits (NaN where not run)
    matches: np.ndarray  # (n,) bank member used per query frame (-1: none)
    distances: np.ndarray | None = None  # (n, M) matcher distances, if computed here
    timings: dict[str, float] = field(default_factory=dict)
    logits: np.ndarray | None = None  # (n, K, H, W) float32 mask logits, if asked for
    masks: np.ndarray | None = None  # (n, K, H, W) bool, logit > 0 per object (may overlap)


def merge(logits, obj_to_label: Sequence[int]) -> np.ndarray:
    """(K, 1, H, W) logits -> (H, W) uint8 labelmap by the highest positive logit."""
    best, idx = torch.max(logits[:, 0].float(), dim=0)
    lut = torch.tensor(list(obj_to_label), dtype=torch.uint8, device=idx.device)
    return torch.where(best > 0, lut[idx], torch.zeros_like(idx, dtype=torch.uint8)).cpu().numpy()


class _Collector:
    """Fills labels, object scores and (optionally) logits frame by frame."""

    def __init__(self, n: int, k: int, h: int, w: int, keep_logits: bool,
                 keep_masks: bool = False):
        self.labels = np.zeros((n, h, w), np.uint8)
        self.scores = np.full((n, k), np.nan, np.float32)
        self.logits = np.full((n, k, h, w), np.nan, np.float32) if keep_logits else None
        self.masks = np.zeros((n, k, h, w), bool) if keep_masks else None

    def add(self, frame: int, objs: Sequence[int], logits, scores) -> None:
        self.labels[frame] = merge(logits, [o + 1 for o in objs])
        self.scores[frame, list(objs)] = scores.float().cpu().numpy()
        if self.logits is not None:
            self.logits[frame, list(objs)] = logits[:, 0].float().cpu().numpy()
        if self.masks is not None:
            self.masks[frame, list(objs)] = (logits[:, 0] > 0).cpu().numpy()

    def output(self, matches, distances, timings) -> EngineOutput:
        return EngineOutput(self.labels, self.scores, np.asarray(matches), distances,
                            {k: round(v, 4) for k, v in timings.items()}, self.logits,
                            self.masks)


@dataclass
class _BankState:
    """What the engine keeps of one support bank (see :meth:`Sam2Engine._bank`)."""

    features: dict[int, dict] = field(default_factory=dict)  # member -> encoder output
    # (masks' content key, frame size) -> member -> object -> encoded prompt
    prompts: dict[tuple[str, tuple[int, int]], dict[int, dict[int, dict]]] = field(
        default_factory=dict)


class Sam2Engine:
    """A loaded SAM2.1 video predictor (medseg's subclass) plus batching and prompting."""

    def __init__(self, config: ModelConfig | None = None, *, progress: bool = True,
                 **options) -> None:
        """Load the model.

        Args:
            config: the model settings (:class:`~medseg.config.ModelConfig`).
            progress: show a download progress bar.
            options: :class:`~medseg.config.ModelConfig` fields overriding ``config``.

        Raises:
            ModelError: checkpoint missing, corrupt or of another size; sam2 unusable.
            DeviceError: the device asked for is not available.
        """
        cfg = with_options(config or ModelConfig(), **options)
        self.config = cfg
        self.model_name = cfg.model
        spec = model_spec(cfg.model)
        self.device = select_device(cfg.device)
        path, source = resolve_checkpoint(cfg.model, cfg.checkpoint,
                                          allow_download=cfg.allow_download, progress=progress)
        state, self.checkpoint_meta = validate_checkpoint(
            path, cfg.model, from_cache=source in ("cache", "download"))
        self.checkpoint_path, self.checkpoint_source = path, source
        self.image_size = int(cfg.image_size if cfg.image_size is not None
                              else self.checkpoint_meta.get("image_size", 1024))
        self.batch_size = cfg.batch_size
        self.prune = True  # drop outputs beyond SAM2's memory reach (exact; tested)
        self._banks: OrderedDict[str, _BankState] = OrderedDict()  # see _bank
        t0 = time.perf_counter()
        self.predictor = build_predictor(spec.config, path, self.device, self.image_size, state)
        del state  # the weights live in the model now (the file is read once)
        self.load_seconds = time.perf_counter() - t0
        self._sha256: str | None = None
        use_bf16 = self.device.type == "cuda" and (
            cfg.precision == "bf16" or (cfg.precision == "auto"
                                        and torch.cuda.is_bf16_supported()))
        self.precision = "bf16" if use_bf16 else "fp32"
        self.compiled: dict | None = self._compile() if cfg.compile else None

    def _compile(self) -> dict:
        """``torch.compile`` the image encoder (fixed input size), warmed up here at the
        encoder batch size; returns the warm-up cost for the report."""
        t0 = time.perf_counter()
        enc = self.predictor.image_encoder
        enc.forward = torch.compile(enc.forward, dynamic=False)
        dummy = np.zeros((self.batch_size, 64, 64), np.float32)
        self.encode(dummy)
        self.encode(dummy[:1])  # the last, smaller batch of a volume
        return {"what": "image encoder (torch.compile, default mode)",
                "warmup_s": round(time.perf_counter() - t0, 2)}

    # -- bookkeeping ---------------------------------------------------------------------
    @property
    def checkpoint_sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256(self.checkpoint_path)
        return self._sha256

    def describe(self, usage: bool = False) -> dict:
        """The engine for reports; ``usage`` adds the peak GPU memory since the process
        started (CUDA only)."""
        info = {
            "model": self.model_name, "checkpoint": str(self.checkpoint_path),
            "checkpoint_source": self.checkpoint_source,
            "checkpoint_sha256": self.checkpoint_sha256,
            "checkpoint_provenance": provenance(self.checkpoint_path, self.checkpoint_sha256,
                                                self.checkpoint_meta),
            "random_weights": bool(self.checkpoint_meta.get("random_weights", False)),
            "image_size": self.image_size, "device": str(self.device),
            "precision": self.precision, "batch_size": self.batch_size,
            "compiled": self.compiled,
        }
        if usage and self.device.type == "cuda":
            info["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return info

    def autocast(self):
        """bf16 autocast on CUDA when the engine runs in bf16, else nothing."""
        if self.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Inference mode and the engine's precision (sam2's note that its optional CUDA
        extension for hole filling is missing is silenced: harmless, see README)."""
        with torch.inference_mode(), self.autocast(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
            yield

    # -- image encoder ---------------------------------------------------------------------
    def encode(self, frames: np.ndarray) -> list[dict]:
        """(B, H, W) [0, 1] frames -> per frame the encoder output (batch dimension 1)."""
        with self.context():
            images = to_model_input(frames, self.image_size, device=self.device)
            out = self.predictor.forward_image(images)
        pos = [p[:1].clone() for p in out["vision_pos_enc"]]  # the same for every frame
        return [{"backbone_fpn": [f[i : i + 1] for f in out["backbone_fpn"]], "vision_pos_enc": pos}
                for i in range(len(frames))]

    def encode_many(self, frames: np.ndarray) -> list[dict]:
        """Like :meth:`encode`, in batches of ``batch_size``."""
        return [e for i in range(0, len(frames), self.batch_size)
                for e in self.encode(frames[i : i + self.batch_size])]

    def _bank(self, images: np.ndarray, key: str | None = None) -> _BankState:
        """Encoder features and encoded prompts of a bank's members, kept by the bank's
        content key while it is used again (a cohort reuses its support's bank for every
        query); ``key`` is the bank's own when the caller has it, else computed here."""
        key = key or content_key(images)
        state = self._banks.get(key)
        if state is None:
            state = self._banks[key] = _BankState()
            while len(self._banks) > BANK_CACHE:
                self._banks.popitem(last=False)
        self._banks.move_to_end(key)
        return state

    def prompts(self, images: np.ndarray, masks: np.ndarray, size: tuple[int, int],
                key: str | None = None) -> dict[int, dict[int, dict]]:
        """Encoded mask prompts (member -> object -> output) for these masks and frame size."""
        per = self._bank(images, key).prompts
        return per.setdefault((content_key(masks), tuple(size)), {})

    def member_features(self, images: np.ndarray, members: Sequence[int],
                        key: str | None = None) -> dict[int, dict]:
        """Encoder outputs of bank members (encoded once per bank, in batches)."""
        feats = self._bank(images, key).features
        todo = [m for m in members if m not in feats]
        feats.update(zip(todo, self.encode_many(images[todo]) if todo else []))
        return {m: feats[m] for m in members}

    def store(self, frames: np.ndarray, budget_mb: float = 0.0) -> FeatureStore:
        """A feature store over ``frames`` keeping up to ``budget_mb`` of features."""
        return FeatureStore(self, frames, budget_mb)

    @staticmethod
    def descriptors(entries: Sequence[dict]):
        """LPIPS-style descriptors: unit-normalised channels per level, pooled, flattened.

        The squared Euclidean distance between two descriptors equals the mean over levels
        and (pooled) positions of the squared difference of unit-normalised features.
        """
        levels = len(entries[0]["backbone_fpn"])
        parts = []
        for lv in range(levels):
            f = torch.cat([e["backbone_fpn"][lv] for e in entries]).float()
            f = F.adaptive_avg_pool2d(F.normalize(f, dim=1), MATCH_POOL)
            parts.append(f.flatten(1) / np.sqrt(levels * MATCH_POOL * MATCH_POOL))
        return torch.cat(parts, dim=1)

    @staticmethod
    def distances(query_desc, bank_desc) -> np.ndarray:
        """Squared Euclidean distances between descriptors (query x bank)."""
        return torch.cdist(query_desc, bank_desc).pow(2).cpu().numpy()

    # -- pair mode ---------------------------------------------------------------------------
    def run_pairs(self, query: np.ndarray, bank_images: np.ndarray, bank_masks: np.ndarray,
                  matches: np.ndarray | None = None, *, prior: np.ndarray | None = None,
                  store: FeatureStore | None = None, progress: Progress | None = None,
                  keep_logits: bool = False, keep_masks: bool = False,
                  bank_key: str | None = None) -> EngineOutput:
        """Mode ``pair``: per query frame a clip [matched member, frame], mask prompt on 0.

        ``bank_masks`` is (M, K, H, W) bool; object k gets label k + 1 (``keep_masks``: each
        object's own mask too, overlaps included). Without ``matches``
        every frame is matched here, on the encoder features the tracking needs anyway
        (LPIPS-style distance, plus ``prior`` (n, M) if given). ``bank_key``: the bank's
        content key, under which its encodings are kept (computed when not given).
        """
        n, h, w = query.shape
        store = store or self.store(query)
        col, t = _Collector(n, bank_masks.shape[1], h, w, keep_logits, keep_masks), Timer()
        to_match = matches is None
        members = range(len(bank_images)) if to_match else sorted(set(int(m) for m in matches))
        with t("encode"):
            feats = self.member_features(bank_images, list(members), bank_key)
        dist = np.zeros((n, len(bank_images)), np.float32) if to_match else None
        matches = np.zeros(n, np.int64) if to_match else np.asarray(matches, np.int64)
        bank_desc = self.descriptors(list(feats.values())) if to_match else None
        conds = self.prompts(bank_images, bank_masks, (h, w), bank_key)
        e0 = store.encode_seconds
        for idx, entries in store.batches():
            if to_match:
                with t("match"):
                    d = self.distances(self.descriptors(entries), bank_desc)
                    dist[idx] = d if prior is None else d + prior[idx]
                    matches[idx] = dist[idx].argmin(axis=1)
            with t("track"):
                self._track_batch(idx, entries, matches, feats, bank_masks, conds, col)
            if progress:
                progress(len(idx))
        t["encode"] += store.encode_seconds - e0  # store.batches() encodes between the steps
        return col.output(matches, dist, t)

    def _track_batch(self, idx, entries, matches, feats, bank_masks, conds, col) -> None:
        """Frame 1 of the clips of these query frames, ``batch_size`` rows per call."""
        h, w = col.labels.shape[1:]
        rows = []  # (frame, member, object, query features)
        for i, e in zip(idx, entries):
            m = int(matches[i])
            objs = [o for o in range(bank_masks.shape[1]) if bank_masks[m, o].any()]
            if objs and m not in conds:
                with self.context():
                    outs = self.predictor.condition(
                        feats[m], [torch.from_numpy(bank_masks[m, o]) for o in objs], h, w)
                conds[m] = dict(zip(objs, outs))
            rows += [(i, m, o, e) for o in objs]
        logits, scores = [], []
        with self.context():
            for s in range(0, len(rows), self.batch_size):
                chunk = rows[s : s + self.batch_size]
                lg, sc = self.predictor.track_pairs([r[3] for r in chunk],
                                                    [conds[r[1]][r[2]] for r in chunk], h, w)
                logits.append(lg)
                scores.append(sc)
        if not rows:
            return
        logits, scores = torch.cat(logits), torch.cat(scores)
        for i in idx:
            sel = [j for j, r in enumerate(rows) if r[0] == i]
            if sel:
                col.add(i, [rows[j][2] for j in sel], logits[sel], scores[sel])

    # -- volume mode -------------------------------------------------------------------------
    def run_volume(self, query: np.ndarray, support_image: np.ndarray, support_masks: np.ndarray,
                   insert_at: int, *, store: FeatureStore | None = None,
                   offload_state: bool = False, progress: Progress | None = None,
                   keep_logits: bool = False, keep_masks: bool = False) -> EngineOutput:
        """Mode ``volume``: the support is inserted before query frame ``insert_at`` and
        masks propagate forward and backward through the stack with SAM2's memory.

        ``support_masks`` is (K, H, W) bool; object k gets label k + 1 (``keep_masks`` as in
        :meth:`run_pairs`). ``store`` may hold
        features of query frames already computed (e.g. while matching).
        """
        n, h, w = query.shape
        k = support_masks.shape[0]
        col, t = _Collector(n, k, h, w, keep_logits, keep_masks), Timer()
        objs = [o for o in range(k) if support_masks[o].any()]
        if not objs:
            return col.output(np.full(n, -1), None, t)
        store = store or self.store(query)
        with t("encode"):
            support = self.encode(support_image[None])[0]
        s = int(insert_at)

        def source(f: int) -> dict:  # stack index -> features; the support sits at s
            if f == s:
                return support
            qi = f if f < s else f - 1
            return store.get(qi, range(qi, n) if f > s else range(qi, -1, -1))

        state = self.predictor.new_state(n + 1, h, w, source, offload_state=offload_state)
        e0 = store.encode_seconds
        with t("track"), self.context():
            self.predictor.prompt(state, s, [torch.from_numpy(support_masks[o]) for o in objs])
            for reverse in (False, True):
                for f, logits, scores in self.predictor.track(state, s, reverse, self.prune):
                    if f != s:
                        col.add(f if f < s else f - 1, objs, logits, scores)
                        if progress:
                            progress(1)
        t["encode"] += store.encode_seconds - e0
        t["track"] -= store.encode_seconds - e0
        return col.output(np.full(n, -1), None, t)

    # -- scan mode ---------------------------------------------------------------------------
    def run_scan(self, frames: np.ndarray, prompts: dict[int, dict[int, np.ndarray]],
                 objects: int, *, store: FeatureStore | None = None,
                 offload_state: bool = False, progress: Progress | None = None,
                 keep_logits: bool = False, keep_masks: bool = False) -> EngineOutput:
        """Mode ``scan``: the painted scan itself, every painted frame a mask prompt.

        ``prompts[frame][k]`` is object ``k``'s (H, W) bool mask on that frame (an empty mask:
        absent there). Objects whose first prompt is on the same frame are tracked together
        in one SAM2 state, propagated forward from that frame and backward from it, as
        ``propagate_in_video`` does by default; objects that start elsewhere get a state of
        their own (SAM2 tracks objects independently, and its memory attention cannot start
        an object from a prompt that lies only ahead). Object ``k`` gets label ``k + 1``
        (``keep_masks``: each object's own mask too, overlaps included).
        """
        n, h, w = frames.shape
        col, t = _Collector(n, objects, h, w, keep_logits, keep_masks), Timer()
        budget = self.config.feature_cache_mb if len(_starts(prompts)) > 1 else 0.0
        store = store or self.store(frames, budget)
        e0 = store.encode_seconds
        done: set[int] = set()
        for start, objs in _starts(prompts).items():
            sub = {f: {objs.index(k): m for k, m in per.items() if k in objs}
                   for f, per in prompts.items()}
            sub = {f: per for f, per in sub.items() if per}

            def source(f: int, start=start) -> dict:
                return store.get(f, range(f, n) if f >= start else range(f, -1, -1))

            state = self.predictor.new_state(n, h, w, source, offload_state=offload_state)
            with t("track"), self.context():
                self.predictor.prompt_frames(state, {
                    f: {k: torch.from_numpy(np.ascontiguousarray(m)) for k, m in per.items()}
                    for f, per in sub.items()})
                for reverse in (False, True):
                    for f, logits, scores in self.predictor.track(state, start, reverse,
                                                                  self.prune):
                        col.add(f, objs, logits, scores)
                        if progress and f not in done:
                            progress(1)
                        done.add(f)
        t["encode"] = store.encode_seconds - e0
        t["track"] -= t["encode"]
        return col.output(np.full(n, -1), None, t)


def _starts(prompts: dict[int, dict[int, np.ndarray]]) -> dict[int, list[int]]:
    """First prompted frame -> the objects that start there (in object order)."""
    first: dict[int, int] = {}
    for f in sorted(prompts):
        for k in prompts[f]:
            first.setdefault(k, f)
    out: dict[int, list[int]] = {}
    for k in sorted(first):
        out.setdefault(first[k], []).append(k)
    return dict(sorted(out.items()))
