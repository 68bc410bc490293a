"""The result of segmenting one query, and how it is saved."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import export
from .frames import FrameStack
from .io import Volume
from .labels import LabelPlan
from .report import Report
from .support import SupportGroup

DEFAULT_FORMATS = ("nifti", "seg.nrrd")


@dataclass
class Result:
    """A segmentation of one query volume."""

    labels: Volume  # labelmap on the query's grid: 0 background, 1..N (see ``plan``)
    plan: LabelPlan
    report: Report
    query_frames: FrameStack
    label_frames: np.ndarray  # (n, rows, cols) in frames layout
    groups: list[SupportGroup]
    matches: dict[int, np.ndarray] = field(default_factory=dict)  # group -> member per frame
    object_scores: np.ndarray | None = None  # (n, N) SAM2 object-score logits
    query_source: dict = field(default_factory=dict)  # e.g. the DICOM files of the query
    structure_frames: np.ndarray | None = None  # (N, n, rows, cols) bool with overlap="keep"

    def structure_masks(self) -> np.ndarray | None:
        """(N, z, y, x) bool per structure on the query's grid, overlaps kept (only with
        ``overlap="keep"``; else None and :attr:`labels` says it all)."""
        if self.structure_frames is None:
            return None
        return np.stack([np.ascontiguousarray(self.query_frames.to_volume_array(m))
                         for m in self.structure_frames])

    def mask(self, name_or_value: str | int) -> np.ndarray:
        """Boolean mask (query array layout) of one structure, by name or output value."""
        for i, e in enumerate(self.plan):
            if name_or_value in (e.name, e.output_value):
                if self.structure_frames is not None:  # overlaps kept: the structure's own
                    return self.query_frames.to_volume_array(self.structure_frames[i])
                return self.labels.array == e.output_value
        raise KeyError(name_or_value)

    def output_paths(self, out_dir: str | os.PathLike, formats: Sequence[str] = DEFAULT_FORMATS,
                     stem: str | None = None, report: str | os.PathLike | None = None,
                     qc: str | os.PathLike | None = None) -> dict[str, Path]:
        stem = stem or export.query_stem(self.labels.path)
        return export.output_paths(out_dir, stem, formats, report, qc)

    def save(self, out_dir: str | os.PathLike, formats: Sequence[str] = DEFAULT_FORMATS, *,
             overwrite: bool = False, stem: str | None = None,
             report: str | os.PathLike | None = None,
             qc: str | os.PathLike | None = None,
             protect: Sequence[str | os.PathLike] = ()) -> dict[str, Path]:
        """Write the chosen files all-or-nothing; refuses to overwrite unless asked, and never
        replaces an input (this result's own, and ``protect``: e.g. every input of a cohort)."""
        export.prepare_output_dir(out_dir)
        paths = self.output_paths(out_dir, formats, stem, report, qc)
        for p in paths.values():
            export.prepare_output_dir(p.parent)
        inputs = [v["path"] for v in self.report.inputs.values() if v.get("path")]
        protected = export.input_files([*inputs, *protect])
        export.check_outputs(list(paths.values()), overwrite=overwrite, inputs=list(protected))
        t0 = time.perf_counter()
        ref, plan = self.labels, self.plan
        masks = self.structure_masks() if {"seg.nrrd", "dicom-seg"} & paths.keys() else None
        with export.OutputTransaction(overwrite, protected) as tx:
            if "nifti" in paths:
                tx.add(paths["nifti"], lambda p: export.nifti_labelmap(ref.array, ref, p,
                                                                      plan.dtype))
                tx.add(paths["ctbl"], lambda p: export.color_table(plan, p))
            if "itk-snap" in paths:
                tx.add(paths["itk-snap"], lambda p: export.itksnap_labels(plan, p))
            if "seg.nrrd" in paths:
                tx.add(paths["seg.nrrd"], lambda p: export.seg_nrrd(ref.array, ref, plan, p,
                                                                    masks))
            if "dicom-seg" in paths:
                from .dicom import write_dicom_seg

                tx.add(paths["dicom-seg"], lambda p: write_dicom_seg(self, p, masks))
            if "qc" in paths:
                from .qc import qc_figure

                tx.add(paths["qc"], lambda p: qc_figure(self, p, fmt=paths["qc"].suffix[1:].lower()))
            self.report.timings_s["write"] = round(time.perf_counter() - t0, 4)
            self.report.outputs = {k: str(v) for k, v in paths.items()}
            tx.add(paths["report"], lambda p: export.json_file(p, self.report.to_dict()))
        return paths
