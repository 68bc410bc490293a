"""DICOM beyond image series: DICOM-SEG and RTSTRUCT support labels, DICOM-SEG output.

* A DICOM-SEG support label (one file, or a folder holding one) becomes one layer per
  segment on the support image's grid; names, colours and coded types are kept.
* An RTSTRUCT support label: each ROI's closed planar contours are filled on the image
  slices they lie on (even-odd rule, pixel centres), giving one layer per ROI.
* DICOM-SEG output (highdicom) for a query read from a DICOM series: a binary
  segmentation referencing the query's own instances, one segment per structure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError, OutputError
from .io import Volume
from .labels import SegmentInfo

if TYPE_CHECKING:
    from .result import Result
    from .segmentations import SupportLabel

SCT_TYPES = {  # SNOMED CT codes of common structures (DICOM CID 7166 / 4031)
    "liver": ("10200004", "Liver"), "spleen": ("78961009", "Spleen"),
    "kidney": ("64033007", "Kidney"), "right kidney": ("9846003", "Right kidney"),
    "left kidney": ("18639004", "Left kidney"), "pancreas": ("15776009", "Pancreas"),
    "stomach": ("69695003", "Stomach"), "aorta": ("15825003", "Aorta"),
    "heart": ("80891009", "Heart"), "lung": ("39607008", "Lung"), "brain": ("12738006", "Brain"),
    "tumour": ("108369006", "Neoplasm"), "tumor": ("108369006", "Neoplasm"),
}


def _read(path: Path, stop: bool = True):
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=stop)
    except Exception:
        return None


def dicom_kind(path: Path) -> str | None:
    """``"SEG"``, ``"RTSTRUCT"`` (a file, or a folder holding exactly one), else None."""
    files = [path] if path.is_file() else [f for f in sorted(path.iterdir()) if f.is_file()][:50] \
        if path.is_dir() else []
    kinds = {}
    for f in files:
        ds = _read(f)
        if ds is not None and getattr(ds, "Modality", None) in ("SEG", "RTSTRUCT"):
            kinds[f] = ds.Modality
    if len(kinds) == 1 and (path.is_file() or len(files) == len(kinds)):
        return next(iter(kinds.values()))
    return None


def _single_file(path: Path) -> Path:
    return path if path.is_file() else next(f for f in sorted(path.iterdir()) if f.is_file())


def read_label(path: Path, kind: str, image: Volume, name: str) -> SupportLabel:
    """A DICOM-SEG or RTSTRUCT as a support label on ``image``'s grid."""
    f = _single_file(path)
    return _read_seg(f, image, name) if kind == "SEG" else _read_rtstruct(f, image, name)


def _read_seg(path: Path, image: Volume, name: str) -> SupportLabel:
    """Each segment's frames are placed by their position into the image grid."""
    from .segmentations import SupportLabel

    ds = _read(path, stop=False)
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise InputError(f"{name} {path}: cannot decode the DICOM-SEG pixel data ({exc})") from exc
    pixels = pixels.reshape(-1, *pixels.shape[-2:])
    layers, segments, where = [], {}, {}
    for desc in ds.SegmentSequence:
        n = int(desc.SegmentNumber)
        layers.append(np.zeros(image.shape, np.uint8))
        label = str(getattr(desc, "SegmentLabel", f"segment {n}"))
        segments[n] = SegmentInfo(n, label, _seg_colour(desc), None, f"Segment_{n}")
        where[n] = (len(layers) - 1, 1)
    index_of = {n: where[n][0] for n in where}
    shared = ds.SharedFunctionalGroupsSequence[0]
    for fi, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ident = frame if "SegmentIdentificationSequence" in frame else shared
        seg_n = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        plane = frame if "PlanePositionSequence" in frame else shared
        pos = [float(v) for v in plane.PlanePositionSequence[0].ImagePositionPatient]
        k = _slice_of(image, pos, path, name)
        if seg_n in index_of and 0 <= k < image.shape[0]:
            layers[index_of[seg_n]][k] |= (pixels[fi] > 0).astype(np.uint8)
    _check_in_plane(ds, image, path, name)
    return _nonempty(SupportLabel(layers, segments, where, str(path), "dicom-seg", []), path, name)


def _seg_colour(desc) -> tuple[int, int, int] | None:
    lab = getattr(desc, "RecommendedDisplayCIELabValue", None)
    if lab is None:
        return None
    from highdicom.color import CIELabColor

    try:
        rgb = CIELabColor.from_dicom_value([int(v) for v in lab]).to_rgb()
        return tuple(int(c) for c in rgb)  # type: ignore[return-value]
    except Exception:  # an unusual value: fall back to a generated colour
        return None


def _slice_of(image: Volume, pos: list[float], path: Path, name: str) -> int:
    """Array z index of the image slice a frame at ``pos`` (LPS mm) lies on."""
    idx = np.linalg.solve(image.direction * np.asarray(image.spacing), np.asarray(pos) -
                          np.asarray(image.origin))
    if not np.allclose(idx[:2], np.round(idx[:2]), atol=1e-2) or \
            not np.isclose(idx[2], round(idx[2]), atol=1e-2):
        raise InputError(f"{name} {path}: its frames do not lie on the support image's slices "
                         "(a segmentation of another series?)")
    return int(round(idx[2]))


