"""Support-label formats behind one contract, chosen by a registry.

Each format is a :class:`LabelIO`: the paths it claims and how it reads them onto the
support image's grid. :func:`read_support_label` asks the registry (:data:`LABEL_IO`) in
order: a Slicer segmentation, a DICOM-SEG or RTSTRUCT, else a label map image.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import replace
from pathlib import Path

from ..errors import InputError
from ..io import Volume, read_image
from ..io.dicom import dicom_kind
from . import dicom, slicer
from .names import names_beside, read_label_names
from .plan import SegmentInfo
from .support import SupportLabel, from_labelmap


class LabelIO(ABC):
    """One support-label format."""

    name: str = ""

    @abstractmethod
    def claims(self, path: Path) -> bool:
        """Whether this format reads ``path``."""

    @abstractmethod
    def read(self, path: Path, image: Volume, resample: bool, name: str) -> SupportLabel:
        """The label on ``image``'s grid."""


class SlicerSegIO(LabelIO):
    """3D Slicer ``.seg.nrrd`` (any layout Slicer writes)."""

    name = "slicer"

    def claims(self, path: Path) -> bool:
        return path.is_file() and path.name.lower().endswith(".nrrd") and \
            slicer.is_slicer_seg(path)

    def read(self, path, image, resample, name):
        return slicer.read_slicer_seg(path, image, resample, name)


class DicomLabelIO(LabelIO):
    """DICOM-SEG and RTSTRUCT (a file, or a folder holding one)."""

    name = "dicom"

    def claims(self, path: Path) -> bool:
        return dicom_kind(path) in ("SEG", "RTSTRUCT")

    def read(self, path, image, resample, name):
        return dicom.read_label(path, dicom_kind(path), image, name)


class LabelmapIO(LabelIO):
    """An integer label map in any image format :func:`~medseg.io.read_image` reads; its
    names come from a description beside it (:mod:`~medseg.labels.names`)."""

    name = "labelmap"

    def claims(self, path: Path) -> bool:
        return True

    def read(self, path, image, resample, name):
        label = from_labelmap(read_image(path, name=name), image, resample, name)
        described, source = names_beside(path)
        if source is not None:
            _describe(label, described, source)
        return label


def _describe(label: SupportLabel, described: dict[int, SegmentInfo], source: Path) -> None:
    """Names (colours, records) of a label's values from a description file."""
    hits = [v for v in label.segments if v in described]
    for v in hits:
        label.segments[v] = replace(described[v], value=v)
    if hits:
        label.notes.append(f"names from {source}")


LABEL_IO: list[LabelIO] = [SlicerSegIO(), DicomLabelIO(), LabelmapIO()]  # first claim wins


def read_support_label(path: str | os.PathLike | Volume, image: Volume, *,
                       resample: bool = False, name: str = "support label",
                       names: str | os.PathLike | None = None) -> SupportLabel:
    """Read any supported label form and put it on ``image``'s grid.

    Args:
        path: a label file or folder, or a label :class:`~medseg.io.Volume`.
        image: the support image the label belongs to.
        resample: resample a label on another grid (nearest neighbour) instead of refusing.
        name: what the file is to the user, for messages.
        names: a label description (``dataset.json``, ``.ctbl``, ITK-SNAP) naming a label
            map's values; by default one found beside the label map is used.

    Returns:
        The structures on the image grid, with what the file says about each.

    Raises:
        InputError: missing, unreadable, empty or mismatched labels.
    """
    if isinstance(path, Volume):
        label = from_labelmap(path, image, resample, name)
        if names is not None:
            _describe(label, read_label_names(Path(names)), Path(names))
        return label
    p = Path(path)
    if not p.exists():
        raise InputError(f"{name} {p}: no such file or folder")
    io = next(io for io in LABEL_IO if io.claims(p))
    label = io.read(p, image, resample, name)
    if names is not None:
        _describe(label, read_label_names(Path(names)), Path(names))
    return label
