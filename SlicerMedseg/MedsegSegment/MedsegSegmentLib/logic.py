"""medseg from 3D Slicer: everything the module does except its widgets.

The logic works on MRML nodes and files and needs only Slicer's core (MRML and the
Segmentations logic, the ``slicer-core`` wheel outside the application), VTK and numpy --
so it runs in Slicer, in ``PythonSlicer`` and under pytest alike. medseg itself runs in a
separate process (the interpreter given as ``python``, where medseg is installed): the
inputs are written with Slicer's own storage nodes, ``medseg segment`` runs in the
background with progress and cancel, and its ``.seg.nrrd`` is read back with Slicer's
storage node, with medseg's per-segment slice record (``medseg.*`` segment tags) and a
table of volumes.

Correct and rerun: edit slices of a result in the Segment Editor and run again with that
segmentation as the label and no query (the same scan): the edited slices are kept as the
user left them and the rest is re-estimated.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

STAGES = ("load", "frames", "complete", "locate", "support", "match", "propagate",
          "postprocess", "write")  # the stages medseg reports with -v, in order
RECORD_TAGS = ("medseg.axis", "medseg.frames", "medseg.drawn", "medseg.estimated")


@dataclass
class RunSpec:
    """What to run: the structures (segment names; empty: all), the method and its model.

    ``extra``: more ``medseg segment`` options, e.g. ``["--window", "lung"]``.
    """

    structures: list[str] = field(default_factory=list)
    method: str = "sam2"
    device: str = "auto"
    model: str = "tiny"
    checkpoint: str = ""
    extra: list[str] = field(default_factory=list)

    def options(self) -> list[str]:
        opts = ["--method", self.method, "--device", self.device, "--model", self.model]
        if self.structures:
            opts += ["--labels", ",".join(self.structures)]
        if self.checkpoint:
            opts += ["--checkpoint", self.checkpoint]
        return opts + list(self.extra)


class MedsegJob:
    """One ``medseg segment`` run in a background process.

    ``poll()`` says where it is (``running``, ``done``, ``failed``, ``cancelled``), the
    fraction of its stages done and its last message; ``cancel()`` ends it (medseg leaves
    no partial output); ``wait()`` blocks until it ends.
    """

    def __init__(self, command: list[str], folder: Path, result: Path,
                 env: dict | None = None):
        self.command, self.folder, self.result = command, folder, result
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._cancelled = False
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env)
        self._readers = [threading.Thread(target=self._read, args=(s,), daemon=True)
                         for s in (self.process.stdout, self.process.stderr)]
        for r in self._readers:
            r.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def state(self) -> str:
        code = self.process.poll()
        if code is None:
            return "running"
        if self._cancelled:
            return "cancelled"
        return "done" if code == 0 else "failed"

    def poll(self) -> tuple[str, float, str]:
        """(state, fraction of stages done, last message)."""
        with self._lock:
            lines = list(self.lines)
        done = [ln.split("stage ", 1)[1].split(":", 1)[0] for ln in lines
                if ln.startswith("medseg: stage ")]
        frac = max((STAGES.index(s) + 1 for s in done if s in STAGES), default=0) / len(STAGES)
        errors = [ln for ln in lines if ln.startswith("medseg: error") or
                  ln.startswith("medseg: internal error")]
        message = errors[-1] if errors else (lines[-1] if lines else "starting medseg")
        state = self.state
        return state, 1.0 if state == "done" else frac, message

    def cancel(self) -> None:
        """End the run (SIGTERM: medseg stops and keeps no partial output)."""
        if self.process.poll() is None:
            self._cancelled = True
            self.process.terminate()

    def wait(self, timeout: float | None = None) -> str:
        self.process.wait(timeout)
        for r in self._readers:
            r.join(5)
        return self.state


class SegmentLogic:
    """Paint one slice, segment the rest of the scan or other scans, correct, rerun.

    Args:
        scene: the MRML scene (``slicer.mrmlScene`` in the application).
        python: an interpreter where medseg is installed (in Slicer: ``PythonSlicer``).
        env: its environment (in Slicer: ``slicer.util.startupEnvironment()``).
    """

    def __init__(self, scene, python: str | None = None, env: dict | None = None):
        self.scene = scene
        self.python = python or sys.executable
        self.env = env
        register_segmentation_rules()

    # -- inputs ------------------------------------------------------------------------------
    def write_volume(self, volume, path: Path) -> Path:
        """A volume node written by Slicer's own storage node (NRRD, geometry exact)."""
        storage = self.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        try:
            storage.SetFileName(str(path))
            storage.SetUseCompression(1)
            if not storage.WriteData(volume):
                raise RuntimeError(f"Slicer could not write {volume.GetName()} to {path}")
        finally:
            self.scene.RemoveNode(storage)
        return path

    def write_segmentation(self, segmentation, path: Path) -> Path:
        """A segmentation node as the ``.seg.nrrd`` Slicer writes (its segment tags, and so
        medseg's slice record, included)."""
        storage = self.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        try:
            storage.SetFileName(str(path))
            if not storage.WriteData(segmentation):
                raise RuntimeError(f"Slicer could not write {segmentation.GetName()} to {path}")
        finally:
            self.scene.RemoveNode(storage)
        return path

    def command(self, support: Path, label: Path, query: Path | None, out: Path,
                spec: RunSpec) -> list[str]:
        """The ``medseg segment`` command of a run (``query`` None: the support scan)."""
        cmd = [self.python, "-m", "medseg.cli", "-v", "segment", "-s", str(support), "-l",
               str(label), "-o", str(out), "--format", "seg.nrrd", "--statistics",
               "--overwrite"]
        if query is not None:
            cmd += ["-i", str(query)]
        return cmd + spec.options()

    # -- running -----------------------------------------------------------------------------
    def start(self, support_volume, segmentation, query_volume=None, spec: RunSpec | None = None,
              folder: str | os.PathLike | None = None) -> MedsegJob:
        """Write the inputs and start medseg in the background.

        Args:
            support_volume: the scan with the painted slice(s).
            segmentation: its segmentation node (one painted slice is enough; a corrected
                medseg result keeps the slices the user changed).
            query_volume: another scan to segment; None or the support itself: the rest of
                the support scan.
            spec: structures, method and model.
            folder: where inputs and outputs go (default: a new temporary folder).

        Returns:
            The running :class:`MedsegJob`.
        """
        spec = spec or RunSpec()
        work = Path(folder or tempfile.mkdtemp(prefix="medseg-slicer-"))
        work.mkdir(parents=True, exist_ok=True)
        same = query_volume is None or query_volume.GetID() == support_volume.GetID()
        support = self.write_volume(support_volume, work / "support.nrrd")
        label = self.write_segmentation(segmentation, work / "support_label.seg.nrrd")
        query = None if same else self.write_volume(query_volume, work / "query.nrrd")
        out = work / "out"
        result = out / f"{'support' if same else 'query'}.seg.nrrd"
        return MedsegJob(self.command(support, label, query, out, spec), work, result, self.env)

    def load_result(self, job: MedsegJob, reference_volume, name: str | None = None):
        """The finished job's segmentation (names, colours, terminology, slice record) as a
        new node on ``reference_volume``'s geometry, and its statistics as a table node."""
        if job.state != "done":
            raise RuntimeError(f"medseg did not finish ({job.poll()[2]})")
        seg = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                           name or f"{reference_volume.GetName()} medseg")
        storage = self.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        storage.SetFileName(str(job.result))
        if not storage.ReadData(seg):
            raise RuntimeError(f"Slicer could not read {job.result}")
        seg.SetAndObserveStorageNodeID(storage.GetID())
        seg.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        seg.CreateDefaultDisplayNodes()
        stats = next(job.result.parent.glob("*_statistics.csv"), None)
        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{seg.GetName()} volumes")
        if stats is not None:
            tstore = self.scene.AddNewNodeByClass("vtkMRMLTableStorageNode")
            tstore.SetFileName(str(stats))
            tstore.ReadData(table)
            self.scene.RemoveNode(tstore)
        return seg, table

    def run(self, support_volume, segmentation, query_volume=None, spec: RunSpec | None = None,
            folder: str | os.PathLike | None = None, timeout: float | None = None):
        """:meth:`start`, wait, :meth:`load_result` (for scripts and tests)."""
        job = self.start(support_volume, segmentation, query_volume, spec, folder)
        job.wait(timeout)
        reference = query_volume or support_volume
        return self.load_result(job, reference)


