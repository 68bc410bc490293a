"""Volumes and their geometry (SimpleITK is the single authority): reading, checking,
canonical orientation, writing.

* :mod:`~medseg.io.volume` -- :class:`Volume`, the image with its exact geometry;
* :mod:`~medseg.io.readers` -- formats behind one contract and a registry
  (NIfTI, NRRD/MHA, DICOM series); :func:`read_image`, :func:`write_image`;
* :mod:`~medseg.io.nifti`, :mod:`~medseg.io.dicom` -- what each format needs checked;
* :mod:`~medseg.io.orientation` -- permute/flip to L, P, S and back, exactly;
* :mod:`~medseg.io.checks` -- a label map given as an image, NaN voxels, constant images.
"""

from .checks import check_finite, check_not_label
from .orientation import (
    Orientation,
    canonical_orientation,
    canonical_spacing_zyx,
    from_canonical,
    orientation_code,
    to_canonical,
)
from .readers import IMAGE_SUFFIXES, NIFTI_SUFFIXES, read_image, write_image
from .volume import Volume, same_geometry

__all__ = ["IMAGE_SUFFIXES", "NIFTI_SUFFIXES", "Orientation", "Volume", "canonical_orientation",
           "canonical_spacing_zyx", "check_finite", "check_not_label", "from_canonical",
           "orientation_code", "read_image", "same_geometry", "to_canonical", "write_image"]
