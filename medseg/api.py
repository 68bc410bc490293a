"""Python API: ``medseg.segment(...)`` for one query, :class:`Segmenter` for cohorts.

The pipeline: load volumes -> cut frames (canonical orientation, query grid) -> pick the
support slice per label -> augmentation bank (resampled to the query's pixel spacing) ->
match every query frame to a bank member -> SAM2 (``pair`` or ``volume`` mode) ->
post-process -> labelmap on the query's exact grid.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import export
from ._version import __version__
from .augment import Bank, BankConfig, build_bank
from .errors import DeviceError, InputError, UsageError
from .frames import FrameStack, label_to_frames, parse_window, resample_frame, volume_to_frames
from .io import Volume, check_finite, read_image, same_geometry
from .match import MATCHERS, best_members, transfer_masks, weight_free_distance
from .postprocess import parse_range, postprocess

METHODS = ("sam2", "transfer")
FORMATS = ("nifti", "seg.nrrd")


@dataclass
class SegmentConfig:
    """What to segment and how (everything except the model)."""

    labels: Sequence[int] | None = None
    names: Sequence[str] | None = None
    mode: str = "pair"
    matcher: str = "sam2"
    method: str = "sam2"  # "transfer": matched member's mask, no SAM2 (baseline)
    axis: str = "axial"
    window: str | None = None
    modality: str = "auto"
    support_slice: int | None = None
    shots: int = 1
    bank: BankConfig = field(default_factory=BankConfig)
    keep_largest: bool = False
    fill_holes: bool = False
    z_range: str | None = None
    resample_label: bool = False
    support_series: str | None = None
    query_series: str | None = None

    def check(self) -> None:
        from .engine import MODES
        from .frames import AXES

        if self.mode not in MODES:
            raise UsageError(f"--mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.matcher not in MATCHERS:
            raise UsageError(f"--matcher {self.matcher!r}: choose one of {', '.join(MATCHERS)}")
        if self.method not in METHODS:
            raise UsageError(f"method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.axis not in AXES:
            raise UsageError(f"--axis {self.axis!r}: choose one of {', '.join(AXES)}")
        if self.modality not in ("auto", "ct", "mr"):
            raise UsageError(f"--modality {self.modality!r}: choose auto, ct or mr")
        if self.shots < 1:
            raise UsageError(f"--shots must be >= 1, got {self.shots}")
        if self.names is not None and self.labels is not None and len(self.names) != len(self.labels):
            raise UsageError(f"{len(self.names)} names for {len(self.labels)} labels")


@dataclass
class SupportGroup:
    """Labels that share one support slice, with its augmentation bank on the query grid."""

    slices: list[int]  # support frame indices (k-shot: several)
    values: list[int]  # support label values
    outputs: list[int]  # output label values (1..N)
    bank: Bank


@dataclass
class Result:
    """A segmentation of one query volume."""

    labels: Volume  # uint8 labelmap on the query's grid: 0 background, 1..N
    segments: list[export.Segment]
    report: dict
    query_frames: FrameStack
    label_frames: np.ndarray  # (n, rows, cols) in frames layout
    groups: list[SupportGroup]
    matches: dict[int, np.ndarray] = field(default_factory=dict)  # group -> member per frame
    object_scores: np.ndarray | None = None  # (n, N) SAM2 object-score logits

    def mask(self, name_or_value: str | int) -> np.ndarray:
        """Boolean mask (query array layout) of one segment."""
        for s in self.segments:
            if name_or_value in (s.name, s.value):
                return self.labels.array == s.value
        raise KeyError(name_or_value)

    def output_paths(self, out_dir: str | os.PathLike, formats: Sequence[str] = FORMATS,
                     stem: str | None = None, report: str | os.PathLike | None = None,
                     qc: str | os.PathLike | None = None) -> dict[str, Path]:
        stem = stem or _stem(self.labels.path or "query")
        return output_paths(out_dir, stem, formats, report, qc)

    def save(
        self,
        out_dir: str | os.PathLike,
        formats: Sequence[str] = FORMATS,
        *,
        overwrite: bool = False,
        stem: str | None = None,
        report: str | os.PathLike | None = None,
        qc: str | os.PathLike | None = None,
    ) -> dict[str, Path]:
        """Write the chosen files all-or-nothing; refuses to overwrite unless asked."""
        export.prepare_output_dir(out_dir)
        paths = self.output_paths(out_dir, formats, stem, report, qc)
        for p in paths.values():
            export.prepare_output_dir(p.parent)
        inputs = [v["path"] for v in self.report["inputs"].values() if v.get("path")]
        export.check_outputs(list(paths.values()), overwrite=overwrite, inputs=inputs)
        t0 = time.perf_counter()
        ref = self.labels
        with export.OutputTransaction() as tx:
            if "nifti" in paths:
                tx.add(paths["nifti"], lambda p: export.write_nifti_labelmap(ref.array, ref, p))
                tx.add(paths["ctbl"], lambda p: export.write_color_table(self.segments, p))
            if "seg.nrrd" in paths:
                tx.add(paths["seg.nrrd"],
                       lambda p: export.write_seg_nrrd(ref.array, ref, self.segments, p))
            if "qc" in paths:
                from .qc import qc_figure

                tx.add(paths["qc"], lambda p: qc_figure(self, p))
            self.report["timings_s"]["write"] = round(time.perf_counter() - t0, 4)
            self.report["outputs"] = {k: str(v) for k, v in paths.items()}
            tx.add(paths["report"], lambda p: export.write_json(p, self.report))
        return paths


def output_paths(out_dir: str | os.PathLike, stem: str, formats: Sequence[str] = FORMATS,
                 report: str | os.PathLike | None = None,
                 qc: str | os.PathLike | None = None) -> dict[str, Path]:
    """Where the outputs of one query go: ``{kind: path}``."""
    out = Path(out_dir)
    for f in formats:
        if f not in FORMATS:
            raise UsageError(f"--format {f!r}: choose from {', '.join(FORMATS)}")
    paths: dict[str, Path] = {}
    if "nifti" in formats:
        paths["nifti"] = out / f"{stem}_labels.nii.gz"
        paths["ctbl"] = out / f"{stem}_labels.ctbl"
    if "seg.nrrd" in formats:
        paths["seg.nrrd"] = out / f"{stem}.seg.nrrd"
    paths["report"] = Path(report) if report else out / f"{stem}_report.json"
    if qc:
        paths["qc"] = Path(qc)
    return paths


def _stem(path: str) -> str:
    name = Path(path.rstrip("/")).name
    for suf in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name or "query"


def versions() -> dict[str, str]:
    """Versions of medseg and the stack it runs on."""
    import importlib.metadata as md

    out = {"medseg": __version__, "python": platform.python_version()}
    for pkg in ("torch", "sam2", "SimpleITK", "numpy", "albumentations", "monai", "nibabel"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.machine(),
                            "cpus": os.cpu_count()}
    if "torch" in sys.modules:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _as_volume(x: str | os.PathLike | Volume, name: str, series: str | None = None) -> Volume:
    if isinstance(x, Volume):
        return x
    if isinstance(x, np.ndarray):
        raise InputError(f"{name}: give a path or a medseg.Volume (with geometry), not a bare array")
    return read_image(x, series=series, name=name)


def check_label(label: Volume, image: Volume, resample: bool, name: str = "support label") -> Volume:
    """Validate a label volume against its image; returns an integer label volume."""
    diffs = same_geometry(image, label)
    if diffs:
        if not resample:
            raise InputError(
                f"{name} {label.path} does not match its image {image.path}: "
                + "; ".join(diffs)
                + " (image first). Fix the files or pass --resample-label to resample the label "
                "onto the image grid (nearest neighbour)"
            )
        import SimpleITK as sitk

        res = sitk.Resample(label.to_sitk(), image.to_sitk(), sitk.Transform(),
                            sitk.sitkNearestNeighbor, 0)
        label = Volume.from_sitk(res, path=label.path, resampled=True)
    arr = label.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError(
                f"{name} {label.path}: holds non-integer values; a label map must hold integers "
                "(0 background, 1, 2, ... structures). Is this an image rather than a label?"
            )
    elif not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        raise InputError(f"{name} {label.path}: unsupported voxel type {arr.dtype}")
    if arr.min() < 0:
        raise InputError(f"{name} {label.path}: holds negative values; labels must be >= 0")
    arr = arr.astype(np.int32)
    if not arr.any():
        raise InputError(f"{name} {label.path}: is empty (all zero); label the structure first")
    return label.with_array(arr)


class Segmenter:
    """Keeps SAM2 loaded across queries: build once, call :meth:`segment` many times."""

    def __init__(
        self,
        model: str = "tiny",
        checkpoint: str | os.PathLike | None = None,
        device: str = "auto",
        *,
        image_size: int | None = None,
        batch_size: int = 8,
        precision: str = "auto",
        allow_download: bool = True,
        progress: bool = False,
        feature_cache_mb: float = 2048.0,
    ):
        self.model = model
        self.feature_cache_mb = feature_cache_mb  # encoder features kept from matching
        self.checkpoint = checkpoint
        self.device = device
        self.image_size = image_size
        self.batch_size = batch_size
        self.precision = precision
        self.allow_download = allow_download
        self.progress = progress
        self._engine = None

    @property
    def engine(self):
        """The loaded :class:`~medseg.engine.Sam2Engine` (loaded on first use)."""
        if self._engine is None:
            from .engine import Sam2Engine

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
                self._engine = Sam2Engine(
                    self.model, None if self.checkpoint is None else str(self.checkpoint),
                    self.device, image_size=self.image_size, batch_size=self.batch_size,
                    precision=self.precision, allow_download=self.allow_download,
                    progress=self.progress,
                )
        return self._engine

    # -- stages -------------------------------------------------------------------------------
    def prepare_support(
        self, support: Volume, label: Volume, query: FrameStack, cfg: SegmentConfig
    ) -> list[SupportGroup]:
        """Pick support slices per label and build their banks on the query's pixel grid."""
        window = parse_window(cfg.window)
        sframes = volume_to_frames(support, cfg.axis, cfg.modality, window)
        lframes = label_to_frames(label, cfg.axis)
        present = sorted(int(v) for v in np.unique(lframes) if v != 0)
        values = list(cfg.labels) if cfg.labels else present
        missing = [v for v in values if v not in present]
        if missing:
            raise InputError(
                f"support label {label.path}: value(s) {missing} not present; values present: "
                f"{present}"
            )
        src_axis, src_index = sframes.source_index(support.shape)
        slices_of: dict[int, list[int]] = {}
        for v in values:
            area = np.count_nonzero(lframes == v, axis=(1, 2))
            if cfg.support_slice is not None:
                hits = np.nonzero(src_index == cfg.support_slice)[0]
                if hits.size == 0:
                    raise InputError(
                        f"--support-slice {cfg.support_slice}: outside the support volume "
                        f"(0..{len(src_index) - 1} along array axis {src_axis})"
                    )
                f = int(hits[0])
                if area[f] == 0:
                    with_v = src_index[area > 0]
                    raise InputError(
                        f"--support-slice {cfg.support_slice} holds no voxel of label {v}; "
                        f"slices with it: {int(with_v.min())}..{int(with_v.max())}"
                    )
                slices_of[v] = [f]
            else:
                order = np.argsort(-area, kind="stable")
                slices_of[v] = sorted(int(f) for f in order[: cfg.shots] if area[f] > 0)
        groups: dict[tuple[int, ...], list[int]] = {}
        for v in values:
            groups.setdefault(tuple(slices_of[v]), []).append(v)
        out_value = {v: i + 1 for i, v in enumerate(values)}
        qshape = query.frames.shape[1:]
        qsp, ssp = query.spacing[1:], sframes.spacing[1:]
        result = []
        for gi, (slices, vals) in enumerate(groups.items()):
            banks = []
            for f in slices:
                img = resample_frame(sframes.frames[f], ssp, qshape, qsp, order=1)
                lab = np.where(np.isin(lframes[f], vals), lframes[f], 0).astype(np.float32)
                lab = resample_frame(lab, ssp, qshape, qsp, order=0).astype(np.uint8)
                bank_cfg = replace(cfg.bank, seed=cfg.bank.seed + 1000 * gi)
                banks.append(build_bank(img, lab, bank_cfg, source_slice=int(src_index[f])))
            bank = Bank.concat(banks)
            for v in vals:
                if not (bank.masks[0] == v).any() and not (bank.masks == v).any():
                    raise InputError(
                        f"label {v}: too small to survive resampling to the query grid "
                        f"(support slice {int(src_index[slices[0]])}); pick a larger slice"
                    )
            result.append(SupportGroup([int(src_index[f]) for f in slices], vals,
                                       [out_value[v] for v in vals], bank))
        return result

    def _distances(self, name: str, query: np.ndarray, bank: Bank,
                   keep_mb: float = 0.0) -> tuple[np.ndarray, dict]:
        """(n, M) distances; with the ``sam2`` matcher also the query features kept for reuse."""
        if name == "sam2":
            import torch

            e = self.engine
            with torch.inference_mode():
                qd, kept = e.descriptors(query, keep_mb)
                bd, _ = e.descriptors(bank.images)
                return torch.cdist(qd, bd).pow(2).cpu().numpy(), kept
        return weight_free_distance(name, query, bank.images), {}

    # -- the whole job -------------------------------------------------------------------------
    def segment(
        self,
        support: str | os.PathLike | Volume,
        support_label: str | os.PathLike | Volume,
        query: str | os.PathLike | Volume,
        config: SegmentConfig | None = None,
        **options: Any,
    ) -> Result:
        """Segment ``query`` from one labelled ``support`` volume.

        ``options`` override fields of :class:`SegmentConfig` (``labels``, ``mode``, ...);
        ``bank_size`` and ``seed`` set the augmentation bank's size and seed.
        """
        cfg = _make_config(config, options)
        cfg.check()
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        s_vol = check_finite(_as_volume(support, "support", cfg.support_series), "support")
        l_vol = _as_volume(support_label, "support label")
        q_vol = check_finite(_as_volume(query, "query", cfg.query_series), "query")
        l_vol = check_label(l_vol, s_vol, cfg.resample_label)
        timings["load"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        qstack = volume_to_frames(q_vol, cfg.axis, cfg.modality, parse_window(cfg.window))
        timings["frames"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        groups = self.prepare_support(s_vol, l_vol, qstack, cfg)
        timings["bank"] = time.perf_counter() - t0

        n, h, w = qstack.frames.shape
        values = [v for g in groups for v in g.values]
        outputs = [o for g in groups for o in g.outputs]
        n_out = max(outputs)
        labels = np.zeros((n, h, w), np.uint8)
        scores = np.full((n, n_out), np.nan, np.float32)
        matches: dict[int, np.ndarray] = {}
        distances: dict[int, np.ndarray] = {}
        group_info = []
        timings["match"] = 0.0
        timings["sam2"] = 0.0
        bar = _progress(self.progress, n * len(groups), "segmenting")
        for gi, g in enumerate(groups):
            dist = None
            info: dict[str, Any] = {"support_slices": g.slices, "labels": g.values,
                                    "outputs": g.outputs, "bank_size": len(g.bank)}
            need_dist = cfg.method == "transfer" or cfg.mode == "volume" or cfg.matcher != "sam2"
            kept: dict = {}
            if need_dist:
                t0 = time.perf_counter()
                keep = self.feature_cache_mb if cfg.mode == "volume" and cfg.method == "sam2" else 0
                dist, kept = self._distances(cfg.matcher, qstack.frames, g.bank, keep)
                timings["match"] += time.perf_counter() - t0
            if cfg.method == "transfer":
                m = best_members(dist)
                to_local = np.zeros(int(g.bank.masks.max()) + 1, np.uint8)
                to_local[g.values] = np.arange(1, len(g.values) + 1)
                local = to_local[transfer_masks(m, g.bank.masks)]
                bar.update(n)
            else:
                t0 = time.perf_counter()
                masks = g.bank.binary_masks(g.values)  # (M, K, H, W): one SAM2 object per label
                out, inserted = self._run_engine(cfg, qstack.frames, g, masks, dist, bar, kept)
                kept = {}
                timings["sam2"] += time.perf_counter() - t0
                timings["match"] += out.timings.get("match_s", 0.0)
                timings["sam2"] -= out.timings.get("match_s", 0.0)
                local, m = out.labels, out.matches
                if out.distances is not None:
                    dist = out.distances
                for k, o in enumerate(g.outputs):
                    scores[:, o - 1] = out.object_scores[:, k]
                info["engine_timings_s"] = {k: round(v, 4) for k, v in out.timings.items()}
                if inserted is not None:
                    info["inserted_before_frame"], info["inserted_member"] = inserted
                    m = np.full(n, inserted[1])
            lut = np.array([0, *g.outputs], np.uint8)
            local = lut[local]
            free = labels == 0
            labels[free] = local[free]
            matches[gi] = np.asarray(m)
            if dist is not None:
                distances[gi] = dist
            info["bank_params"] = g.bank.params
            group_info.append(info)
        bar.close()

        t0 = time.perf_counter()
        frange = parse_range(cfg.z_range, n)
        labels = postprocess(labels, list(range(1, n_out + 1)), keep_largest=cfg.keep_largest,
                             holes=cfg.fill_holes, frame_range=frange)
        out_arr = qstack.to_volume_array(labels)
        timings["postprocess"] = time.perf_counter() - t0

        names = list(cfg.names) if cfg.names else [f"label_{v}" for v in values]
        segments = export.make_segments(outputs, names)
        label_vol = Volume(out_arr.astype(np.uint8), q_vol.spacing, q_vol.origin,
                           q_vol.direction.copy(), path=q_vol.path)
        report = self._report(cfg, s_vol, l_vol, q_vol, qstack, groups, group_info, segments,
                              values, labels, scores, matches, distances, timings)
        return Result(label_vol, segments, report, qstack, labels, groups, matches, scores)

    def _run_engine(self, cfg, frames, g, masks, dist, bar, kept=None):
        import torch

        e = self.engine
        torch.manual_seed(cfg.bank.seed)
        for attempt in range(2):
            try:
                if cfg.mode == "pair":
                    m = None if dist is None else best_members(dist)
                    return e.run_pairs(frames, g.bank.images, masks, m, progress=bar.update), None
                # volume: insert the globally closest member before its closest query frame
                fi, mi = (int(i) for i in np.unravel_index(int(np.argmin(dist)), dist.shape))
                out = e.run_volume(frames, g.bank.images[mi], masks[mi], fi,
                                   progress=bar.update, offload_state=attempt > 0,
                                   features=kept if attempt == 0 else None)
                return out, (fi, mi)
            except torch.cuda.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                if attempt == 0 and e.batch_size > 1:
                    e.batch_size = 1
                    warnings.warn("GPU out of memory: retrying with batch size 1 and the state "
                                  "offloaded to CPU", stacklevel=2)
                    continue
                raise DeviceError(
                    f"out of GPU memory on {e.device} even with batch size 1; use a smaller "
                    "--model, --image-size, or --device cpu"
                ) from exc
        raise AssertionError("unreachable")

    def _report(self, cfg, s_vol, l_vol, q_vol, qstack, groups, group_info, segments, values,
                labels, scores, matches, distances, timings) -> dict:
        n = len(qstack)
        per_frame = []
        areas = np.stack([np.count_nonzero(labels == s.value, axis=(1, 2)) for s in segments], 1)
        _, q_index = qstack.source_index(q_vol.shape)
        for i in range(n):
            row: dict[str, Any] = {"frame": i, "query_slice": int(q_index[i])}
            row["matched_member"] = [int(matches[g][i]) for g in sorted(matches)]
            if distances:
                row["distance"] = [round(float(distances[g][i, int(matches[g][i])]), 6)
                                   for g in sorted(distances)]
            row["object_score"] = [None if np.isnan(s) else round(float(s), 4) for s in scores[i]]
            row["area_px"] = [int(a) for a in areas[i]]
            per_frame.append(row)
        engine = None
        if cfg.method == "sam2" and self._engine is not None:
            engine = self._engine.describe()
            timings["model_load"] = self._engine.load_seconds
        cfg_dict = asdict(cfg)
        return {
            "medseg_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": versions(),
            "machine": machine(),
            "engine": engine,
            "config": cfg_dict,
            "inputs": {
                "support": {"path": s_vol.path, **s_vol.geometry()},
                "support_label": {"path": l_vol.path, **l_vol.geometry()},
                "query": {"path": q_vol.path, **q_vol.geometry(), "axis": cfg.axis,
                          "frames": n, "intensity": qstack.intensity},
            },
            "segments": [{"value": s.value, "name": s.name, "support_value": v,
                          "color": list(s.color)} for s, v in zip(segments, values)],
            "support_groups": group_info,
            "overlap_rule": "within a support slice: highest positive SAM2 logit; across "
                            "support slices: the label listed first",
            "per_frame": per_frame,
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
        }


def _make_config(config: SegmentConfig | None, options: dict[str, Any]) -> SegmentConfig:
    cfg = config or SegmentConfig()
    bank_kw = {}
    if "bank_size" in options:
        bank_kw["size"] = int(options.pop("bank_size"))
    if "seed" in options:
        bank_kw["seed"] = int(options.pop("seed"))
    if bank_kw:
        options["bank"] = replace(cfg.bank, **bank_kw)
    unknown = set(options) - set(SegmentConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return replace(cfg, **options)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, total: int, desc: str):
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr)


def segment(
    support: str | os.PathLike | Volume,
    support_label: str | os.PathLike | Volume,
    query: str | os.PathLike | Volume,
    *,
    model: str = "tiny",
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    image_size: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
    **options: Any,
) -> Result:
    """One-shot segmentation of ``query`` (see :class:`SegmentConfig` for ``options``)."""
    seg = Segmenter(model, checkpoint, device, image_size=image_size, batch_size=batch_size,
                    progress=progress)
    return seg.segment(support, support_label, query, **options)
