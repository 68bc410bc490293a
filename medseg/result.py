"""The result of segmenting one query, and how it is saved."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import export
from .export.transaction import recover
from .frames import FrameStack
from .io import Volume
from .labels import LabelPlan
from .labels.record import SliceRecord
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
    drawn_frames: np.ndarray | None = None  # (N, n) bool: frames holding the user's own mask

    def records(self) -> dict[int, SliceRecord]:
        """Per output value, the slice record of this result: frames drawn by the user and a
        fingerprint of every estimated one (so a corrected copy shows what changed)."""
        n = len(self.query_frames)
        out = {}
        for i, e in enumerate(self.plan):
            masks = self.structure_frames[i] if self.structure_frames is not None else \
                self.label_frames == e.output_value
            drawn = self.drawn_frames[i] if self.drawn_frames is not None else np.zeros(n, bool)
            out[e.output_value] = SliceRecord.of(masks, drawn, self.query_frames.axis)
        return out

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
                     qc: str | os.PathLike | None = None, statistics: bool = False
                     ) -> dict[str, Path]:
        """Where :meth:`save` would write each file (``{kind: path}``)."""
        stem = stem or export.query_stem(self.labels.path)
        return export.output_paths(out_dir, stem, formats, report, qc, statistics)

    def save(self, out_dir: str | os.PathLike, formats: Sequence[str] = DEFAULT_FORMATS, *,
             overwrite: bool = False, stem: str | None = None,
             report: str | os.PathLike | None = None,
             qc: str | os.PathLike | None = None,
             protect: Sequence[str | os.PathLike] = (), statistics: bool = False
             ) -> dict[str, Path]:
        """Write the chosen files all-or-nothing.

        Args:
            out_dir: the output folder (created if needed).
            formats: any of ``nifti``, ``seg.nrrd``, ``dicom-seg``, ``itk-snap``.
            overwrite: replace existing outputs (otherwise refused).
            stem: the file-name stem (default: the query's name).
            report, qc: the report's path (default beside the outputs); a QC picture.
            statistics: also write per-structure statistics (CSV and JSON).
            protect: more paths no output may replace (e.g. every input of a cohort); this
                result's own inputs are always protected.

        Returns:
            ``{kind: path}`` of every file written.

        Raises:
            OutputError: an output exists (without ``overwrite``), would replace an input,
                or cannot be written.
        """
        export.prepare_output_dir(out_dir)
        paths = self.output_paths(out_dir, formats, stem, report, qc, statistics)
        for folder in {p.parent for p in paths.values()}:
            export.prepare_output_dir(folder)
            for line in recover(folder):  # what a killed run left there
                warnings.warn(line, stacklevel=2)
        inputs = [v["path"] for v in self.report.inputs.values() if v.get("path")]
        protected = export.input_files([*inputs, *protect])
        export.check_outputs(list(paths.values()), overwrite=overwrite, inputs=list(protected))
        t0 = time.perf_counter()

        def finish_report() -> None:
            self.report.timings_s["write"] = round(time.perf_counter() - t0, 4)
            self.report.outputs = {k: str(v) for k, v in paths.items()}

        with export.OutputTransaction(overwrite, protected) as tx:
            export.write_all(self, paths, tx, finish_report)
        return paths

    def statistics(self) -> list[dict]:
        """Per structure: volume (ml), voxels, slices holding it, its first and last slice
        (index in the query's own voxel grid along the slicing axis, and position in mm
        along it), mean SAM2 object score over those slices, slices drawn by the user."""
        vox_ml = float(np.prod(self.labels.spacing)) / 1000.0
        _, src = self.query_frames.source_index(self.labels.shape)
        dz = self.query_frames.spacing[0]
        out = []
        for i, e in enumerate(self.plan):
            m = self.structure_frames[i] if self.structure_frames is not None else \
                self.label_frames == e.output_value
            has = np.nonzero(m.reshape(len(m), -1).any(axis=1))[0]
            scores = self.object_scores[has, i] if self.object_scores is not None and \
                has.size else np.array([np.nan])
            drawn = self.drawn_frames[i] if self.drawn_frames is not None else ()
            out.append({
                "name": e.name, "output_value": e.output_value,
                "volume_ml": round(int(m.sum()) * vox_ml, 3), "voxels": int(m.sum()),
                "slices": int(has.size),
                "first_slice": int(src[has[0]]) if has.size else None,
                "last_slice": int(src[has[-1]]) if has.size else None,
                "extent_mm": round(float((has[-1] - has[0] + 1) * dz), 2) if has.size else 0.0,
                "mean_object_score": None if np.isnan(scores).all()
                else round(float(np.nanmean(scores)), 4),
                "drawn_slices": int(np.count_nonzero(drawn))})
        return out

    def segment_tags(self) -> dict[int, dict[str, str]]:
        """Extra Slicer segment tags per output value (what a ``.seg.nrrd`` carries beyond
        names, colours and terminology): the slice record."""
        return {v: r.tags() for v, r in self.records().items()}
