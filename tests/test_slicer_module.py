"""The 3D Slicer module and medseg's files, checked with Slicer's own core (``slicer-core``):
the module's logic on MRML nodes (a volume, a segmentation with one painted slice) against
the command line's output; correct and rerun; cancel; every ``.seg.nrrd`` form medseg
writes read by Slicer's storage node, and what Slicer writes read by medseg. The widget
needs the Slicer application: here its file byte-compiles."""

import py_compile
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import TRANSFER

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's core) not installed")
if not hasattr(slicer, "vtkMRMLSegmentationStorageNode"):
    pytest.skip("this 'slicer' is not Slicer's core", allow_module_level=True)

from medseg import data  # noqa: E402
from medseg.io import read_image  # noqa: E402

MODULE = Path(__file__).resolve().parents[1] / "SlicerMedseg" / "MedsegSegment"
sys.path.insert(0, str(MODULE))
from MedsegSegmentLib import (  # noqa: E402
    RunSpec,
    SegmentLogic,
    paint,
    repaint,
    segment_array,
    slice_record,
)


@pytest.fixture(scope="module")
def chest():
    root = data.fetch(("slicerio",), progress=False) / "slicerio/slicerio-1.4.0/slicerio/data"
    return root / "CTChest4.nrrd", root / "Segmentation.seg.nrrd"


def _scene_with(chest):
    """A scene with Slicer's sample chest CT and its reference segmentation, read by
    Slicer's storage nodes; and a logic on it."""
    scene = slicer.vtkMRMLScene()
    logic = SegmentLogic(scene)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CTChest4")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(chest[0]))
    assert storage.ReadData(volume)
    ref = _read_seg(scene, chest[1])
    return scene, logic, volume, ref


def _read_seg(scene, path):
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(seg), path
    return seg


def _segments(seg):
    s = seg.GetSegmentation()
    return {s.GetNthSegment(i).GetName(): s.GetNthSegmentID(i)
            for i in range(s.GetNumberOfSegments())}


def _painted(scene, volume, ref, names, reference=True):
    """What a user paints: each structure on its largest slice only (``reference``: the
    node knows its volume's geometry, as in the Segment Editor; else Slicer writes it
    cropped to the painted extent)."""
    painted = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "painted")
    if reference:
        painted.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    masks = {}
    for name in names:
        full = segment_array(ref, _segments(ref)[name], volume)
        k = int(np.argmax(full.sum(axis=(1, 2))))
        one = np.zeros_like(full)
        one[k] = full[k]
        paint(painted, name, one, volume)
        masks[name] = (k, one[k], full)
    return painted, masks


def test_module_files_compile_and_the_logic_imports():
    for f in [MODULE / "MedsegSegment.py", *sorted((MODULE / "MedsegSegmentLib").glob("*.py"))]:
        py_compile.compile(str(f), doraise=True)
    ui = (MODULE / "Resources" / "UI" / "MedsegSegment.ui").read_text()
    for widget in ("supportSelector", "segmentationSelector", "querySelector", "segmentButton",
                   "cancelButton", "progressBar", "installButton"):
        assert f'name="{widget}"' in ui, widget
    # every choice a combo box offers is one the command line takes
    from medseg import options

    tree = ET.fromstring(ui)
    allowed = {"methodCombo": options.METHODS, "modelCombo": options.MODELS,
               "deviceCombo": ("auto", "cpu", "cuda", "mps")}
    for name, vocab in allowed.items():
        box = tree.find(f".//widget[@name='{name}']")
        items = [s.text for s in box.findall("./item/property/string")]
        assert items and set(items) <= set(vocab), (name, items)
    cmake = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in cmake and "${MODULE_NAME}Lib/logic.py" in cmake


