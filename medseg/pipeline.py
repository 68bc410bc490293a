"""The pipeline: the stages of one segmentation, in order, each timed.

    load -> frames -> support (slice choice, bank) -> match -> propagate -> postprocess
    -> assemble (labelmap on the query grid + report)

Each stage is a small function with typed inputs and outputs; the model is asked for only
when a stage needs it (``method=sam2`` or ``matcher=sam2``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .augment import BankConfig
from .errors import InputError, UsageError
from .frames import FrameStack, parse_window, volume_to_frames
from .io import Volume, check_finite, check_not_label, read_image
from .labels import LabelPlan, check_name, make_plan
from .locate import Correspondence, correspond, expected_frames
from .match import make_matcher
from .options import (
    AXES,
    CORRESPONDENCE,
    METHODS,
    MODALITIES,
    MODES,
    OVERLAP,
    PLACEMENT,
    PRESENCE,
    check_choice,
    check_int,
    check_range_syntax,
)
from .postprocess import parse_range, postprocess, postprocess_masks
from .propagate import Matching, Propagation, Sam2Pairs, Sam2Volume, Transfer
from .report import FrameRecord, GroupRecord, Report
from .result import Result
from .segmentations import SupportLabel, read_support_label
from .support import SupportGroup, counterpart, position_prior, prepare_support
from .timing import Timer

ImageInput = "str | os.PathLike | Volume"


@dataclass
class SegmentConfig:
    """What to segment and how (everything except the model)."""

    labels: Sequence[int | str] | None = None  # support values or segment names; default all
    names: Sequence[str] | None = None
    mode: str = "pair"
    matcher: str | None = None  # default: sam2 for method sam2, ncc for transfer
    method: str = "sam2"  # "transfer": matched member's mask, no SAM2 (baseline)
    axis: str = "axial"
    window: str | None = None
    modality: str = "auto"
    support_slice: int | None = None
    shots: int = 0  # 0: every labelled slice the label offers (up to 16); 1: 1-shot; k
    presence: str = "auto"  # "auto": empty masks outside the structure's expected extent
    correspondence: str = "auto"  # "off": query and support slices related by order only
    placement: str = "auto"  # in-plane: "auto" (world if shared, else search), ...
    overlap: str = "first"  # "keep": structures may overlap (multi-layer .seg.nrrd, DICOM-SEG)
    bank: BankConfig = field(default_factory=BankConfig)
    keep_largest: bool = False
    fill_holes: bool = False
    z_range: str | None = None
    resample_label: bool = False
    support_series: str | None = None
    query_series: str | None = None

    def check(self) -> SegmentConfig:
        """Validated copy with the matcher default filled in."""
        check_choice(self.mode, MODES, "mode")
        check_choice(self.method, METHODS, "method")
        check_choice(self.axis, AXES, "axis")
        check_choice(self.modality, MODALITIES, "modality")
        matcher = self.matcher or ("sam2" if self.method == "sam2" else "ncc")
        make_matcher(matcher)  # validates the name only
        check_int(self.shots, "shots", 0)
        check_choice(self.presence, PRESENCE, "presence")
        check_choice(self.correspondence, CORRESPONDENCE, "correspondence")
        check_choice(self.placement, PLACEMENT, "placement")
        check_choice(self.overlap, OVERLAP, "overlap")
        check_int(self.bank.seed, "seed", 0, 2**31 - 1)
        if self.support_slice is not None:
            check_int(self.support_slice, "support_slice", 0)
        check_range_syntax(self.z_range)
        parse_window(self.window)
        names = [check_name(n) for n in self.names] if self.names is not None else None
        if names is not None and self.labels and len(names) != len(self.labels):
            raise UsageError(f"names: {len(names)} names for {len(self.labels)} labels",
                             option="names")
        return replace(self, matcher=matcher, names=names)

    @property
    def needs_model(self) -> bool:
        return self.method == "sam2" or self.matcher == "sam2"


def make_config(config: SegmentConfig | None, options: dict[str, Any]) -> SegmentConfig:
    """``config`` with keyword overrides (``bank_size``/``seed`` set the bank's)."""
    cfg = config or SegmentConfig()
    bank_kw = {k: int(options.pop(o)) for o, k in (("bank_size", "size"), ("seed", "seed"))
               if o in options}
    if bank_kw:
        options["bank"] = replace(cfg.bank, **bank_kw)
    unknown = set(options) - set(SegmentConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return replace(cfg, **options).check()


# --- stages --------------------------------------------------------------------------------------


@dataclass
class Inputs:
    support: Volume
    label: SupportLabel
    query: Volume


def load_support(support: Any, support_label: Any, cfg: SegmentConfig
                 ) -> tuple[Volume, SupportLabel]:
    """Read and check the support image and its label (paths or :class:`Volume`)."""
    s = check_finite(check_not_label(_volume(support, "support", cfg.support_series), "support"),
                     "support")
    return s, read_support_label(support_label, s, resample=cfg.resample_label)


def load_query(query: Any, cfg: SegmentConfig) -> Volume:
    """Read and check a query (path or :class:`Volume`)."""
    return check_finite(check_not_label(_volume(query, "query", cfg.query_series), "query"),
                        "query")


def _volume(x: Any, name: str, series: str | None) -> Volume:
    if isinstance(x, Volume):
        return x
    if isinstance(x, np.ndarray):
        raise InputError(f"{name}: give a path or a medseg.Volume (with geometry), not a bare array")
    return read_image(x, series=series, name=name)


@dataclass
class Frames:
    query: FrameStack
    support: FrameStack


def cut_frames(inputs: Inputs, cfg: SegmentConfig) -> Frames:
    window = parse_window(cfg.window)
    return Frames(volume_to_frames(inputs.query, cfg.axis, cfg.modality, window),
                  volume_to_frames(inputs.support, cfg.axis, cfg.modality, window))


def plan_support(inputs: Inputs, frames: Frames, cfg: SegmentConfig, corr: Correspondence,
                 banks: dict | None = None) -> tuple[LabelPlan, list[SupportGroup]]:
    plan = make_plan(inputs.label.segments, cfg.labels, cfg.names, f"support label "
                     f"{inputs.label.path or ''}".strip())
    groups = prepare_support(frames.support, inputs.support, inputs.label, plan, frames.query,
                             cfg.bank, cfg.shots, cfg.support_slice, corr, cfg.placement, banks)
    return plan, groups


class SupportCache:
    """The support read once, and its slice banks kept for reuse (a cohort's queries on the
    same grid with the same placement reuse a bank, and with it the bank's encodings)."""

    def __init__(self) -> None:
        self._inputs: dict[str, tuple[Volume, SupportLabel]] = {}
        self.banks: dict = {}

    def support(self, support: Any, label: Any, cfg: SegmentConfig) -> tuple[Volume, SupportLabel]:
        if isinstance(support, Volume) or isinstance(label, Volume):
            return load_support(support, label, cfg)
        key = repr((str(support), str(label), cfg.support_series, cfg.resample_label))
        if key not in self._inputs:
            self._inputs = {key: load_support(support, label, cfg)}  # one support at a time
            self.banks = {}
        return self._inputs[key]


@dataclass
class Methods:
    """The matcher and propagator of a run (sharing one feature store on the query)."""

    matcher: Any
    propagator: Any
    inline_match: bool  # SAM2-feature matching done inside pair propagation

    @classmethod
    def build(cls, cfg: SegmentConfig, frames: Frames, engine: Any, budget_mb: float) -> Methods:
        store = engine.store(frames.query.frames, budget_mb) if engine is not None else None
        matcher = make_matcher(cfg.matcher, engine, store)
        keep = cfg.overlap == "keep"
        if cfg.method == "transfer":
            return cls(matcher, Transfer(keep), False)
        if cfg.mode == "pair":
            return cls(matcher, Sam2Pairs(engine, store, keep), cfg.matcher == "sam2")
        return cls(matcher, Sam2Volume(engine, store, keep), False)

    def match(self, query: np.ndarray, group: SupportGroup, corr: Correspondence,
              run: np.ndarray) -> Matching:
        """Distances (unless matched inside the propagation), the position prior, the frames
        to run and where the support goes in (volume mode)."""
        prior = position_prior(group, corr, len(query))
        insert = counterpart(corr, group.frames[len(group.frames) // 2], len(query)) \
            if corr.usable else None
        dist = None if self.inline_match else self.matcher.distances(query, group.bank.images)
        return Matching(dist, prior, run, insert)


@dataclass
class Combined:
    """All groups merged: labels in output values (frames layout) and per-frame records."""

    labels: np.ndarray
    scores: np.ndarray
    props: list[Propagation]
    masks: np.ndarray | None = None  # (N, n, H, W) bool per output value, overlaps kept


def combine(props: list[Propagation], groups: list[SupportGroup], n_out: int, shape) -> Combined:
    """Group labels -> output values; where groups overlap, the group listed first wins.
    Per-structure masks (overlaps kept) are gathered when the propagators kept them."""
    labels = np.zeros(shape, np.uint8 if n_out <= 255 else np.uint16)
    scores = np.full((shape[0], n_out), np.nan, np.float32)
    keep = bool(props) and all(p.masks is not None for p in props)
    masks = np.zeros((n_out, *shape), bool) if keep else None
    for p, g in zip(props, groups):
        lut = np.array([0, *g.outputs], labels.dtype)
        local = lut[p.labels]
        free = labels == 0
        labels[free] = local[free]
        for k, o in enumerate(g.outputs):
            scores[:, o - 1] = p.object_scores[:, k]
            if masks is not None:
                masks[o - 1] = p.masks[:, k]
    return Combined(labels, scores, props, masks)


# --- the whole job ----------------------------------------------------------------------------


def run(support: Any, support_label: Any, query: Any, cfg: SegmentConfig,
        engine: Callable[[], Any] | None = None, progress: bool = False,
        feature_cache_mb: float = 2048.0, cache: SupportCache | None = None) -> Result:
    """Segment ``query``; ``engine()`` returns the loaded SAM2 engine when one is needed.
    ``cache`` keeps the support and its banks across queries."""
    cache = cache or SupportCache()
    _warm_imports()
    t = Timer()
    with t("load"):
        s, label = cache.support(support, support_label, cfg)
        inputs = Inputs(s, label, load_query(query, cfg))
    with t("frames"):
        frames = cut_frames(inputs, cfg)
    with t("locate"):
        corr = correspond(inputs.query, inputs.support, frames.query, frames.support) \
            if cfg.correspondence == "auto" else Correspondence(
                np.full(len(frames.query), np.nan), "none", 0.0, evidence={"off": True})
    with t("support"):
        plan, groups = plan_support(inputs, frames, cfg, corr, cache.banks)
    eng = engine() if cfg.needs_model and engine is not None else None
    if cfg.needs_model and eng is None:
        raise UsageError("this configuration needs a SAM2 model (method or matcher sam2)")
    methods = Methods.build(cfg, frames, eng, feature_cache_mb if cfg.mode == "volume" else 0.0)
    q = frames.query.frames
    bar = _progress(progress, len(q) * len(groups))
    props, expected = [], []
    for g in groups:
        exp = presence_prior(g, corr, len(q), cfg.presence)
        with t("match"):
            matching = methods.match(q, g, corr, exp.any(axis=1))
        with t("propagate"):
            props.append(apply_presence(methods.propagator.run(q, g, matching, bar.update), exp))
        expected.append(exp)
    bar.close()
    combined = combine(props, groups, len(plan), q.shape)
    with t("postprocess"):
        clean = {"keep_largest": cfg.keep_largest, "holes": cfg.fill_holes,
                 "frame_range": parse_range(cfg.z_range, len(q))}
        lab = postprocess(combined.labels, plan.output_values, **clean)
        if combined.masks is not None:
            combined.masks = postprocess_masks(combined.masks, **clean)
    return assemble(inputs, frames, plan, groups, combined, lab, cfg, eng, t,
                    Located(corr, expected))


def _warm_imports() -> None:
    """Import the augmentation library in the background while the scans load (it takes
    a second or two and only the support stage needs it)."""
    import sys
    import threading

    if "albumentations" not in sys.modules:
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        threading.Thread(target=__import__, args=("albumentations",), daemon=True).start()


@dataclass
class Located:
    """What the pipeline knew about where each structure is."""

    corr: Correspondence
    expected: list[np.ndarray]  # per group: (n, K) bool, frames where each structure may be


def presence_prior(group: SupportGroup, corr: Correspondence, n: int, presence: str) -> np.ndarray:
    """(n, K): per structure of the group, the frames where it is expected (presence
    ``auto``: through the slice correspondence; ``off`` or no correspondence: all)."""
    if presence == "off":
        return np.ones((n, len(group.entries)), bool)
    return np.stack([expected_frames(corr, lab) for lab in group.labelled], axis=1)


def apply_presence(p: Propagation, expected: np.ndarray) -> Propagation:
    """Empty masks where a structure is not expected."""
    for k in range(expected.shape[1]):
        p.labels[~expected[:, k]] = np.where(p.labels[~expected[:, k]] == k + 1, 0,
                                             p.labels[~expected[:, k]])
        if p.masks is not None:
            p.masks[~expected[:, k], k] = False
    return p


def assemble(inputs: Inputs, frames: Frames, plan: LabelPlan, groups: list[SupportGroup],
             combined: Combined, labels: np.ndarray, cfg: SegmentConfig, eng: Any,
             t: Timer, located: Located) -> Result:
    """The labelmap on the query's exact grid and the report."""
    q = inputs.query
    vol = Volume(frames.query.to_volume_array(labels).astype(plan.dtype), q.spacing, q.origin,
                 q.direction.copy(), path=q.path, meta=dict(q.meta))
    matches = {gi: np.asarray(p.members) for gi, p in enumerate(combined.props)}
    timings = {k: round(v, 4) for k, v in t.items()}
    if eng is not None:
        timings["model_load"] = round(eng.load_seconds, 4)
    report = Report(
        config=_config_dict(cfg), inputs=_inputs_dict(inputs, frames, cfg),
        segments=plan.as_list(), support_groups=_group_records(groups, combined.props),
        per_frame=_frame_records(frames.query, q, labels, plan, combined, groups, located),
        timings_s=timings, engine=eng.describe(usage=True) if eng is not None else None,
        location=located.corr.describe())
    return Result(vol, plan, report, frames.query, labels, groups, matches, combined.scores,
                  dict(q.meta), combined.masks)


def _config_dict(cfg: SegmentConfig) -> dict:
    d = asdict(cfg)
    d["labels"] = list(cfg.labels) if cfg.labels else None
    return d


def _inputs_dict(inputs: Inputs, frames: Frames, cfg: SegmentConfig) -> dict:
    s, q = inputs.support, inputs.query
    return {
        "support": {"path": s.path, **s.geometry(), **_source(s)},
        "support_label": {**inputs.label.describe()},
        "query": {"path": q.path, **q.geometry(), **_source(q), "axis": cfg.axis,
                  "frames": len(frames.query), "intensity": frames.query.intensity},
    }


def _source(v: Volume) -> dict:
    keys = ("dicom_series", "dicom_study", "dicom_frame_of_reference", "dicom_files",
            "nifti_transform_used")
    return {k: v.meta[k] for k in keys if k in v.meta}


def _group_records(groups: list[SupportGroup], props: list[Propagation]) -> list[GroupRecord]:
    return [GroupRecord(g.slices, [e.support_value for e in g.entries], g.outputs, len(g.bank),
                        g.bank.params, {**(p.info or {}), "placement": g.placement})
            for g, p in zip(groups, props)]


def _frame_records(stack: FrameStack, q: Volume, labels: np.ndarray, plan: LabelPlan,
                   c: Combined, groups: list[SupportGroup], located: Located) -> list[FrameRecord]:
    _, q_index = stack.source_index(q.shape)
    areas = np.stack([np.count_nonzero(labels == v, axis=(1, 2)) for v in plan.output_values], 1)
    expected = np.zeros((len(stack), len(plan)), bool)
    for g, exp in zip(groups, located.expected):
        expected[:, [o - 1 for o in g.outputs]] = exp
    pos = located.corr.support_pos
    rows = []
    for i in range(len(stack)):
        members = [int(p.members[i]) for p in c.props]
        dist = [None if p.distances is None or m < 0 or np.isnan(p.distances[i, m])
                else round(float(p.distances[i, m]), 6) for p, m in zip(c.props, members)]
        score = [None if np.isnan(s) else round(float(s), 4) for s in c.scores[i]]
        rows.append(FrameRecord(i, int(q_index[i]), members, dist, score,
                                [int(a) for a in areas[i]], [bool(x) for x in expected[i]],
                                None if np.isnan(pos[i]) else round(float(pos[i]), 2)))
    return rows


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, total: int):
    if not enabled or not sys.stderr.isatty() or os.environ.get("MEDSEG_NO_PROGRESS"):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="segmenting", unit="frame", file=sys.stderr)
