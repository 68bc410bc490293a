"""SAM2, and only here: the model, its batched encoder and the prompting modes.

No other medseg module imports ``sam2``; torch and sam2 load only when an engine is built.
"""

from .core import EngineOutput, FeatureStore, Sam2Engine, merge, select_device

__all__ = ["EngineOutput", "FeatureStore", "Sam2Engine", "merge", "select_device"]
