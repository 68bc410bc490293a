"""The support: what the user drew, the structure completed through the support scan, the
slices chosen as support, and their augmentation banks on the query grid.

* :mod:`~medseg.support.slices` -- which labelled slices become the support (``shots``);
* :mod:`~medseg.support.augment` -- the augmentation bank of one slice;
* :mod:`~medseg.support.groups` -- structures sharing slices, placed and banked;
* :mod:`~medseg.support.cache` -- banks reused by content across a cohort's queries.
"""

from .augment import Bank, build_bank, content_key
from .cache import BankCache
from .groups import SupportGroup, SupportScan, label_frames, position_prior, prepare_support
from .slices import MAX_DENSE, choose_slices, effective_shots

__all__ = ["MAX_DENSE", "Bank", "BankCache", "SupportGroup", "SupportScan", "build_bank", "choose_slices",
           "content_key", "effective_shots", "label_frames", "position_prior",
           "prepare_support"]
