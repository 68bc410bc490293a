"""3D Slicer module: paint one slice of a structure, let medseg segment it through the scan
(or other scans), correct slices in the Segment Editor, run again.

The module class, its widget and its self-test live here; the logic (nodes, files, the
background medseg process) is :mod:`MedsegSegmentLib.logic`, which needs only Slicer's core
and is tested outside the application too.
"""

import os
import shutil
import sys
from pathlib import Path

import qt
import slicer
from MedsegSegmentLib import RunSpec, SegmentLogic, install_commands, paint, segment_array
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

POLL_MS = 250  # how often the widget looks at a running medseg process


class MedsegSegment(ScriptedLoadableModule):
    """The module's description for Slicer's module list."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "medseg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["medseg"]
        self.parent.helpText = (
            "Paint one slice of a structure (Segment Editor), pick the scan and its "
            "segmentation, press Segment: medseg segments the structure through the rest of "
            "the scan, or through another scan, with SAM2 (or weight-free). Correct any slice "
            "of the result and press Segment again with the result as the segmentation: the "
            "corrected slices are kept and the rest re-estimated.")
        self.parent.acknowledgementText = (
            "medseg implements Zu et al. 2025, 'Rethinking Few-Shot Medical Image "
            "Segmentation by SAM2' (arXiv 2503.04826), on Meta's SAM2.")


class MedsegSegmentLogic(ScriptedLoadableModuleLogic, SegmentLogic):
    """The module's logic on the application's scene, medseg run by ``PythonSlicer``."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        python = shutil.which("PythonSlicer") or os.path.join(
            slicer.app.slicerHome, "bin", "PythonSlicer")
        SegmentLogic.__init__(self, slicer.mrmlScene, python if os.path.exists(python)
                              else sys.executable, slicer.util.startupEnvironment())


class MedsegSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Inputs, settings, Segment / Cancel, progress; the result loaded beside the query."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.job = None
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        ui = slicer.util.loadUI(self.resourcePath("UI/MedsegSegment.ui"))
        self.layout.addWidget(ui)
        self.ui = slicer.util.childWidgetVariables(ui)
        ui.setMRMLScene(slicer.mrmlScene)
        self.logic = MedsegSegmentLogic()
        self.ui.sourceEdit.text = str(Path(self.resourcePath("")).parents[2])
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.installButton.connect("clicked(bool)", self.onInstall)
        for selector in (self.ui.supportSelector, self.ui.segmentationSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.updateButtons()

    def cleanup(self):
        self.timer.stop()
        if self.job is not None:
            self.job.cancel()
        self.removeObservers()

    def updateButtons(self, *_):
        running = self.job is not None and self.job.state == "running"
        ready = self.ui.supportSelector.currentNode() and self.ui.segmentationSelector.currentNode()
        self.ui.segmentButton.enabled = bool(ready) and not running
        self.ui.cancelButton.enabled = running

    def spec(self) -> RunSpec:
        names = [n.strip() for n in self.ui.structuresEdit.text.split(",") if n.strip()]
        extra = self.ui.extraEdit.text.split() if self.ui.extraEdit.text.strip() else []
        return RunSpec(names, self.ui.methodCombo.currentText, self.ui.deviceCombo.currentText,
                       self.ui.modelCombo.currentText, self.ui.checkpointEdit.text.strip(),
                       extra)

    def onSegment(self):
        try:
            self.job = self.logic.start(self.ui.supportSelector.currentNode(),
                                        self.ui.segmentationSelector.currentNode(),
                                        self.ui.querySelector.currentNode(), self.spec())
        except Exception as exc:  # writing the inputs failed: say it, keep the GUI alive
            slicer.util.errorDisplay(f"medseg could not start: {exc}")
            return
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "medseg is running"
        self.timer.start()
        self.updateButtons()

    def onPoll(self):
        state, fraction, message = self.job.poll()
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = message
        if state == "running":
            return
        self.timer.stop()
        if state == "done":
            query = self.ui.querySelector.currentNode() or self.ui.supportSelector.currentNode()
            seg, table = self.logic.load_result(self.job, query)
            self.ui.statusLabel.text = f"loaded {seg.GetName()} (volumes: {table.GetName()})"
        elif state == "failed":
            slicer.util.errorDisplay(f"medseg failed: {message}")
        self.updateButtons()

    def onCancel(self):
        if self.job is not None:
            self.job.cancel()
            self.ui.statusLabel.text = "cancelled; no partial result was kept"

    def onInstall(self):
        with slicer.util.tryWithErrorDisplay("Installing medseg failed", waitCursor=True):
            for args, env in install_commands(self.ui.sourceEdit.text.strip()):
                os.environ.update(env)
                slicer.util.pip_install(args)
            self.ui.statusLabel.text = "medseg installed"


class MedsegSegmentTest(ScriptedLoadableModuleTest):
    """Self-test: one painted slice of the sample chest CT's right lung, segmented through
    the scan by the weight-free method; one slice corrected, run again."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_paint_segment_correct_rerun()

    def test_paint_segment_correct_rerun(self):
        import numpy as np
        import SampleData

        volume = SampleData.downloadSample("CTChest")
        logic = MedsegSegmentLogic()
        painted = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "painted")
        painted.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        image = slicer.util.arrayFromVolume(volume)
        mask = np.zeros(image.shape, bool)
        k, (h, w) = image.shape[0] // 2, image.shape[1:]
        mask[k, h // 4 : 3 * h // 4, w // 8 : 7 * w // 8] = True
        mask &= image < -400  # air inside the chest on one slice: the lungs
        paint(painted, "lungs", mask, volume)
        seg, table = logic.run(volume, painted, None, RunSpec(method="transfer"))
        sid = seg.GetSegmentation().GetNthSegmentID(0)
        got = segment_array(seg, sid, volume)
        self.assertTrue((got[k] == mask[k]).all())  # the painted slice as painted
        self.assertGreater(got.any(axis=(1, 2)).sum(), 1)  # and beyond it
        self.assertGreater(table.GetNumberOfRows(), 0)
        # correct one estimated slice (erase it) and run again on the result: the
        # correction is kept exactly, the painted slice too
        fixed = got.copy()
        j = int(np.flatnonzero(got.any(axis=(1, 2)) & (np.arange(len(got)) != k))[0])
        fixed[j] = False
        slicer.util.updateSegmentBinaryLabelmapFromArray(fixed.astype(np.uint8), seg, sid,
                                                         volume)
        again, _ = logic.run(volume, seg, None, RunSpec(method="transfer"))
        out = segment_array(again, again.GetSegmentation().GetNthSegmentID(0), volume)
        self.assertFalse(out[j].any())
        self.assertTrue((out[k] == mask[k]).all())
