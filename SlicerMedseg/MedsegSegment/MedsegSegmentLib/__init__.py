"""The medseg module's logic (no widgets): importable in Slicer and under slicer-core."""

from .logic import (
    RECORD_TAGS,
    STAGES,
    MedsegJob,
    RunSpec,
    SegmentLogic,
    geometry_image,
    install_commands,
    paint,
    register_segmentation_rules,
    repaint,
    segment_array,
    slice_record,
)

__all__ = ["RECORD_TAGS", "STAGES", "MedsegJob", "RunSpec", "SegmentLogic", "geometry_image",
           "install_commands", "paint", "register_segmentation_rules", "repaint",
           "segment_array", "slice_record"]
