"""The pipeline: the stages of one segmentation, in order, each timed.

    load -> frames -> locate -> support (slice choice, banks) -> match -> propagate
    -> postprocess -> assemble (labelmap on the query grid + report)

Each stage is a small function with typed inputs and outputs; the model is asked for only
when a stage needs it (``method=sam2`` or ``matcher=sam2``). Settings travel as one
:class:`~medseg.config.SegmentConfig`; what a run reuses across queries (the support as
read, banks) lives in :class:`Caches`, owned by the caller.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._lazy import import_in_background, lazy_import
from ._threads import Pending
from .config import SegmentConfig, to_dict
from .errors import InputError, UsageError
from .frames import FrameStack, choose_window, parse_window, volume_to_frames
from .io import Volume, check_finite, check_not_label, read_image, same_geometry
from .io.fingerprint import fingerprint
from .labels import LabelPlan, SupportLabel, make_plan, read_support_label
from .locate import CORRESPONDENCE, Correspondence, correspond
from .match import Matcher, make_matcher
from .postprocess import parse_range, postprocess, postprocess_masks
from .propagate import Matching, Propagation, Propagator, Sam2Pairs, Sam2Volume, Transfer
from .report import FrameRecord, GroupRecord, Report
from .result import Result
from .support import BankCache, SupportGroup, SupportScan, position_prior, prepare_support
from .support.complete import CompletedSupport, complete_support
from .support.groups import insertion_frame, presence
from .support.multi import merge, plan_for
from .timing import Timer, stage_reporter

if TYPE_CHECKING:
    from .engine import Sam2Engine

tqdm = lazy_import("tqdm")

ImageInput = "str | os.PathLike | Volume"
SUPPORTS_KEPT = 8  # support scans a Segmenter keeps as read
EngineFactory = Callable[[], "Sam2Engine"]


# --- what runs share ------------------------------------------------------------------------


@dataclass
class Caches:
    """What a :class:`~medseg.api.Segmenter` reuses across queries: the support as read
    (keyed by its paths, file sizes and times, and the options that change reading) and
    the banks of placed support slices (keyed by content)."""

    supports: dict[tuple, tuple[Volume, SupportLabel]] = field(default_factory=dict)
    banks: BankCache = field(default_factory=BankCache)

    def support(self, support: ImageInput, label: ImageInput | Volume,
                cfg: SegmentConfig) -> tuple[Volume, SupportLabel]:
        """The support image and label, read once while they stay the same files."""
        if not all(isinstance(x, (str, os.PathLike)) for x in (support, label)):
            return load_support(support, label, cfg)  # volumes (or mistakes) are not cached
        key = (_file_key(support), _file_key(label), cfg.support.support_series,
               cfg.support.resample_label, cfg.support.label_names and
               _file_key(cfg.support.label_names))
        if key not in self.supports:
            while len(self.supports) >= SUPPORTS_KEPT:
                self.supports.pop(next(iter(self.supports)))
            self.supports[key] = load_support(support, label, cfg)
        return self.supports[key]


def _file_key(path: ImageInput) -> tuple:
    p = Path(path)
    try:
        st = p.stat()
        return (str(p.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        return (str(p),)


# --- stages --------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """The scans of one run and the support's label."""

    support: Volume
    label: SupportLabel
    query: Volume


def load_support(support: ImageInput, support_label: ImageInput, cfg: SegmentConfig
                 ) -> tuple[Volume, SupportLabel]:
    """Read and check the support image and its label (paths or :class:`Volume`)."""
    s = check_finite(check_not_label(_volume(support, "support", cfg.support.support_series),
                                     "support"), "support")
    return s, read_support_label(support_label, s, resample=cfg.support.resample_label,
                                 names=cfg.support.label_names)


def load_query(query: ImageInput, cfg: SegmentConfig) -> Volume:
    """Read and check a query (path or :class:`Volume`)."""
    return check_finite(check_not_label(_volume(query, "query", cfg.query_series), "query"),
                        "query")


