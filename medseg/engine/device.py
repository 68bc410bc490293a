"""Choosing the compute device, with a clear error when the one asked for is not there."""

from __future__ import annotations

from .._lazy import lazy_import
from ..errors import DeviceError

torch = lazy_import("torch")


def select_device(spec: str = "auto"):
    """``auto|cpu|cuda|cuda:N|mps`` -> torch.device, with a clear error if unavailable."""
    spec = (spec or "auto").lower()
    spec = "cuda" if spec == "gpu" else spec
    has_mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec}: no CUDA GPU is available to this torch "
                              f"({torch.__version__}); use cpu (slow) or install a CUDA build "
                              "of torch", option="device")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec}: only {torch.cuda.device_count()} CUDA device(s) "
                              "present", option="device")
        return dev
    if spec == "mps":
        if not has_mps:
            raise DeviceError("device mps: Apple MPS is not available here; use cpu",
                              option="device")
        return torch.device("mps")
    if spec == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"device {spec!r}: use auto, cpu, cuda, cuda:N or mps", option="device")
