"""DICOM-SEG output (highdicom) for a query read from a DICOM series: a binary
segmentation referencing the query's own instances, one segment per structure."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._lazy import lazy_import
from .._version import __version__
from ..errors import OutputError
from ..io.dicom import is_dicom, read_dataset
from ..labels import terminology

hd = lazy_import("highdicom")
hd_color = lazy_import("highdicom.color")
hd_coding = lazy_import("highdicom.sr.coding")
pydicom = lazy_import("pydicom")
codedict = lazy_import("pydicom.sr.codedict")

if TYPE_CHECKING:
    from ..result import Result




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
        raise OutputError(f"format dicom-seg/rtstruct: the query {p} was not read from a DICOM "
                          "series, so a DICOM object cannot reference it; use nifti or "
                          "seg.nrrd", option="format")
    first = p if p.is_file() else next(f for f in sorted(p.iterdir()) if f.is_file())
    ds = read_dataset(first)
    missing = [u for u in REQUIRED_UIDS if not str(getattr(ds, u, "") or "").strip()]
    if missing:
        raise OutputError(f"format dicom-seg/rtstruct: the query series lacks "
                          f"{', '.join(missing)} (anonymised without UIDs?), which a DICOM "
                          "object must reference; use nifti or seg.nrrd", option="format")


TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
         "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _source(path: str, thickness: float):
    """A source instance for highdicom: an empty SOPClassUID is taken from the file meta,
    patient/study attributes a derived object must carry (DICOM type 2) but the series
    lacks are added empty, as the standard allows, and a missing slice thickness is the
    spacing between slices."""
    ds = pydicom.dcmread(path)
    if not str(getattr(ds, "SOPClassUID", "") or "").strip():
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    for key in TYPE2:
        if key not in ds:
            setattr(ds, key, "")
    if not getattr(ds, "SliceThickness", None):
        ds.SliceThickness = f"{thickness:.6g}"
    return ds


def sources(result: Result) -> list:
    """The query's DICOM instances as highdicom sources (in the series' order)."""
    return [_source(f, result.labels.spacing[2]) for f in query_files(result)]


def algorithm(result: Result):
    """The algorithm as it ran: SAM2 (model and checkpoint) or the weight-free transfer."""
    cfg, eng = result.report.config, result.report.engine or {}
    params = {"method": str(cfg.get("method")), "matcher": str(cfg.get("matcher"))}
    if cfg.get("method") == "sam2":
        params.update(mode=str(cfg.get("mode")), model=f"SAM2.1 {eng.get('model', '?')}",
                      checkpoint_sha256=str(eng.get("checkpoint_sha256", ""))[:16],
                      image_size=str(eng.get("image_size", "")))
        family = codedict.codes.cid7162.ArtificialIntelligence
    else:
        family = codedict.codes.cid7162.DeformableModels  # registration and matching only
    params["bank_size"] = str(cfg.get("support", {}).get("bank", {}).get("size", ""))
    return hd.AlgorithmIdentificationSequence(name="medseg", version=__version__,
                                              family=family, parameters=params)


def concept(code: terminology.Code):
    return hd_coding.CodedConcept(code.value, code.scheme, code.meaning[:64] or code.value)


def segment_description(number: int, entry, algo):
    """One structure's segment: its label, codes (laterality as the type's modifier),
    CIELab display colour, the algorithm."""
    term = terminology.of(entry.terminology, entry.name)
    desc = hd.seg.SegmentDescription(
        segment_number=number, segment_label=entry.name[:64],
        segmented_property_category=concept(term.category),
        segmented_property_type=concept(term.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo,
        anatomic_regions=[concept(term.region)] if term.region else None,
        display_color=hd_color.CIELabColor.from_rgb(*entry.color))
    if term.modifier is not None:
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = \
            [concept(term.modifier)]
    return desc


def write_dicom_seg(result: Result, path: Path, masks: np.ndarray | None = None) -> None:
    """A binary DICOM-SEG of the result, referencing the query's DICOM instances; with
    per-structure ``masks`` (N, z, y, x, from :meth:`Result.structure_masks`) segments may
    overlap, else they come from the labelmap."""
    labels = result.labels.array  # (z, y, x): z follows the series' file order
    if masks is None:
        masks = np.stack([labels == e.output_value for e in result.plan])
    masks = np.moveaxis(masks, 0, -1).astype(np.uint8)  # (z, y, x, segment)
    algo = algorithm(result)
    descs = [segment_description(i + 1, e, algo) for i, e in enumerate(result.plan)]
    with warnings.catch_warnings():  # highdicom's notes on the source's own values
        warnings.simplefilter("ignore", UserWarning)
        seg = _segmentation(result, masks, descs)
    seg.save_as(str(path))


def _segmentation(result: Result, masks: np.ndarray, descs: list):
    try:
        return hd.seg.Segmentation(
            source_images=sources(result), pixel_array=masks,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descs,
            series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="medseg", manufacturer_model_name="medseg",
            software_versions=__version__, device_serial_number="none",
            series_description="medseg (automatic, not reviewed)", omit_empty_frames=True)
    except (AttributeError, ValueError, KeyError) as exc:  # what the query series lacks
        raise OutputError(f"format dicom-seg: the query series cannot be referenced by a "
                          f"DICOM-SEG ({str(exc).splitlines()[0][:200]}); use nifti or "
                          "seg.nrrd", option="format") from exc