def _read_ahead(query: ImageInput | None, cfg: SegmentConfig) -> Callable[[], Volume | None]:
    """:func:`load_query` of a file started in a thread of its own (SimpleITK reads without
    holding the interpreter): the returned call gives the query, or raises its error --
    after the supports', so a run with several bad inputs reports the one a run that
    reads in turn reports."""
    if query is None or not isinstance(query, (str, os.PathLike)):
        return lambda: None if query is None else load_query(query, cfg)
    return Pending(load_query, query, cfg, name="medseg-read-query").result


def _volume(x: ImageInput, name: str, series: str | None) -> Volume:
    if isinstance(x, Volume):
        return x
    if isinstance(x, np.ndarray):
        raise InputError(f"{name}: give a path or a medseg.Volume (with geometry), not a bare array")
    return read_image(x, series=series, name=name)


@dataclass
class Frames:
    """The query's and the support's frames along the slicing axis."""

    query: FrameStack
    support: FrameStack


def cut_frames(inputs: Inputs, cfg: SegmentConfig, same: bool = False,
               window: tuple[float, float] | None = None) -> Frames:
    """Both scans as normalised frames along ``cfg.axis`` (once when they are one scan)."""
    support = volume_to_frames(inputs.support, cfg.axis, cfg.modality, window)
    if same:
        return Frames(support, support)
    return Frames(volume_to_frames(inputs.query, cfg.axis, cfg.modality, window), support)


def locate(inputs: Inputs, frames: Frames, cfg: SegmentConfig) -> Correspondence:
    """The slice correspondence (``unrelated`` when switched off)."""
    if cfg.locate.correspondence == "off":
        return Correspondence.unrelated(len(frames.query), "off", off=True)
    return correspond(inputs.query, inputs.support, frames.query, frames.support)


def plan_support(inputs: Inputs, frames: Frames, cfg: SegmentConfig, corr: Correspondence,
                 banks: BankCache | None = None) -> tuple[LabelPlan, list[SupportGroup]]:
    """The structures of the run and their support groups (slices, placement, banks)."""
    plan = make_plan(inputs.label.segments, cfg.labels, cfg.names, f"support label "
                     f"{inputs.label.path or ''}".strip())
    groups = prepare_support(SupportScan(inputs.support, frames.support, inputs.label), plan,
                             frames.query, cfg.support, corr, cfg.locate.placement, banks)
    return plan, groups


@dataclass
class Methods:
    """The matcher and propagator of a run (sharing one feature store on the query)."""

    matcher: Matcher
    propagator: Propagator
    inline_match: bool  # SAM2-feature matching done inside pair propagation

    @classmethod
    def build(cls, cfg: SegmentConfig, frames: Frames, engine, budget_mb: float) -> Methods:
        """The methods ``cfg`` asks for, on ``engine`` where they need SAM2."""
        store = engine.store(frames.query.frames, budget_mb) if engine is not None else None
        matcher = make_matcher(cfg.resolved_matcher, engine, store)
        keep = cfg.post.overlap == "keep"
        if cfg.method == "transfer":
            return cls(matcher, Transfer(keep), False)
        if cfg.mode == "pair":
            return cls(matcher, Sam2Pairs(engine, store, keep), cfg.resolved_matcher == "sam2")
        return cls(matcher, Sam2Volume(engine, store, keep), False)

    def match(self, query: np.ndarray, group: SupportGroup, run: np.ndarray) -> Matching:
        """Distances (unless matched inside the propagation), the position prior, the frames
        to run and where the support goes in (volume mode)."""
        prior = position_prior(group, len(query))
        insert = insertion_frame(group, len(query))
        dist = None if self.inline_match else self.matcher.distances(query, group.bank.images)
        return Matching(dist, prior, run, insert)