def test_logic_one_painted_slice_matches_the_command_line(tmp_path, chest):
    """A scene, Slicer's sample chest CT, the lungs painted on one slice each: the logic's
    segmentation node equals the command line's result on the same inputs voxel for voxel,
    with the names, the painted slices kept and medseg's slice record in the segment tags;
    the volumes table lists both lungs."""
    scene, logic, volume, ref = _scene_with(chest)
    painted, masks = _painted(scene, volume, ref, ["right lung", "left lung"])
    spec = RunSpec(method="transfer", extra=["--window", "lung", "--no-download"])
    seg, table = logic.run(volume, painted, None, spec, folder=tmp_path / "run", timeout=600)
    assert sorted(_segments(seg)) == ["left lung", "right lung"]
    # the command line on the files the logic wrote
    cli = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "medseg.cli", "segment", "-s",
                    tmp_path / "run/support.nrrd", "-l", tmp_path / "run/support_label.seg.nrrd",
                    "-o", cli, "--format", "seg.nrrd", *TRANSFER[:2], "--window", "lung",
                    "--no-download"], check=True, capture_output=True, timeout=600)
    cli_seg = _read_seg(scene, cli / "support.seg.nrrd")
    assert seg.GetSegmentation().GetNumberOfSegments() == 2
    dims = volume.GetImageData().GetDimensions()
    for name, (k, drawn, full) in masks.items():
        got = segment_array(seg, _segments(seg)[name], volume)
        assert got.shape == (dims[2], dims[1], dims[0])
        np.testing.assert_array_equal(got, segment_array(cli_seg, _segments(cli_seg)[name],
                                                         volume))
        np.testing.assert_array_equal(got[k], drawn)  # the painted slice as painted
        assert got.any(axis=(1, 2)).sum() > 5  # and the structure beyond it
        dice = 2 * (got & full).sum() / (got.sum() + full.sum())
        assert dice > 0.5, (name, dice)
        record = slice_record(seg, _segments(seg)[name])
        assert record["medseg.axis"] == "axial" and record["medseg.drawn"] == str(k)
    rows = {table.GetCellText(r, 0) for r in range(table.GetNumberOfRows())}
    assert rows == {"right lung", "left lung"}
    # the output lies on the volume's grid (read independently of Slicer)
    out = read_image(logic_result(tmp_path / "run"))
    img = read_image(chest[0])
    assert out.shape == img.shape and np.allclose(out.origin, img.origin)


def logic_result(folder: Path) -> Path:
    return folder / "out" / "support.seg.nrrd"


def test_correct_a_slice_and_rerun(tmp_path, chest):
    """The user erases an estimated slice of the result in the Segment Editor and runs
    again with the result as the segmentation: the erased slice stays empty, the painted
    one stays as painted, and the record says the user drew both."""
    scene, logic, volume, ref = _scene_with(chest)
    painted, masks = _painted(scene, volume, ref, ["right lung"])
    spec = RunSpec(method="transfer", extra=["--window", "lung", "--no-download"])
    seg, _ = logic.run(volume, painted, None, spec, folder=tmp_path / "first", timeout=600)
    sid = _segments(seg)["right lung"]
    got = segment_array(seg, sid, volume)
    k, drawn, _ = masks["right lung"]
    j = int(np.flatnonzero(got.any(axis=(1, 2)) & (np.arange(len(got)) != k))[0])
    corrected = got.copy()
    corrected[j] = False
    repaint(seg, sid, corrected, volume)  # as the Segment Editor leaves it: tags kept
    again, _ = logic.run(volume, seg, None, spec, folder=tmp_path / "second", timeout=600)
    out = segment_array(again, _segments(again)["right lung"], volume)
    assert not out[j].any()
    np.testing.assert_array_equal(out[k], drawn)
    from medseg.labels.record import _unranges

    record = slice_record(again, _segments(again)["right lung"])
    assert {j, k} <= set(_unranges(record["medseg.drawn"]))


