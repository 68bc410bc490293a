"""Finding a support label by convention next to its image."""

from __future__ import annotations

import os
from pathlib import Path

from ..io.dicom import read_dataset


def find_label_beside(support: str | os.PathLike) -> tuple[Path | None, list[Path]]:
    """The support label found by convention next to the support scan, and what was tried.

    For ``s.nii.gz``: ``s_label``, ``s_labels``, ``s_seg``, ``s-label``, ``s-seg``,
    ``s_mask``, ``s.label``, ``s.seg`` with any image suffix, ``s.seg.nrrd``,
    ``Segmentation.seg.nrrd`` in the same folder, and ``labelsTr/s`` beside ``imagesTr/``
    (nnU-Net/MSD layout, the ``_0000`` channel suffix removed). For a DICOM series folder:
    the one DICOM-SEG or RTSTRUCT inside it (or beside it) that refers to the series'
    frame of reference.
    """
    p = Path(support)
    if p.is_dir():
        return _dicom_label_of(p)
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


def _dicom_label_of(folder: Path) -> tuple[Path | None, list[Path]]:
    """The one SEG or RTSTRUCT in ``folder`` or its parent that refers to the frame of
    reference of the image series in ``folder``."""
    frame = None
    candidates = []
    for where in (folder, folder.parent):
        for f in sorted(x for x in where.iterdir() if x.is_file())[:5000]:
            ds = read_dataset(f)
            if ds is None:
                continue
            modality = getattr(ds, "Modality", None)
            if modality in ("SEG", "RTSTRUCT"):
                candidates.append((f, _frame_of(ds)))
            elif where == folder and frame is None:
                frame = str(getattr(ds, "FrameOfReferenceUID", "") or "") or None
    hits = [f for f, fr in candidates if frame is None or fr in (None, frame)]
    return (hits[0] if len(hits) == 1 else None), [f for f, _ in candidates] or [folder]


def _frame_of(ds) -> str | None:
    uid = str(getattr(ds, "FrameOfReferenceUID", "") or "")
    if not uid:
        refs = getattr(ds, "ReferencedFrameOfReferenceSequence", None) or []
        uid = str(getattr(refs[0], "FrameOfReferenceUID", "") or "") if refs else ""
    return uid or None


def _image_stem(name: str) -> str:
    low = name.lower()
    for suf in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name
