"""Finding a support label by convention next to its image."""

from __future__ import annotations

import os
from pathlib import Path


def find_label_beside(support: str | os.PathLike) -> tuple[Path | None, list[Path]]:
    """The support label found by convention next to the support scan, and what was tried.

    For ``s.nii.gz``: ``s_label``, ``s_labels``, ``s_seg``, ``s-label``, ``s-seg``,
    ``s_mask``, ``s.label``, ``s.seg`` with any image suffix, ``s.seg.nrrd``,
    ``Segmentation.seg.nrrd`` in the same folder, and ``labelsTr/s`` beside ``imagesTr/``
    (nnU-Net/MSD layout, the ``_0000`` channel suffix removed).
    """
    p = Path(support)
    folder = p.parent
    stem = _image_stem(p.name)
    suffixes = [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"]
    tried: list[Path] = [folder / f"{stem}.seg.nrrd"]
    for tag in ("_label", "_labels", "_seg", "-label", "-seg", "_mask", ".label", ".seg"):
        tried += [folder / f"{stem}{tag}{s}" for s in suffixes if not (tag == ".seg" and
                                                                       s == ".nrrd")]
    tried.append(folder / "Segmentation.seg.nrrd")
    if folder.name.startswith("images"):
        base = stem[:-5] if stem.endswith("_0000") else stem
        tried += [folder.parent / ("labels" + folder.name[6:]) / f"{base}{s}" for s in suffixes]
    found = [t for t in tried if t.is_file() and t.resolve() != p.resolve()]
    return (found[0] if found else None), tried


def _image_stem(name: str) -> str:
    low = name.lower()
    for suf in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name
