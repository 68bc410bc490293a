"""Quality-control pictures: what was matched, what was segmented, where it may drift."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._lazy import lazy_import

matplotlib = lazy_import("matplotlib")
pyplot = lazy_import("matplotlib.pyplot")

if TYPE_CHECKING:
    from .result import Result


def _figure():
    """pyplot on the file-only Agg backend (no screen needed)."""
    matplotlib.use("Agg", force=False)
    return pyplot


def _aspect(spacing_rc: tuple[float, float]) -> float:
    return float(spacing_rc[0] / spacing_rc[1])


def pick_frames(labels: np.ndarray, count: int = 8) -> list[int]:
    """Evenly spaced frames over the predicted extent (or the whole stack if empty)."""
    has = np.nonzero(labels.reshape(labels.shape[0], -1).any(axis=1))[0]
    lo, hi = (int(has.min()), int(has.max())) if has.size else (0, labels.shape[0] - 1)
    idx = np.unique(np.linspace(lo, hi, min(count, hi - lo + 1)).round().astype(int))
    return [int(i) for i in idx]


def qc_figure(result: Result, path: str | os.PathLike, count: int = 8, dpi: int = 90,
              fmt: str | None = None) -> Path:
    """Mosaic: query slices with the mask contour (drawn slices marked), each beside the
    support member it was matched with (when another scan was the support), then per-slice
    mask area (mm^2) and SAM2 object score along the stack."""
    plt = _figure()
    labels = result.label_frames
    drawn = result.drawn_frames.any(axis=0) if result.drawn_frames is not None else \
        np.zeros(len(labels), bool)
    picks = sorted(set(pick_frames(labels, count - min(2, int(drawn.sum()))))
                   | set(np.nonzero(drawn)[0][:2].tolist()))
    cross = bool(result.groups)
    fig = plt.figure(figsize=(2.1 * len(picks), 7.2 if cross else 5.0), constrained_layout=True)
    gs = fig.add_gridspec(3 if cross else 2, len(picks),
                          height_ratios=[1, 1, 1.1] if cross else [1, 1.1])
    _slices(fig, gs, result, picks, drawn)
    _profile(fig.add_subplot(gs[-1, :]), result, drawn)
    note = " — RANDOM-WEIGHT MODEL: masks are meaningless" if result.report.random_weights else ""
    cfg = result.report.config
    how = ("method transfer, no SAM2" if cfg.get("method") == "transfer"
           else f"SAM2 {cfg.get('mode', '')} mode")
    what = (f"top query slices, middle the support member each was matched with "
            f"({result.groups[0].entries[0].name})" if cross else
            "the painted scan: slices drawn by the user kept, the rest estimated")
    fig.suptitle(f"medseg QC ({how}, matcher {cfg.get('matcher', '?')}): {what}{note}",
                 fontsize=10, wrap=True)
    fig.savefig(path, dpi=dpi, format=fmt or Path(path).suffix[1:].lower() or "png")
    plt.close(fig)
    return Path(path)


def _slices(fig, gs, result: Result, picks: list[int], drawn: np.ndarray) -> None:
    """The picked slices with contours; below each, its matched member (another scan)."""
    frames, labels = result.query_frames.frames, result.label_frames
    aspect = _aspect(result.query_frames.spacing[1:])
    entries = list(result.plan)
    colors = [np.array(e.color) / 255.0 for e in entries]
    group = result.groups[0] if result.groups else None
    match = result.matches.get(0)
    for j, f in enumerate(picks):
        ax = fig.add_subplot(gs[0, j])
        ax.imshow(frames[f], cmap="gray", vmin=0, vmax=1, aspect=aspect)
        for e, c in zip(entries, colors):
            m = labels[f] == e.output_value
            if m.any():
                ax.contour(m, levels=[0.5], colors=[c], linewidths=1.6 if drawn[f] else 1.0)
        ax.set_title(f"query {f}" + (" (drawn)" if drawn[f] else ""), fontsize=8)
        ax.axis("off")
        if group is None:
            continue
        ax2 = fig.add_subplot(gs[1, j])
        mem = int(match[f]) if match is not None and match[f] >= 0 else 0
        ax2.imshow(group.bank.images[mem], cmap="gray", vmin=0, vmax=1, aspect=aspect)
        for k, e in enumerate(group.entries):
            m, c = group.bank.masks[mem, k], colors[e.output_value - 1]
            if m.any():
                ax2.contour(m, levels=[0.5], colors=[c], linewidths=1.0)
        ax2.set_title(f"support #{mem}", fontsize=8)
        ax2.axis("off")


def _profile(ax3, result: Result, drawn: np.ndarray) -> None:
    """Mask area per slice, SAM2 object scores, where nothing was expected, drawn slices."""
    labels, sp = result.label_frames, result.query_frames.spacing
    entries = list(result.plan)
    colors = [np.array(e.color) / 255.0 for e in entries]
    x = np.arange(labels.shape[0])
    for e, c in zip(entries, colors):
        ax3.plot(x, np.count_nonzero(labels == e.output_value, axis=(1, 2)) * float(sp[1] * sp[2]),
                 color=c, label=f"{e.name} area")
    ax3.set(xlabel=f"{result.query_frames.axis} frame", ylabel="mask area (mm²)")
    if result.object_scores is not None and np.isfinite(result.object_scores).any():
        ax4 = ax3.twinx()
        for k, c in enumerate(colors):
            ax4.plot(x, result.object_scores[:, k], ls="--", color=c, alpha=0.7)
        ax4.axhline(0, color="grey", lw=0.5)
        ax4.set_ylabel("SAM2 object score (dashed; >0 = present)")
    for f in np.nonzero(drawn)[0]:
        ax3.axvline(f, color="k", lw=1.2)
    if drawn.any():
        ax3.plot([], [], color="k", lw=1.2, label="slice drawn by the user")
    _shade_absent(ax3, result)
    ax3.legend(loc="upper left", fontsize=8)


def _shade_absent(ax, result: Result) -> None:
    """Grey bands over frames where no structure was expected (presence), and where the
    support slices correspond to (slice correspondence), as the report records them."""
    rows = result.report.per_frame
    if not result.groups:
        return  # the painted scan itself: no correspondence, nothing "expected" elsewhere
    outside = np.array([not any(r.expected) for r in rows])
    for i in np.nonzero(outside)[0]:
        ax.axvspan(i - 0.5, i + 0.5, color="0.85", lw=0, zorder=0)
    if outside.any():
        ax.plot([], [], color="0.85", lw=6, label="no structure expected")
    pos = {r.support_position: r.frame for r in rows if r.support_position is not None}
    for g in result.groups[:1]:
        for f in g.frames:
            near = [fr for p_, fr in pos.items() if abs(p_ - f) <= 0.5]
            for fr in near[:1]:
                ax.axvline(fr, color="k", ls=":", lw=0.8)
        if any(abs(p_ - f) <= 0.5 for f in g.frames for p_ in pos):
            ax.plot([], [], color="k", ls=":", lw=0.8, label="support slice's counterpart")


def per_slice_dice_plot(dice: np.ndarray, path: str | os.PathLike, labels: list[str],
                        axis_name: str = "slice") -> Path:
    """Per-slice Dice along the stack, one line per label (NaN where both are empty)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 3), constrained_layout=True)
    for k, name in enumerate(labels):
        ax.plot(np.arange(dice.shape[0]), dice[:, k], marker=".", label=name)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(axis_name)
    ax.set_ylabel("Dice")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return Path(path)
