"""Outputs other tools open directly, written all-or-nothing.

* :mod:`~medseg.export.writers` -- every output kind behind one contract and a registry;
* :mod:`~medseg.export.labelmap` -- NIfTI labelmap, Slicer colour table, ITK-SNAP labels;
* :mod:`~medseg.export.seg_nrrd` -- 3D Slicer segmentations as Slicer writes them;
* :mod:`~medseg.export.dicom_seg` -- DICOM-SEG for PACS and OHIF;
* :mod:`~medseg.export.paths` -- output names and the checks made before any work;
* :mod:`~medseg.export.transaction` -- the one all-or-nothing writing mechanism.
"""

from .paths import (
    check_output_dir,
    check_outputs,
    input_files,
    prepare_output_dir,
    query_stem,
    safe_stem,
)
from .transaction import OutputTransaction, json_file, write_atomic, write_json
from .writers import OUTPUTS, QC_SUFFIXES, output_paths, write_all

__all__ = ["OUTPUTS", "OutputTransaction", "QC_SUFFIXES", "check_output_dir", "check_outputs",
           "input_files", "json_file", "output_paths", "prepare_output_dir", "query_stem",
           "safe_stem", "write_all", "write_atomic", "write_json"]