@dataclass
class Combined:
    """All groups merged: labels in output values (frames layout) and per-frame records."""

    labels: np.ndarray
    scores: np.ndarray
    props: list[Propagation]
    masks: np.ndarray | None = None  # (N, n, H, W) bool per output value, overlaps kept


def combine(props: list[Propagation], groups: list[SupportGroup], n_out: int, shape,
            frames: np.ndarray | None = None) -> Combined:
    """Group labels -> output values. A pixel claimed by structures of different groups
    (support slices) goes to the structure whose support-slice intensities it resembles
    most (the smallest distance to their mean, in their spread): air goes to a lung, not
    to a misplaced rib; without ``frames``, to the group listed first. Per-structure masks
    (overlaps kept) are gathered when the propagators kept them."""
    labels = np.zeros(shape, np.uint8 if n_out <= 255 else np.uint16)
    scores = np.full((shape[0], n_out), np.nan, np.float32)
    keep = bool(props) and all(p.masks is not None for p in props)
    masks = np.zeros((n_out, *shape), bool) if keep else None
    best = np.full(shape, np.inf, np.float32)
    for p, g in zip(props, groups):
        local = np.array([0, *g.outputs], labels.dtype)[p.labels]
        if frames is None or len(groups) == 1:  # no other group to dispute a pixel
            np.copyto(labels, local, where=labels == 0)  # unclaimed pixels take the group's
        else:
            z = _unlikeness(frames, local, g)
            take = (local > 0) & (z < best)
            best[take] = z[take]
            labels[take] = local[take]
        for k, o in enumerate(g.outputs):
            scores[:, o - 1] = p.object_scores[:, k]
            if masks is not None:
                masks[o - 1] = p.masks[:, k]
    return Combined(labels, scores, props, masks)


def _unlikeness(frames: np.ndarray, local: np.ndarray, g: SupportGroup) -> np.ndarray:
    """How unlike each pixel is to the structure it was given (|x - mean| / spread of that
    structure on the group's unaugmented support slice); inf where none was given."""
    out = np.full(local.shape, np.inf, np.float32)
    img, msk = g.bank.images[0], g.bank.masks[0]
    for k, o in enumerate(g.outputs):
        inside = img[msk[k]]
        if not inside.size:
            continue
        mean, spread = float(inside.mean()), max(float(inside.std()), 0.02)
        sel = local == o
        out[sel] = np.abs(frames[sel] - mean) / spread
    return out


@dataclass
class Located:
    """What the pipeline knew about where each structure is."""

    corr: Correspondence
    expected: list[np.ndarray]  # per group: (n, K) bool, frames where each structure may be
    drawn: np.ndarray | None = None  # (N, n) bool: frames holding the user's own mask


def apply_presence(p: Propagation, expected: np.ndarray) -> Propagation:
    """Empty masks where a structure is not expected."""
    for k in range(expected.shape[1]):
        p.labels[~expected[:, k]] = np.where(p.labels[~expected[:, k]] == k + 1, 0,
                                             p.labels[~expected[:, k]])
        if p.masks is not None:
            p.masks[~expected[:, k], k] = False
    return p


def clean_up(combined: Combined, plan: LabelPlan, cfg: SegmentConfig, n: int) -> np.ndarray:
    """The post-processing ``cfg`` asks for, on the labelmap and the kept masks."""
    post = cfg.post
    clean = {"keep_largest": post.keep_largest, "holes": post.fill_holes,
             "frame_range": parse_range(post.z_range, n)}
    if combined.masks is not None:
        combined.masks = postprocess_masks(combined.masks, **clean)
    return postprocess(combined.labels, plan.output_values, **clean)


# --- the whole job ----------------------------------------------------------------------------


@dataclass
class RunContext:
    """What a run needs besides its inputs and settings."""

    engine: EngineFactory | None = None  # returns the loaded SAM2 engine when needed
    progress: bool = False
    feature_cache_mb: float = 2048.0
    caches: Caches = field(default_factory=Caches)