def _check_in_plane(ds, image: Volume, path: Path, name: str) -> None:
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    sp = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    ok = (np.allclose(iop[:3], image.direction[:, 0], atol=1e-3)
          and np.allclose(iop[3:], image.direction[:, 1], atol=1e-3)
          and np.allclose(sp[::-1], image.spacing[:2], rtol=1e-4)
          and (int(ds.Rows), int(ds.Columns)) == image.shape[1:])
    if not ok:
        raise InputError(f"{name} {path}: the DICOM-SEG grid is not the support image's grid "
                         "(orientation, pixel spacing or size differ)")


def _read_rtstruct(path: Path, image: Volume, name: str) -> SupportLabel:
    """Fill each ROI's closed planar contours on the slices they lie on."""
    from .segmentations import SupportLabel

    ds = _read(path, stop=False)
    names = {int(r.ROINumber): str(r.ROIName) for r in getattr(ds, "StructureSetROISequence", [])}
    layers, segments, where = [], {}, {}
    for roi in getattr(ds, "ROIContourSequence", []):
        n = int(roi.ReferencedROINumber)
        mask = np.zeros(image.shape, bool)
        for c in getattr(roi, "ContourSequence", []):
            if str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue
            pts = np.asarray(c.ContourData, float).reshape(-1, 3)
            _fill_contour(mask, image, pts, path, name)
        colour = getattr(roi, "ROIDisplayColor", None)
        layers.append(mask.astype(np.uint8))
        segments[n] = SegmentInfo(n, names.get(n, f"ROI {n}"),
                                  tuple(int(v) for v in colour) if colour else None, None,
                                  f"ROI_{n}")
        where[n] = (len(layers) - 1, 1)
    return _nonempty(SupportLabel(layers, segments, where, str(path), "rtstruct", []), path, name)


def _fill_contour(mask: np.ndarray, image: Volume, pts: np.ndarray, path: Path, name: str) -> None:
    from matplotlib.path import Path as Polygon

    m = image.direction * np.asarray(image.spacing)
    idx = np.linalg.solve(m, (pts - np.asarray(image.origin)).T).T  # (x, y, z) continuous
    k = np.round(idx[:, 2])
    if np.ptp(idx[:, 2]) > 0.1 or not (0 <= k[0] < image.shape[0]):
        return  # not on one image slice, or outside the image
    ny, nx = image.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    inside = Polygon(idx[:, :2]).contains_points(np.c_[xx.ravel(), yy.ravel()])
    mask[int(k[0])] ^= inside.reshape(ny, nx)  # even-odd: inner contours cut holes


def _nonempty(label: SupportLabel, path: Path, name: str) -> SupportLabel:
    for v in [v for v in label.segments if not label.mask(v).any()]:
        label.segments.pop(v)
    if not label.segments:
        raise InputError(f"{name} {path}: no segment covers any voxel of the support image")
    return label


# --- DICOM-SEG output -------------------------------------------------------------------------


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
    ds = _read(first)
    missing = [u for u in REQUIRED_UIDS if not str(getattr(ds, u, "") or "").strip()]
    if missing:
        raise OutputError(f"format dicom-seg: the query series lacks {', '.join(missing)} "
                          "(anonymised without UIDs?), which a DICOM-SEG must reference; use "
                          "nifti or seg.nrrd", option="format")


def _source(path: str):
    """A source instance for highdicom; an empty SOPClassUID is taken from the file meta."""
    import pydicom

    ds = pydicom.dcmread(path)
    if not str(getattr(ds, "SOPClassUID", "") or "").strip():
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    return ds


def write_dicom_seg(result: Result, path: Path, masks: np.ndarray | None = None) -> None:
    """A binary DICOM-SEG of the result, referencing the query's DICOM instances; with
    per-structure ``masks`` (N, z, y, x, from :meth:`Result.structure_masks`) segments may
    overlap, else they come from the labelmap."""
    import highdicom as hd
    from highdicom.sr.coding import CodedConcept
    from pydicom.sr.codedict import codes

    from ._version import __version__

    sources = [_source(f) for f in query_files(result)]
    labels = result.labels.array  # (z, y, x): z follows the series' file order
    if masks is None:
        masks = np.stack([labels == e.output_value for e in result.plan])
    masks = np.moveaxis(masks, 0, -1).astype(np.uint8)  # (z, y, x, segment)
    algo = hd.AlgorithmIdentificationSequence(
        name="medseg", version=__version__, family=codes.cid7162.ArtificialIntelligence)
    descs = []
    for i, e in enumerate(result.plan):
        code, meaning = SCT_TYPES.get(e.name.casefold().replace("_", " "),
                                      ("85756007", "Tissue"))
        descs.append(hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=e.name[:64],
            segmented_property_category=CodedConcept("123037004", "SCT", "Anatomical Structure"),
            segmented_property_type=CodedConcept(code, "SCT", meaning),
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


def is_dicom(path: str | os.PathLike) -> bool:
    """A DICOM file (``DICM`` preamble), or a folder holding one."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file())[:5] \
        if p.is_dir() else []
    for f in files:
        with open(f, "rb") as fh:
            if fh.read(132)[128:] == b"DICM":
                return True
    return False


def series_files_of(path: str | os.PathLike) -> tuple[Path, str] | None:
    """For one file of a DICOM image series: (its folder, its SeriesInstanceUID)."""
    p = Path(path)
    ds = _read(p) if p.is_file() else None
    uid = getattr(ds, "SeriesInstanceUID", None) if ds is not None else None
    if uid is None or getattr(ds, "Modality", None) in ("SEG", "RTSTRUCT"):
        return None
    return p.parent, str(uid)