# -- helpers --------------------------------------------------------------------------------------


def register_segmentation_rules() -> None:
    """The representation converters the Segmentations module registers in the application,
    registered here when missing (outside the application: needed to create segments)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.ConstructRepresentationObjectByRepresentation("Binary labelmap") is None:
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def install_commands(source: str) -> list[tuple[list[str], dict[str, str]]]:
    """The ``pip install`` steps (arguments, environment) that put medseg in Slicer's Python,
    in the order of the project's set-up script: PyTorch first (Slicer's PyTorch extension,
    not here), then sam2's runtime needs, sam2 itself without its dependencies (which would
    pull a CUDA build of torchvision it never uses) and without building its CUDA extension,
    then medseg from ``source`` (a wheel, a URL or the project's folder)."""
    return [(["hydra-core>=1.3.2", "iopath>=0.1.10", "pillow", "tqdm>=4.66"], {}),
            (["--no-deps", "--no-build-isolation", "sam2==1.1.0"], {"SAM2_BUILD_CUDA": "0"}),
            ([source], {})]


def geometry_image(volume):
    """An empty oriented image with ``volume``'s grid (dimensions, spacing, directions)."""
    img = slicer.vtkOrientedImageData()
    img.SetDimensions(volume.GetImageData().GetDimensions())
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    img.SetImageToWorldMatrix(m)
    return img


def segment_array(segmentation, segment_id: str, volume) -> np.ndarray:
    """A segment's voxels on ``volume``'s grid, (k, j, i) as numpy sees the volume."""
    labelmap = slicer.vtkOrientedImageData()
    segmentation.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    out = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, geometry_image(volume), out, False, True)
    dims = out.GetDimensions()
    return numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(dims[::-1]) > 0


