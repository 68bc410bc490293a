"""SAM2, and only here: the model, its batched encoder and the prompting modes.

* :mod:`~medseg.engine.build` -- sam2's own builder with medseg's predictor subclass;
  random-weight models for tests and timing;
* :mod:`~medseg.engine.predictor` -- the subclass of sam2's video predictor;
* :mod:`~medseg.engine.features` -- batched encoder features shared by matching and SAM2;
* :mod:`~medseg.engine.core` -- :class:`Sam2Engine`: pair, volume and scan modes;
* :mod:`~medseg.engine.device` -- choosing the device;
* :mod:`~medseg.engine.reference` -- stock sam2 through its public API, the reference.

No other medseg module imports ``sam2``; torch and sam2 load only when an engine is built.
"""

from .build import build_random_checkpoint
from .core import EngineOutput, Sam2Engine, merge
from .device import select_device
from .features import FeatureStore

__all__ = ["EngineOutput", "FeatureStore", "Sam2Engine", "build_random_checkpoint", "merge",
           "select_device"]
