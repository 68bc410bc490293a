"""DICOM-SEG output (highdicom) for a query read from a DICOM series: a binary
segmentation referencing the query's own instances, one segment per structure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._lazy import lazy_import
from .._version import __version__
from ..errors import OutputError
from ..io.dicom import is_dicom, read_dataset

hd = lazy_import("highdicom")
hd_coding = lazy_import("highdicom.sr.coding")
pydicom = lazy_import("pydicom")
codedict = lazy_import("pydicom.sr.codedict")

if TYPE_CHECKING:
    from ..result import Result


SCT_TYPES = {  # SNOMED CT codes of common structures (DICOM CID 7166 / 4031)
    "liver": ("10200004", "Liver"), "spleen": ("78961009", "Spleen"),
    "kidney": ("64033007", "Kidney"), "right kidney": ("9846003", "Right kidney"),
    "left kidney": ("18639004", "Left kidney"), "pancreas": ("15776009", "Pancreas"),
    "stomach": ("69695003", "Stomach"), "aorta": ("15825003", "Aorta"),
    "heart": ("80891009", "Heart"), "lung": ("39607008", "Lung"), "brain": ("12738006", "Brain"),
    "tumour": ("108369006", "Neoplasm"), "tumor": ("108369006", "Neoplasm"),
}


REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def query_files(result: Result) -> list[str]:
    files = result.query_source.get("dicom_file_list")
    if not files:
        raise OutputError("format dicom-seg: the query was not read from a DICOM series, so a "
                          "DICOM-SEG cannot reference it; use nifti or seg.nrrd",
                          option="format")
    return files


def check_seg_sources(path: str | os.PathLike) -> None:
    """Before any work: can a DICOM-SEG reference the query (a DICOM series with UIDs)?"""
    p = Path(path)
    if not is_dicom(p):
        raise OutputError(f"format dicom-seg: the query {p} was not read from a DICOM series, so "
                          "a DICOM-SEG cannot reference it; use nifti or seg.nrrd",
                          option="format")
    first = p if p.is_file() else next(f for f in sorted(p.iterdir()) if f.is_file())
    ds = read_dataset(first)
    missing = [u for u in REQUIRED_UIDS if not str(getattr(ds, u, "") or "").strip()]
    if missing:
        raise OutputError(f"format dicom-seg: the query series lacks {', '.join(missing)} "
                          "(anonymised without UIDs?), which a DICOM-SEG must reference; use "
                          "nifti or seg.nrrd", option="format")


def _source(path: str):
    """A source instance for highdicom; an empty SOPClassUID is taken from the file meta."""
    ds = pydicom.dcmread(path)
    if not str(getattr(ds, "SOPClassUID", "") or "").strip():
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    return ds


def write_dicom_seg(result: Result, path: Path, masks: np.ndarray | None = None) -> None:
    """A binary DICOM-SEG of the result, referencing the query's DICOM instances; with
    per-structure ``masks`` (N, z, y, x, from :meth:`Result.structure_masks`) segments may
    overlap, else they come from the labelmap."""
    sources = [_source(f) for f in query_files(result)]
    labels = result.labels.array  # (z, y, x): z follows the series' file order
    if masks is None:
        masks = np.stack([labels == e.output_value for e in result.plan])
    masks = np.moveaxis(masks, 0, -1).astype(np.uint8)  # (z, y, x, segment)
    algo = hd.AlgorithmIdentificationSequence(
        name="medseg", version=__version__, family=codedict.codes.cid7162.ArtificialIntelligence)
    descs = []
    for i, e in enumerate(result.plan):
        code, meaning = SCT_TYPES.get(e.name.casefold().replace("_", " "),
                                      ("85756007", "Tissue"))
        descs.append(hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=e.name[:64],
            segmented_property_category=hd_coding.CodedConcept("123037004", "SCT", "Anatomical Structure"),
            segmented_property_type=hd_coding.CodedConcept(code, "SCT", meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descs,
        series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="medseg", manufacturer_model_name="medseg",
        software_versions=__version__, device_serial_number="none",
        series_description="medseg (automatic, not reviewed)", omit_empty_frames=True)
    seg.save_as(str(path))