def run(support: ImageInput | Sequence[ImageInput], support_label: ImageInput | Sequence,
        query: ImageInput | None, cfg: SegmentConfig, ctx: RunContext | None = None) -> Result:
    """Segment ``query`` from labelled support scan(s) (or, with ``query`` None or one of
    the support scans, segment that scan from its own painted slices).

    Args:
        support, support_label: the support scan(s) and label(s) (paths or volumes; one
            each, or sequences of equal length); a label may hold one painted slice per
            structure, a few, or a corrected result.
        query: the scan to segment (a path or a volume), or None for the (first) support.
        cfg: what to segment and how.
        ctx: the engine factory, progress, caches shared across queries.

    Returns:
        The result: labelmap on the query's exact grid, plan, report.
    """
    ctx = ctx or RunContext()
    _warm_imports()
    t = Timer(stage_reporter(ctx.progress))
    pairs = _support_pairs(support, support_label)
    with t("load"):
        ahead = _read_ahead(query, cfg)  # the query is read while the supports are
        loaded = [ctx.caches.support(s, lab, cfg) for s, lab in pairs]
        q = loaded[0][0] if query is None else ahead()
        same = next((j for j, (s, _) in enumerate(loaded)
                     if same_scan(pairs[j][0], s, query, q)), None)
    if same is not None:
        return _in_scan(Inputs(loaded[same][0], loaded[same][1], loaded[same][0]), cfg, ctx, t)
    plan = make_plan(loaded[0][1].segments, cfg.labels, cfg.names,
                     f"support label {loaded[0][1].path or ''}".strip())
    with t("frames"):
        window, why = intensity_window(cfg, loaded[0][0], loaded[0][1], plan)
        q_frames = volume_to_frames(q, cfg.axis, cfg.modality, window)
        s_frames = [volume_to_frames(s, cfg.axis, cfg.modality, window) for s, _ in loaded]
    with t("complete"):  # the model is waited for here only if completion needs it
        done = [complete_support(s, f, lab, (plan if j == 0 else plan_for(
            plan, lab, f"support label {j + 1}")).support_values, cfg.method,
            cfg.support.complete, lambda: _engine(cfg, ctx))
            for j, ((s, lab), f) in enumerate(zip(loaded, s_frames))]
    groups, corrs = _supports(q, q_frames, loaded, s_frames, done, plan, cfg, ctx, t)
    eng = _engine(cfg, ctx)  # loading in the background since the run began
    _warm_imports(LATE_IMPORTS)
    frames = Frames(q_frames, s_frames[0])
    methods = Methods.build(cfg, frames, eng,
                            ctx.feature_cache_mb if cfg.mode == "volume" else 0.0)
    props, expected = _propagate(q_frames.frames, groups, cfg, methods, t, ctx)
    combined = combine(props, groups, len(plan), q_frames.frames.shape, q_frames.frames)
    with t("postprocess"):
        lab = clean_up(combined, plan, cfg, len(q_frames))
    inputs = Inputs(loaded[0][0], done[0].label, q)
    result = assemble(inputs, frames, plan, groups, combined, lab, cfg, eng, t,
                      Located(corrs[0], expected))
    _describe_supports(result, done, s_frames, loaded, corrs)
    result.report.inputs["window"] = why
    return result


def _support_pairs(support, support_label) -> list[tuple]:
    """(scan, label) per support scan."""
    many = isinstance(support, (list, tuple))
    scans = list(support) if many else [support]
    labels = list(support_label) if isinstance(support_label, (list, tuple)) else [support_label]
    if len(scans) != len(labels) or not scans:
        raise UsageError(f"support: {len(scans)} support scan(s) but {len(labels)} label(s); "
                         "give one label per support scan, in the same order",
                         option="support")
    return list(zip(scans, labels))