def _oriented(mask: np.ndarray, volume):
    img = slicer.vtkOrientedImageData()
    img.SetDimensions(mask.shape[::-1])
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())[:] = \
        mask.astype(np.uint8).ravel()
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    img.SetImageToWorldMatrix(m)
    return img


def paint(segmentation, name: str, mask: np.ndarray, volume, color=None) -> str:
    """A new segment from a (k, j, i) mask on ``volume``'s grid (what a user paints);
    returns its id."""
    seg = segmentation.GetSegmentation()
    sid = seg.AddEmptySegment("", name, color) if color is not None else \
        seg.AddEmptySegment("", name)
    segment = seg.GetSegment(sid)
    segment.AddRepresentation("Binary labelmap", _oriented(mask, volume))
    segment.SetLabelValue(1)  # its own layer, painted with 1
    return sid


def repaint(segmentation, segment_id: str, mask: np.ndarray, volume) -> None:
    """A segment's voxels replaced by a (k, j, i) mask, its name, colour and tags kept (as
    the Segment Editor changes a segment)."""
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    segment.AddRepresentation("Binary labelmap", _oriented(mask, volume))
    segment.SetLabelValue(1)  # its own layer now, painted with 1
    segmentation.Modified()


def slice_record(segmentation, segment_id: str) -> dict[str, str]:
    """medseg's record of a segment: its ``medseg.axis``, ``medseg.frames``,
    ``medseg.drawn`` (frames the user drew) and ``medseg.estimated`` (a fingerprint per
    estimated frame) tags; empty for a segment medseg did not make."""
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    out = {}
    for key in RECORD_TAGS:
        value = vtk.reference("")
        if segment.GetTag(key, value):
            out[key] = str(value)
    return out
