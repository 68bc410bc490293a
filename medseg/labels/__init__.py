"""Support labels in the forms users have them, and the plan of a run's structures.

* :mod:`~medseg.labels.readers` -- label formats behind one contract and a registry;
  :func:`read_support_label`;
* :mod:`~medseg.labels.support` -- :class:`SupportLabel`, any label on its image's grid;
* :mod:`~medseg.labels.slicer`, :mod:`~medseg.labels.dicom` -- Slicer segmentations,
  DICOM-SEG and RTSTRUCT;
* :mod:`~medseg.labels.find` -- a label found by convention beside its image;
* :mod:`~medseg.labels.plan` -- :class:`LabelPlan`: values, names, colours, terminology.
"""

from .find import find_label_beside
from .plan import LabelPlan, PlanEntry, SegmentInfo, make_plan
from .readers import LABEL_IO, read_support_label
from .support import SupportLabel, label_values

__all__ = ["LABEL_IO", "LabelPlan", "PlanEntry", "SegmentInfo", "SupportLabel",
           "find_label_beside", "label_values", "make_plan", "read_support_label"]