def _supports(q: Volume, q_frames: FrameStack, loaded: list[tuple[Volume, SupportLabel]],
              s_frames: list[FrameStack], done: list[CompletedSupport], plan: LabelPlan,
              cfg: SegmentConfig, ctx: RunContext, t: Timer
              ) -> tuple[list[SupportGroup], list[Correspondence]]:
    """Every support related to the query and banked; one group per structure across
    several supports."""
    per, corrs = [], []
    for j, ((s, _), f, d) in enumerate(zip(loaded, s_frames, done)):
        with t("locate"):
            corr = locate(Inputs(s, d.label, q), Frames(q_frames, f), cfg)
        if corr.method == "none":
            warn_unrelated(corr, cfg, j)
        pj = plan if j == 0 else plan_for(plan, d.label, f"support label {j + 1}")
        with t("support"):
            per.append(prepare_support(SupportScan(s, f, d.label), pj, q_frames, cfg.support,
                                       corr, cfg.locate.placement, ctx.caches.banks,
                                       {v: d.painted(v) for v in pj.support_values}))
        corrs.append(corr)
    return (per[0] if len(per) == 1 else merge(per, plan)), corrs


def warn_unrelated(corr: Correspondence, cfg: SegmentConfig, j: int) -> None:
    """Say what a user gets when the query's slices cannot be related to the support's."""
    gets = ("SAM2's object score alone decides where the structure is" if cfg.method == "sam2"
            else "every query slice gets a mask")
    which = f"support {j + 1}" if j else "the support"
    warnings.warn(f"the query's slices could not be related to {which}'s (slice correspondence "
                  f"{corr.score:.2f}, below {CORRESPONDENCE.min_correspondence}; another "
                  f"modality or body region?): {gets}. What helps: a support scan of the same "
                  "modality and region, --z-range START:STOP to keep the slices that hold the "
                  "structure, or SAM2 (--method sam2)", stacklevel=3)


def _describe_supports(result: Result, done: list[CompletedSupport], s_frames: list[FrameStack],
                       loaded: list[tuple[Volume, SupportLabel]],
                       corrs: list[Correspondence]) -> None:
    rep = result.report
    rep.support_completion = done[0].describe(s_frames[0], loaded[0][0])
    if len(loaded) > 1:
        rep.inputs["supports"] = [{"path": s.path, "label": lab.path, "fingerprint": _print(
            s.path), "label_fingerprint": _print(lab.path)} for s, lab in loaded]
        rep.location["supports"] = [
            {"support": j + 1, **c.describe(),
             "completion": d.describe(f, s)} for j, (c, d, f, (s, _)) in
            enumerate(zip(corrs, done, s_frames, loaded))]


def _in_scan(inputs: Inputs, cfg: SegmentConfig, ctx: RunContext, t: Timer) -> Result:
    """The support scan segmented from its own drawn slices."""
    plan = make_plan(inputs.label.segments, cfg.labels, cfg.names,
                     f"support label {inputs.label.path or ''}".strip())
    with t("frames"):
        window, why = intensity_window(cfg, inputs.support, inputs.label, plan)
        frames = cut_frames(inputs, cfg, True, window)
    eng = _engine(cfg, ctx)
    _warm_imports(LATE_IMPORTS)
    with t("complete"):
        done = complete_support(inputs.support, frames.support, inputs.label,
                                plan.support_values, cfg.method, cfg.support.complete,
                                lambda: eng)
    result = _same_scan(inputs, frames, plan, done, cfg, eng, t)
    result.report.inputs["window"] = why
    return result


def intensity_window(cfg: SegmentConfig, image: Volume, label: SupportLabel, plan: LabelPlan
                     ) -> tuple[tuple[float, float] | None, dict]:
    """The window asked for, or (CT, none asked for) one chosen from the structures."""
    if cfg.window is not None:
        return parse_window(cfg.window), {"how": f"given: {cfg.window}"}
    return choose_window(image.array, [label.mask(v) for v in plan.support_values],
                         cfg.modality)


