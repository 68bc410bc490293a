"""SAM2.1 checkpoints: where they come from, where they are cached, how they are checked.

Resolution order for the checkpoint file: ``--checkpoint PATH``, then the environment
variable ``MEDSEG_CHECKPOINT``, then the cache (``$MEDSEG_HOME/checkpoints`` or
``~/.cache/medseg/checkpoints``), downloading the official file there on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ._lazy import lazy_import
from .errors import ModelError

torch = lazy_import("torch")
tqdm = lazy_import("tqdm")

BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"


@dataclass(frozen=True)
class ModelSpec:
    """One SAM2.1 model size."""

    name: str
    config: str  # inside the sam2 package
    filename: str
    approx_mb: int  # published size, for the download size check
    trunk_blocks: int  # Hiera blocks: identifies the size from a checkpoint's keys
    embed_dim: int

    @property
    def url(self) -> str:
        return f"{BASE_URL}/{self.filename}"


MODELS: dict[str, ModelSpec] = {
    "tiny": ModelSpec("tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt", 156, 12, 96),
    "small": ModelSpec("small", "configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt", 184, 16, 96),
    "base-plus": ModelSpec(
        "base-plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt", 323, 24, 112
    ),
    "large": ModelSpec("large", "configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt", 898, 48, 144),
}
ENV_CHECKPOINT = "MEDSEG_CHECKPOINT"
ENV_HOME = "MEDSEG_HOME"
SIZE_TOLERANCE = 0.10  # published sizes are rounded to MB; allow 10 %


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def medseg_home() -> Path:
    """medseg's cache folder: ``$MEDSEG_HOME``, else ``$XDG_CACHE_HOME/medseg`` or ``~/.cache/medseg``."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medseg"


def cache_dir() -> Path:
    """Folder holding downloaded checkpoints."""
    return medseg_home() / "checkpoints"


