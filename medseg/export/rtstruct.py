"""RTSTRUCT output for radiotherapy systems, for a query read from a DICOM series.

One ROI per structure with its name, display colour and codes (RT ROI Identification Code
Sequence, from the structure's terminology), generated AUTOMATIC by medseg. Each slice's
mask becomes closed planar contours traced by scikit-image (``find_contours`` at the 0.5
level, on the mask padded by a pixel so every contour closes); each contour references the
query instance it lies on. Inner contours (holes) are written as contours of their own:
readers that combine a slice's contours by the even-odd rule (3D Slicer, medseg) get the
holes back.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._lazy import lazy_import
from .._version import __version__
from ..labels import terminology
from .dicom_seg import query_files, sources

pydicom = lazy_import("pydicom")
pydicom_dataset = lazy_import("pydicom.dataset")
pydicom_uid = lazy_import("pydicom.uid")
measure = lazy_import("skimage.measure", install="pip install scikit-image")

if TYPE_CHECKING:
    from ..result import Result

RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours (row, col) of a 2D mask, in pixel coordinates."""
    padded = np.pad(mask.astype(np.float32), 1)
    return [c - 1.0 for c in measure.find_contours(padded, 0.5) if len(c) >= 4]


def _item(**attrs):
    ds = pydicom_dataset.Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def _header(first, now: datetime.datetime):
    """Patient, study, series, equipment and SOP common attributes."""
    ds = pydicom_dataset.FileDataset(None, {}, file_meta=pydicom_dataset.FileMetaDataset(),
                                     preamble=b"\0" * 128)
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom_uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom_uid.ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names in any script
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_CLASS, ds.file_meta.MediaStorageSOPInstanceUID
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                "ReferringPhysicianName", "FrameOfReferenceUID"):
        setattr(ds, key, getattr(first, key, ""))
    ds.PositionReferenceIndicator = getattr(first, "PositionReferenceIndicator", "")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = pydicom_uid.generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 901, 1
    ds.SeriesDescription = "medseg (automatic, not reviewed)"
    ds.Manufacturer, ds.ManufacturerModelName = "medseg", "medseg"
    ds.SoftwareVersions = __version__
    ds.OperatorsName = ""
    ds.StructureSetLabel = "medseg"
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def _references(ds, srcs: list) -> None:
    """The frame of reference, study, series and every image the contours may lie on."""
    images = [_item(ReferencedSOPClassUID=s.SOPClassUID, ReferencedSOPInstanceUID=s.SOPInstanceUID)
              for s in srcs]
    series = _item(SeriesInstanceUID=srcs[0].SeriesInstanceUID, ContourImageSequence=images)
    study = _item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",  # Detached Study Mgmt
                  ReferencedSOPInstanceUID=srcs[0].StudyInstanceUID,
                  RTReferencedSeriesSequence=[series])
    ds.ReferencedFrameOfReferenceSequence = [_item(
        FrameOfReferenceUID=srcs[0].FrameOfReferenceUID, RTReferencedStudySequence=[study])]


def _roi_contours(result: Result, masks: np.ndarray, srcs: list, k: int) -> list:
    """Contour items of structure ``k`` on every slice it covers."""
    vol = result.labels
    out = []
    for z in np.nonzero(masks[k].any(axis=(1, 2)))[0]:
        ref = _item(ReferencedSOPClassUID=srcs[z].SOPClassUID,
                    ReferencedSOPInstanceUID=srcs[z].SOPInstanceUID)
        for c in contours(masks[k][z]):
            ijk = np.c_[c[:, 1], c[:, 0], np.full(len(c), float(z))]  # (x=col, y=row, z)
            pts = vol.index_to_world(ijk)
            out.append(_item(ContourImageSequence=[ref], ContourGeometricType="CLOSED_PLANAR",
                             NumberOfContourPoints=len(pts),
                             ContourData=[f"{v:.4f}" for v in pts.ravel()]))
    return out


def write_rtstruct(result: Result, path: Path, masks: np.ndarray | None = None) -> None:
    """An RTSTRUCT of the result referencing the query's DICOM instances (see the module
    docstring); ``masks`` (N, z, y, x) keep overlaps, else the labelmap's structures."""
    query_files(result)  # a DICOM query, else a clear error
    srcs = sources(result)
    labels = result.labels.array
    if masks is None:
        masks = np.stack([labels == e.output_value for e in result.plan])
    ds = _header(srcs[0], datetime.datetime.now())
    _references(ds, srcs)
    frame = srcs[0].FrameOfReferenceUID
    rois, conts, obs = [], [], []
    for k, e in enumerate(result.plan):
        n = k + 1
        rois.append(_item(ROINumber=n, ReferencedFrameOfReferenceUID=frame, ROIName=e.name[:64],
                          ROIGenerationAlgorithm="AUTOMATIC",
                          ROIGenerationDescription=f"medseg {__version__}"))
        conts.append(_item(ReferencedROINumber=n, ROIDisplayColor=list(e.color),
                           ContourSequence=_roi_contours(result, masks, srcs, k)))
        term = terminology.of(e.terminology, e.name)
        kind = "GTV" if term.category == terminology.ABNORMAL else "ORGAN"
        obs.append(_item(ObservationNumber=n, ReferencedROINumber=n, RTROIInterpretedType=kind,
                         ROIInterpreter="", RTROIIdentificationCodeSequence=[_item(
                             CodeValue=term.type.value, CodingSchemeDesignator=term.type.scheme,
                             CodeMeaning=term.type.meaning[:64])]))
    ds.StructureSetROISequence, ds.ROIContourSequence = rois, conts
    ds.RTROIObservationsSequence = obs
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