def same_scan(support_spec: ImageInput, support: Volume, query_spec: ImageInput | None,
              query: Volume) -> bool:
    """Is the query the support scan itself: no query given, the same file or DICOM
    series, or the same grid holding the same voxels?"""
    if query_spec is None or query is support:
        return True
    if isinstance(support_spec, (str, os.PathLike)) and isinstance(query_spec, (str, os.PathLike)):
        a, b = Path(support_spec), Path(query_spec)
        if a.exists() and b.exists() and a.resolve() == b.resolve():
            return True
    sa, qa = support.meta.get("dicom_series"), query.meta.get("dicom_series")
    if sa and sa == qa and support.meta.get("dicom_file_list") == query.meta.get(
            "dicom_file_list"):
        return True
    return not same_geometry(support, query) and np.array_equal(support.array, query.array)


def _same_scan(inputs: Inputs, frames: Frames, plan: LabelPlan, done: CompletedSupport,
               cfg: SegmentConfig, eng, t: Timer) -> Result:
    """The support scan segmented from its own drawn slices: the completion is the answer
    (drawn slices exactly as drawn); no correspondence, placement or bank is needed."""
    n, shape = len(frames.query), frames.query.frames.shape[1:]
    keep = cfg.post.overlap == "keep"
    labels = np.zeros((n, *shape), np.uint8 if len(plan) <= 255 else np.uint16)
    masks = np.zeros((len(plan), n, *shape), bool) if keep else None
    for i, e in enumerate(plan):
        m = done.structures[e.support_value].masks
        labels[(labels == 0) & m] = e.output_value  # the structure listed first wins
        if masks is not None:
            masks[i] = m
    combined = Combined(labels, np.full((n, len(plan)), np.nan, np.float32), [], masks)
    with t("postprocess"):
        lab = clean_up(combined, plan, cfg, n)
    expected = np.stack([done.structures[e.support_value].masks.any(axis=(1, 2))
                         for e in plan], axis=1)
    drawn = np.stack([done.structures[e.support_value].drawn for e in plan])
    # drawn frames are the user's, whatever the clean-up did: drawn pixels win over every
    # estimate (of any structure); where two structures were drawn over each other, the
    # one listed first
    claimed: dict[int, np.ndarray] = {}
    for i, e in enumerate(plan):
        d = done.drawn[e.support_value]
        for f, m in d.frames.items():
            taken = claimed.get(f)
            if taken is None:
                taken = claimed[f] = np.zeros(shape, bool)
            lab[f][lab[f] == e.output_value] = 0
            lab[f][m & ~taken] = e.output_value
            taken |= m
            if combined.masks is not None:
                combined.masks[i, f] = m
    result = assemble(inputs, frames, plan, [], combined, lab, cfg, eng, t,
                      Located(Correspondence.identity(n), [expected], drawn))
    result.report.support_completion = done.describe(frames.support, inputs.support)
    return result


def _engine(cfg: SegmentConfig, ctx: RunContext):
    if not cfg.needs_model:
        return None
    eng = ctx.engine() if ctx.engine is not None else None
    if eng is None:
        raise UsageError("this configuration needs a SAM2 model (method or matcher sam2)")
    return eng


def _propagate(q: np.ndarray, groups: list[SupportGroup], cfg: SegmentConfig,
               methods: Methods, t: Timer, ctx: RunContext
               ) -> tuple[list[Propagation], list[np.ndarray]]:
    """Match and propagate every group; presence applied."""
    bar = _progress(ctx.progress, len(q) * len(groups))
    props, expected = [], []
    for g in groups:
        exp = presence(g, len(q), cfg.locate.presence)
        with t("match"):
            matching = methods.match(q, g, exp.any(axis=1))
        with t("propagate"):
            props.append(apply_presence(methods.propagator.run(q, g, matching, bar.update), exp))
        expected.append(exp)
    bar.close()
    return props, expected


