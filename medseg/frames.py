"""Turning a volume into a sequence of 2D frames for SAM2, and back.

Frames are cut from the canonical (S, P, L) array (see :mod:`medseg.io`) along one axis:

* ``axial``: frame rows run anterior->posterior, columns patient right->left
  (radiological view); frame index runs inferior->superior.
* ``coronal``: rows superior->inferior, columns right->left; index anterior->posterior.
* ``sagittal``: rows superior->inferior, columns anterior->posterior; index right->left.

Intensities are mapped to [0, 1] per volume (never per slice): a CT window, or a
percentile clip for MRI and other modalities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._lazy import lazy_import
from .errors import InputError, UsageError
from .io import Orientation, Volume, canonical_spacing_zyx, from_canonical, to_canonical
from .options import AXES, CT_WINDOWS, parse_window

ndimage = lazy_import("scipy.ndimage")
torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")

__all__ = ["CT_WINDOWS", "FrameStack", "label_to_frames", "normalize_intensity", "parse_window",
           "resample_frame", "to_model_input", "volume_to_frames"]

MIN_FRAME = 8  # pixels: the smallest frame side SAM2 is given

MR_PERCENTILES = (0.5, 99.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def guess_modality(arr: np.ndarray) -> str:
    """'ct' when the darkest voxels look like air in Hounsfield units, else 'mr'."""
    sample = arr.ravel()[:: max(1, arr.size // 200_000)]
    return "ct" if np.percentile(sample, 1) < -500 else "mr"


def normalize_intensity(
    arr: np.ndarray, modality: str = "auto", window: tuple[float, float] | None = None
) -> tuple[np.ndarray, dict]:
    """Map a volume to float32 [0, 1]; returns the array and what was done."""
    modality = guess_modality(arr) if modality == "auto" else modality
    if modality == "ct":
        lo, hi = window or CT_WINDOWS["abdomen"]
        how = {"modality": "ct", "window_hu": [lo, hi]}
    else:
        if window is not None:
            lo, hi = window
            how = {"modality": modality, "window": [lo, hi]}
        else:
            sample = arr.ravel()[:: max(1, arr.size // 2_000_000)].astype(np.float64)
            fg = sample[sample > sample.min()]  # foreground: everything above the background floor
            fg = fg if fg.size >= 100 else sample
            lo, hi = np.percentile(fg, MR_PERCENTILES)
            if hi <= lo:
                hi = lo + 1.0
            how = {
                "modality": modality,
                "percentiles": list(MR_PERCENTILES),
                "clip": [float(lo), float(hi)],
            }
    out = arr.astype(np.float32, order="C")  # the same float32 steps, in place
    out -= np.float32(lo)
    out /= np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out), how


VISIBLE = 0.95  # of a structure's voxels strictly inside the window for it to be visible
WINDOW_ORDER = ("abdomen", "soft-tissue", "lung", "bone", "brain")


def choose_window(image: np.ndarray, masks: list[np.ndarray], modality: str = "auto"
                  ) -> tuple[tuple[float, float] | None, dict]:
    """The CT window for these structures, from the scan itself.

    A structure is visible under a window when at least :data:`VISIBLE` of its voxels lie
    strictly inside it (not clipped to black or white). The named windows are tried in
    order (:data:`WINDOW_ORDER`; abdomen first, the few-shot benchmarks' convention); the
    first that shows every structure is taken; when none does, the one showing the most
    labelled volume; when none shows any, the window spanning the structures' own 1st-99th
    percentiles. Not a CT (or no structure): None, and the modality's own normalisation
    applies.
    """
    if (guess_modality(image) if modality == "auto" else modality) != "ct" or not masks:
        return None, {"how": "not CT: the modality's own normalisation"}
    values = [image[m] for m in masks if m.any()]
    if not values:
        return None, {"how": "no labelled voxel"}
    shown, volume = {}, {}
    for name in WINDOW_ORDER:
        lo, hi = CT_WINDOWS[name]
        seen = [float(np.mean((v > lo) & (v < hi))) >= VISIBLE for v in values]
        shown[name] = sum(seen)
        volume[name] = sum(v.size for v, ok in zip(values, seen) if ok)
    every = [n for n in WINDOW_ORDER if shown[n] == len(values)]
    if every:
        return CT_WINDOWS[every[0]], {"how": f"'{every[0]}': every structure visible",
                                      "name": every[0]}
    best = max(WINDOW_ORDER, key=lambda n: (volume[n], -WINDOW_ORDER.index(n)))
    if volume[best] > 0:
        return CT_WINDOWS[best], {"how": f"'{best}': {shown[best]} of {len(values)} structures "
                                  "visible, the most labelled volume (no named window shows "
                                  "all)", "name": best}
    both = np.concatenate(values)
    lo, hi = (float(x) for x in np.percentile(both, [1, 99]))
    width = max(hi - lo, 50.0)
    return (lo - 0.25 * width, hi + 0.25 * width), {"how": "from the structures' own HU"}


def _check_axis(axis: str) -> None:
    if axis not in AXES:
        raise UsageError(f"axis {axis!r}: choose one of {', '.join(AXES)}", option="axis")


def canonical_to_frames(canon: np.ndarray, axis: str) -> np.ndarray:
    """(S, P, L) canonical array -> (n_frames, rows, cols) view."""
    _check_axis(axis)
    if axis == "axial":
        return canon
    if axis == "coronal":
        return np.flip(np.transpose(canon, (1, 0, 2)), axis=1)
    return np.flip(np.transpose(canon, (2, 0, 1)), axis=1)


def frames_to_canonical(frames: np.ndarray, axis: str) -> np.ndarray:
    """Exact inverse of :func:`canonical_to_frames`."""
    _check_axis(axis)
    if axis == "axial":
        return frames
    if axis == "coronal":
        return np.transpose(np.flip(frames, axis=1), (1, 0, 2))
    return np.transpose(np.flip(frames, axis=1), (1, 2, 0))


@dataclass
class FrameStack:
    """Frames cut from a volume plus what is needed to put masks back on its grid."""

    frames: np.ndarray  # (n, rows, cols), float32 in [0, 1]
    spacing: tuple[float, float, float]  # (between frames, row, col) in mm
    axis: str
    orientation: Orientation
    intensity: dict

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def to_volume_array(self, masks: np.ndarray) -> np.ndarray:
        """(n, rows, cols) masks -> array in the source volume's own (z, y, x) layout."""
        if masks.shape != self.frames.shape:
            raise ValueError(f"mask stack {masks.shape} does not match frames {self.frames.shape}")
        return from_canonical(frames_to_canonical(masks, self.axis), self.orientation)

    def view_of(self, arr: np.ndarray) -> np.ndarray:
        """An array in the source volume's (z, y, x) layout seen in frames layout (a view)."""
        return canonical_to_frames(self.orientation.apply(arr), self.axis)

    def source_index(self, shape: tuple[int, int, int]) -> tuple[int, np.ndarray]:
        """(source array axis, source index of every frame) for a volume of ``shape`` (z, y, x).

        Frame ``f`` is the slice ``index[f]`` along array axis ``axis`` of the original
        volume; computed through the same (view-only) transforms the frames went through.
        """
        grids = [np.broadcast_to(np.arange(n).reshape([-1 if a == k else 1 for a in range(3)]),
                                 shape) for k, n in enumerate(shape)]
        firsts = [canonical_to_frames(self.orientation.apply(g), self.axis)[:, 0, 0] for g in grids]
        for k, f in enumerate(firsts):
            if len(f) > 1 and f[0] != f[1] or len(f) == 1 and shape[k] == 1:
                return k, np.asarray(f)
        k = [i for i in range(3) if shape[i] == len(firsts[0])][0]
        return k, np.asarray(firsts[k])


def volume_to_frames(
    vol: Volume,
    axis: str = "axial",
    modality: str = "auto",
    window: tuple[float, float] | None = None,
) -> FrameStack:
    """Normalised frames of a volume along ``axis`` in canonical orientation."""
    canon, orient = to_canonical(vol)
    sz, sy, sx = canonical_spacing_zyx(vol, orient)
    view = canonical_to_frames(canon, axis)
    if min(view.shape[1:]) < MIN_FRAME:
        raise InputError(
            f"{vol.path or 'volume'}: {axis} frames would be {view.shape[1]} x {view.shape[2]} "
            f"pixels (the volume is {' x '.join(map(str, vol.shape[::-1]))} voxels); SAM2 needs "
            f"frames of at least {MIN_FRAME} x {MIN_FRAME}: choose another axis", option="axis")
    norm, how = normalize_intensity(view, modality, window)  # elementwise: frames layout
    frames = np.ascontiguousarray(norm)  # already C-ordered: no second copy
    spacing = {"axial": (sz, sy, sx), "coronal": (sy, sz, sx), "sagittal": (sx, sz, sy)}[axis]
    return FrameStack(frames, spacing, axis, orient, how)


def label_to_frames(label: Volume, axis: str = "axial") -> np.ndarray:
    """Integer label volume -> (n, rows, cols) frames in the same layout as the image's."""
    canon, _ = to_canonical(label)
    return np.ascontiguousarray(canonical_to_frames(canon, axis))


def resample_frame(
    frame: np.ndarray,
    spacing: tuple[float, float],
    out_shape: tuple[int, int],
    out_spacing: tuple[float, float],
    order: int = 1,
    cval: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
    zoom: float = 1.0,
) -> np.ndarray:
    """Resample a 2D frame to another pixel grid at the same physical scale (times
    ``zoom``); the input's centre lands ``shift`` output pixels (rows, cols) from the
    output's centre."""
    scale = np.asarray(out_spacing, float) / (np.asarray(spacing, float) * zoom)  # src / dst px
    in_c = (np.asarray(frame.shape, float) - 1) / 2.0
    out_c = (np.asarray(out_shape, float) - 1) / 2.0 + np.asarray(shift, float)
    offset = in_c - scale * out_c
    return ndimage.affine_transform(
        frame, scale, offset=offset, output_shape=tuple(out_shape), order=order,
        mode="constant", cval=cval, prefilter=False,
    )


def to_model_input(frames: np.ndarray, image_size: int, device=None, dtype=None):
    """(n, H, W) [0, 1] frames -> (n, 3, S, S) tensor normalised as SAM2 expects."""
    t = torch.as_tensor(np.ascontiguousarray(frames), dtype=torch.float32)
    if device is not None and torch.device(device).type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)  # page-locked: an async copy
    elif device is not None:
        t = t.to(device)
    t = t[:, None]
    if t.shape[-2:] != (image_size, image_size):
        t = F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=t.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=t.device).view(1, 3, 1, 1)
    t = (t.expand(-1, 3, -1, -1) - mean) / std
    return t.to(dtype) if dtype is not None else t