def test_a_running_job_reports_progress_and_cancels(tmp_path, chest):
    scene, logic, volume, ref = _scene_with(chest)
    painted, _ = _painted(scene, volume, ref, ["right lung", "left lung"])
    slow = RunSpec(method="transfer", extra=["--window", "lung", "--no-download",
                                             "--bank-size", "64"])
    job = logic.start(volume, painted, None, slow, folder=tmp_path / "run")
    seen = []
    deadline = time.time() + 300
    while time.time() < deadline:
        state, fraction, message = job.poll()
        seen.append(fraction)
        if fraction > 0 or state != "running":
            break
        time.sleep(0.05)
    job.cancel()
    assert job.wait(60) == "cancelled"
    assert job.process.returncode == 143  # medseg's own exit on SIGTERM
    assert not job.result.exists()  # nothing partial
    assert 0 < max(seen) < 1
    assert job.poll()[0] == "cancelled"


@pytest.mark.parametrize("form", ["single", "layers", "empty-segment", "non-ascii"])
def test_slicer_reads_every_seg_nrrd_medseg_writes(tmp_path, form):
    """Every form medseg writes, read by Slicer's storage node: the segments, names,
    colours and voxels medseg meant."""
    from medseg.export.seg_nrrd import seg_nrrd
    from medseg.io import Volume
    from medseg.labels import LabelPlan, make_plan
    from medseg.labels.plan import SegmentInfo

    shape = (6, 20, 24)
    ref = Volume(np.zeros(shape, np.int16), (0.7, 0.8, 2.5), (10.0, -20.0, 30.0),
                 np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float))
    names = {"non-ascii": ["Lunge rechts", "Öffnung ñ 肝"]}.get(form, ["liver", "spleen"])
    plan: LabelPlan = make_plan({1: SegmentInfo(1, names[0]), 2: SegmentInfo(2, names[1])},
                                None, None, "test")
    labels = np.zeros(shape, np.uint8)
    labels[1:4, 3:10, 4:12] = 1
    masks = None
    if form != "empty-segment":
        labels[2:5, 12:18, 14:20] = 2
    if form == "layers":  # overlapping structures: Slicer's multi-layer form
        masks = np.stack([labels == 1, (labels == 2) | (labels == 1)])
    path = tmp_path / f"{form}.seg.nrrd"
    seg_nrrd(labels, ref, plan, path, masks)
    scene = slicer.vtkMRMLScene()
    SegmentLogic(scene)  # registers the representations outside the application
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    vstore = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    from medseg.io import write_image

    write_image(ref, tmp_path / "ref.nrrd")
    vstore.SetFileName(str(tmp_path / "ref.nrrd"))
    assert vstore.ReadData(volume)
    seg = _read_seg(scene, path)
    by_name = _segments(seg)
    assert list(by_name) == names
    want = masks if masks is not None else np.stack([labels == 1, labels == 2])
    for name, mask in zip(names, want):
        np.testing.assert_array_equal(segment_array(seg, by_name[name], volume), mask)
    if form == "layers":
        assert seg.GetSegmentation().GetNumberOfLayers() == 2


def test_medseg_reads_what_slicer_writes_cropped(tmp_path, chest):
    """Slicer's storage node writes a segmentation cropped to its painted extent; medseg
    reads it back onto the scan's grid voxel for voxel, with its names."""
    from medseg.labels import read_support_label

    scene, logic, volume, ref = _scene_with(chest)
    painted, masks = _painted(scene, volume, ref, ["right lung", "left lung"], reference=False)
    path = logic.write_segmentation(painted, tmp_path / "painted.seg.nrrd")
    head = path.read_bytes()[:4000].decode("latin-1")
    sizes = [int(v) for v in head.split("sizes: ")[1].split("\n")[0].split()]
    span = {k for k, _, _ in masks.values()}
    assert sizes[-1] == max(span) - min(span) + 1 < 34  # cropped to the painted slices
    image = read_image(chest[0])
    label = read_support_label(path, image)
    names = {info.name: v for v, info in label.segments.items()}
    assert set(names) == {"right lung", "left lung"}
    for name, (k, drawn, _) in masks.items():
        mask = label.mask(names[name])
        assert mask.shape == image.shape
        np.testing.assert_array_equal(mask[k], drawn)
        assert mask.sum() == drawn.sum()