# imported in the background while the scans load: the augmentation library (a second or
# two, torch included; the support stage needs it). Imports take turns (medseg._lazy), so
# it comes in pieces, what the main thread needs first first: the main thread waits at most
# for the piece under way, never behind the whole library for a module of its own
WARM_IMPORTS = ("SimpleITK", "scipy.ndimage", "cv2", "torch", "albumentations")
# ... and once the model is loaded (imports hold the interpreter, so these would slow the
# model's loading), while SAM2 runs: pydicom's SNOMED CT table (half a second; the
# .seg.nrrd writer names structures with it, at the very end of a run)
LATE_IMPORTS = ("pydicom.sr.codedict",)


def _warm_imports(names: Sequence[str] = WARM_IMPORTS) -> None:
    """Start importing ``names`` in the background."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import_in_background(names)


def assemble(inputs: Inputs, frames: Frames, plan: LabelPlan, groups: list[SupportGroup],
             combined: Combined, labels: np.ndarray, cfg: SegmentConfig, eng,
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
        config=config_record(cfg), inputs=_inputs_dict(inputs, frames, cfg),
        segments=plan.as_list(), support_groups=_group_records(groups, combined.props),
        per_frame=_frame_records(frames.query, q, labels, plan, combined, groups, located),
        timings_s=timings, engine=eng.describe(usage=True) if eng is not None else None,
        location=located.corr.describe())
    result = Result(vol, plan, report, frames.query, labels, groups, matches, combined.scores,
                    dict(q.meta), combined.masks, located.drawn)
    for seg, rec in zip(report.segments, result.records().values()):
        seg["slice_record"] = rec.as_dict()
    report.statistics = result.statistics()
    return result


def config_record(cfg: SegmentConfig) -> dict:
    """The settings as the report keeps them (the matcher's default filled in)."""
    d = to_dict(cfg)
    d["matcher"] = cfg.resolved_matcher
    return d


def _inputs_dict(inputs: Inputs, frames: Frames, cfg: SegmentConfig) -> dict:
    s, q = inputs.support, inputs.query
    return {
        "support": {"path": s.path, **s.geometry(), **_source(s), "fingerprint": _print(s.path)},
        "support_label": {**inputs.label.describe(), "fingerprint": _print(inputs.label.path)},
        "query": {"path": q.path, **q.geometry(), **_source(q), "fingerprint": _print(q.path),
                  "axis": cfg.axis,
                  "frames": len(frames.query), "intensity": frames.query.intensity},
    }


def _print(path: str | None) -> str | None:
    """The input's content fingerprint (what ``--resume`` compares)."""
    return fingerprint(path) if path else None


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
    if not groups and located.expected:  # the support scan itself: where it was completed
        expected = located.expected[0]
    pos = located.corr.support_pos
    drawn = located.drawn if located.drawn is not None else np.zeros((len(plan), len(stack)),
                                                                     bool)
    rows = []
    for i in range(len(stack)):
        members = [int(p.members[i]) for p in c.props]
        dist = [None if p.distances is None or m < 0 or np.isnan(p.distances[i, m])
                else round(float(p.distances[i, m]), 6) for p, m in zip(c.props, members)]
        score = [None if np.isnan(s) else round(float(s), 4) for s in c.scores[i]]
        rows.append(FrameRecord(i, int(q_index[i]), members, dist, score,
                                [int(a) for a in areas[i]], [bool(x) for x in expected[i]],
                                None if np.isnan(pos[i]) else round(float(pos[i]), 2),
                                [bool(x) for x in drawn[:, i]]))
    return rows


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, total: int):
    if not enabled or not sys.stderr.isatty() or os.environ.get("MEDSEG_NO_PROGRESS"):
        return _NoBar()
    return tqdm.tqdm(total=total, desc="segmenting", unit="frame", file=sys.stderr)
