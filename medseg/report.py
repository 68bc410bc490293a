"""The run report: typed records, serialised to the ``*_report.json`` users keep."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ._version import __version__

OVERLAP_RULE = ("within a support slice: highest positive SAM2 logit (transfer: the label "
                "listed first); across support slices: the structure whose support-slice "
                "intensities the pixel resembles most")


def versions() -> dict[str, str]:
    """Versions of medseg and the stack it runs on."""
    out = {"medseg": __version__, "python": platform.python_version()}
    for pkg in ("torch", "sam2", "SimpleITK", "numpy", "albumentations", "monai", "nibabel"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> dict[str, Any]:
    """The machine: platform, CPUs and (when torch is loaded) threads and GPU."""
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.machine(),
                            "cpus": os.cpu_count()}
    if "torch" in sys.modules:  # only when already loaded: a report never imports torch
        torch = sys.modules["torch"]
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


@dataclass
class FrameRecord:
    """One query frame: what it was matched with and what came out (lists: per group or
    per output label, in output order)."""

    frame: int
    query_slice: int
    matched_member: list[int]
    distance: list[float | None]
    object_score: list[float | None]
    area_px: list[int]
    expected: list[bool]  # per output label: inside the structure's expected extent
    support_position: float | None  # corresponding support frame (slice correspondence)
    drawn: list[bool] = field(default_factory=list)  # per output label: the user's own mask


@dataclass
class GroupRecord:
    """One support group: its slices, structures and bank."""

    support_slices: list[int]
    labels: list[int]  # support values
    outputs: list[int]  # output values
    bank_size: int
    bank_params: list[dict]
    propagation: dict = field(default_factory=dict)  # engine timings, insertion point, ...


@dataclass
class Report:
    """Everything needed to know how a result was made."""

    config: dict
    inputs: dict
    segments: list[dict]
    support_groups: list[GroupRecord]
    per_frame: list[FrameRecord]
    timings_s: dict[str, float]
    engine: dict | None = None
    location: dict = field(default_factory=dict)  # correspondence, shared frame, evidence
    support_completion: list[dict] = field(default_factory=list)  # per structure (see support)
    statistics: list[dict] = field(default_factory=list)  # per structure: volume, extent, ...
    medseg_version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    versions: dict = field(default_factory=versions)
    machine: dict = field(default_factory=machine)
    overlap_rule: str = OVERLAP_RULE
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def random_weights(self) -> bool:
        return bool((self.engine or {}).get("random_weights"))
