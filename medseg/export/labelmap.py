"""The NIfTI labelmap and the colour tables that name its values (Slicer ``.ctbl``,
ITK-SNAP label description)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .._lazy import lazy_import
from ..io import Volume
from ..labels import LabelPlan

sitk = lazy_import("SimpleITK")


def labelmap_volume(labels: np.ndarray, reference: Volume, dtype: str = "uint8") -> Volume:
    """A labelmap volume with the reference's geometry."""
    if labels.shape != reference.shape:
        raise ValueError(f"labelmap shape {labels.shape} != reference {reference.shape}")
    return Volume(labels.astype(dtype, copy=False), reference.spacing, reference.origin,
                  reference.direction.copy())


NIFTI_INTENT_LABEL = 1002  # the NIfTI-1 intent code of a label map
# gzip level of the label files medseg writes (NIfTI, .seg.nrrd): 1, as nibabel writes
# .nii.gz; label maps compress well at any level and level 6 took four times as long
GZIP_LEVEL = 1


def nifti_labelmap(labels: np.ndarray, reference: Volume, path: Path, dtype: str = "uint8") -> None:
    """Labelmap on the reference's grid (compressed NIfTI, intent "label"): SimpleITK writes
    the geometry, the intent is set in the header, gzip compresses (reproducibly)."""
    raw = path.with_name(path.name + ".raw.nii")
    try:
        sitk.WriteImage(labelmap_volume(labels, reference, dtype).to_sitk(), str(raw),
                        useCompression=False)
        data = bytearray(raw.read_bytes())
    finally:
        raw.unlink(missing_ok=True)
    if int.from_bytes(data[:4], "little") == 348:  # NIfTI-1, little endian (ITK's own)
        data[68:70] = NIFTI_INTENT_LABEL.to_bytes(2, "little")
        data[328:344] = b"label".ljust(16, b"\0")
    path.write_bytes(gzip.compress(bytes(data), compresslevel=GZIP_LEVEL, mtime=0))


def color_table(plan: LabelPlan, path: Path) -> None:
    """Slicer colour table (``.ctbl``): ``value name R G B A`` per line, 0 = background."""
    lines = ["# Color table file (3D Slicer): value name R G B A", "0 background 0 0 0 0"]
    lines += [f"{e.output_value} {e.name.replace(' ', '_')} {e.color[0]} {e.color[1]} "
              f"{e.color[2]} 255" for e in plan]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def itksnap_labels(plan: LabelPlan, path: Path) -> None:
    """ITK-SNAP label description file: ``IDX R G B A VIS MSH "LABEL"`` per line."""
    lines = ["# ITK-SnAP Label Description File",
             '    0     0    0    0        0  0  0    "Clear Label"']
    for e in plan:
        label = e.name.replace('"', "'")
        lines.append(f"{e.output_value:5d} {e.color[0]:5d} {e.color[1]:4d} {e.color[2]:4d}"
                     f"        1  1  1    \"{label}\"")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