def cache_status() -> dict[str, str | None]:
    """For each model size, the cached file path or None."""
    d = cache_dir()
    return {n: (str(d / s.filename) if (d / s.filename).is_file() else None) for n, s in MODELS.items()}


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def load_state_dict(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state_dict, medseg metadata) of a checkpoint, loaded with ``weights_only=True``."""
    p = Path(path)
    if p.stat().st_size == 0:
        raise ModelError(f"checkpoint {p}: is empty (0 bytes); it is truncated or corrupt")
    try:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # not a zip-format file: mmap unsupported
            if "mmap" not in str(exc):
                raise
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, pickled code (refused by weights_only) ...
        raise ModelError(
            f"checkpoint {p}: cannot be loaded safely ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}); it is truncated, corrupt or not a SAM2 checkpoint"
        ) from exc
    if not isinstance(obj, dict) or "model" not in obj or not isinstance(obj["model"], dict):
        raise ModelError(f"checkpoint {p}: has no 'model' state dict; not a SAM2 checkpoint")
    meta = obj.get("medseg", {}) if isinstance(obj.get("medseg", {}), dict) else {}
    return obj["model"], meta


def infer_model_size(state_dict: dict) -> str | None:
    """Which SAM2.1 size a state dict belongs to (None if it matches none)."""
    blocks = {k.split(".")[3] for k in state_dict if k.startswith("image_encoder.trunk.blocks.")}
    w = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    dim = int(w.shape[0]) if w is not None else -1
    for spec in MODELS.values():
        if spec.trunk_blocks == len(blocks) and spec.embed_dim == dim:
            return spec.name
    return None


def _offline_message(spec: ModelSpec, target: Path, reason: str) -> str:
    return (
        f"SAM2.1 {spec.name} checkpoint not available and could not be downloaded ({reason}). "
        f"Download {spec.url} ({spec.approx_mb} MB) on a machine with internet and put it at "
        f"{target}, or pass --checkpoint PATH (or set {ENV_CHECKPOINT}); without weights, "
        "--method transfer runs weight-free."
    )


def download(spec: ModelSpec, target: Path, progress: bool = True, timeout: float = 30.0) -> Path:
    """Download the official checkpoint to ``target`` (size-checked, atomic rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    try:
        with urllib.request.urlopen(spec.url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            bar = None
            if progress:
                bar = tqdm.tqdm(total=total or None, unit="B", unit_scale=True,
                           desc=f"downloading {spec.filename}", file=sys.stderr)
            got = 0
            with open(tmp, "wb") as fh:
                while True:
                    block = resp.read(1 << 20)
                    if not block:
                        break
                    fh.write(block)
                    got += len(block)
                    if bar is not None:
                        bar.update(len(block))
            if bar is not None:
                bar.close()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise ModelError(_offline_message(spec, target, f"{type(exc).__name__}: {exc}")) from exc
    expected = spec.approx_mb * 1e6
    if (total and got != total) or abs(got - expected) > SIZE_TOLERANCE * expected:
        tmp.unlink(missing_ok=True)
        raise ModelError(
            f"download of {spec.url} is incomplete or wrong ({got} bytes, expected "
            f"{total or f'about {expected:.0f}'}); run again, or download it by hand to {target}"
        )
    try:
        load_state_dict(tmp)
    except ModelError:
        tmp.unlink(missing_ok=True)
        raise
    record = {"url": spec.url, "sha256": sha256(tmp), "bytes": got,
              "downloaded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    provenance_file(target).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return target


def provenance_file(checkpoint: Path) -> Path:
    """Where medseg records the source of a checkpoint it downloaded."""
    return checkpoint.with_name(checkpoint.name + ".source.json")


def provenance(path: Path, digest: str, meta: dict) -> str:
    """Where a checkpoint's weights come from, as far as medseg can tell."""
    if meta.get("random_weights"):
        return "random weights built by medseg from the sam2 config (tests and timing only)"
    try:
        rec = json.loads(provenance_file(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rec = {}
    if rec.get("sha256") == digest:
        return f"official SAM2.1 release, downloaded by medseg from {rec['url']} ({rec['downloaded']})"
    return "supplied by the user; not checked against an official release (no published checksum)"


def resolve_checkpoint(
    model: str = "tiny", checkpoint: str | os.PathLike | None = None, *, allow_download: bool = True,
    progress: bool = True,
) -> tuple[Path, str]:
    """Find (or fetch) the checkpoint; returns (path, where it came from)."""
    spec = model_spec(model)
    if checkpoint is not None:
        p = Path(checkpoint).expanduser()
        if not p.is_file():
            raise ModelError(f"checkpoint {p}: no such file (without SAM2 weights, "
                             "--method transfer runs weight-free)")
        return p, "argument"
    env = os.environ.get(ENV_CHECKPOINT)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelError(f"checkpoint {p} (from ${ENV_CHECKPOINT}): no such file (without "
                             "SAM2 weights, --method transfer runs weight-free)")
        return p, "environment"
    target = cache_dir() / spec.filename
    if target.is_file():
        return target, "cache"
    if not allow_download:
        raise ModelError(_offline_message(spec, target, "downloads disabled"))
    return download(spec, target, progress=progress), "download"


def validate_checkpoint(path: Path, model: str, *, from_cache: bool = False
                        ) -> tuple[dict, dict]:
    """Load-check a checkpoint and make sure it is the requested size; returns the state
    dict it read (the model is built from it, without reading the file again) and the
    checkpoint's metadata.

    A broken file in the cache is removed so the next run downloads it again.
    """
    try:
        sd, meta = load_state_dict(path)
    except ModelError as exc:
        if from_cache:
            path.unlink(missing_ok=True)
            raise ModelError(f"{exc} (removed it from the cache; run again to re-download)") from exc
        raise
    found = infer_model_size(sd)
    if found is None:
        raise ModelError(f"checkpoint {path}: matches no SAM2.1 model size; not a SAM2.1 checkpoint")
    if found != model:
        raise ModelError(
            f"checkpoint {path} is a SAM2.1 '{found}' model but --model {model} was asked for; "
            f"pass --model {found} or the matching checkpoint"
        )
    return sd, {"model_size": found, **meta}
