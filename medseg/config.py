"""Settings as objects: the model, what to segment and how (by stage), the outputs, cohorts.

Every command-line option of ``medseg segment`` is a field of one of these frozen
dataclasses, defined once with :func:`option`: its default, vocabulary, check, flags and
help. The command line is generated from the fields (:mod:`medseg.cli`), the Python API
takes the same names as flat keywords (``shots=1``) or as the nested objects, reports
store them as they are. Values are checked when an object is built, so an invalid
setting never reaches a stage.

* :class:`ModelConfig` -- the SAM2 model, device, precision, batching;
* :class:`SegmentConfig` -- structures, method and intensities, with one group per stage:
  :class:`SupportConfig` (the labelled slices, completion, bank), :class:`LocateConfig`
  (slice correspondence, presence, placement) and :class:`PostConfig` (clean-up, overlaps);
* :class:`OutputSpec` -- folder, formats, report, QC picture, statistics, overwriting;
* :class:`CohortSpec` -- resuming, references, Ray workers, per-query time limit.
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from . import options as opt
from .errors import UsageError


@dataclass(frozen=True)
class Opt:
    """What the command line and the checks know of one setting (a field's metadata)."""

    flags: tuple[str, ...]
    help: str
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], Any] | None = None  # value -> checked (normalised) value
    parse: Callable[[str], Any] | None = None  # command-line text -> value
    name: str | None = None  # flat name when it differs from the field's
    metavar: str | None = None
    cli: bool = True


def option(default: Any, *flags: str, help: str, choices: tuple[str, ...] | None = None,
           check: Callable[[Any], Any] | None = None, parse: Callable[[str], Any] | None = None,
           name: str | None = None, metavar: str | None = None, cli: bool = True) -> Any:
    """A settings field that is also a command-line option (see the module docstring)."""
    meta = {"option": Opt(tuple(flags), help, choices, check, parse, name, metavar,
                          cli and bool(flags))}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def group(cls: type) -> Any:
    """A nested settings group (its fields are options of their own)."""
    return field(default_factory=cls, metadata={"group": True})


def _checked(obj: Any) -> None:
    """Check (and normalise) every option field of a frozen settings object."""
    for f in fields(obj):
        o: Opt | None = f.metadata.get("option")
        if o is None:
            continue
        value = getattr(obj, f.name)
        if value is None:
            continue
        name = o.name or f.name
        if o.choices is not None:
            value = opt.check_choice(getattr(value, "value", value), o.choices, name)
        if o.check is not None:
            value = o.check(value)
        object.__setattr__(obj, f.name, value)


def _int(name: str, low: int, high: int | None = None) -> Callable[[Any], int]:
    return lambda v: opt.check_int(v, name, low, high)


def _bool(name: str) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        if not isinstance(v, bool):
            raise UsageError(f"{name} {v!r}: must be true or false", option=name)
        return v
    return check


def _path(v: Any) -> Path:
    return Path(v)


def _text(name: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        return opt.check_text(v, name)
    return check


def _items(name: str) -> Callable[[Any], tuple | None]:
    """A comma list or a sequence of values or names; integers stay integers."""
    def check(v: Any) -> tuple | None:
        items = opt.split_list(v) if isinstance(v, str) else [
            x.strip() if isinstance(x, str) else x for x in v]
        if any(isinstance(x, bool) or not isinstance(x, (int, str)) for x in items):
            raise UsageError(f"{name} {v!r}: give label values or segment names", option=name)
        return tuple(x for x in items if x != "") or None
    return check


# --- the model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """The SAM2 model and how it runs (built once per :class:`medseg.Segmenter`)."""

    model: str = option("tiny", "--model", choices=opt.MODELS, help="SAM2.1 model size.")
    checkpoint: Path | None = option(None, "--checkpoint", check=_path, metavar="PATH",
                                     help="SAM2.1 checkpoint file (else $MEDSEG_CHECKPOINT, "
                                     "else the cache, downloading the official one).")
    device: str = option("auto", "--device", check=opt.check_device,
                         help="auto, cpu, cuda, cuda:N or mps.")
    precision: str = option("auto", "--precision", choices=opt.PRECISIONS,
                            help="auto: bf16 autocast on CUDA where supported.")
    image_size: int | None = option(None, "--image-size", check=opt.check_image_size,
                                    help="Model input size (default: the checkpoint's, 1024 "
                                    "for official ones; a multiple of 32).")
    batch_size: int = option(8, "--batch-size", check=_int("batch_size", 1, 4096),
                             help="Frames per encoder batch and clips per batched SAM2 call "
                             "(1: bit-identical to stock sam2).")
    compile: bool = option(False, "--compile", check=_bool("compile"),
                           help="torch.compile the image encoder (a warm-up of tens of "
                           "seconds; pays off on long volumes and cohorts on a GPU).")
    allow_download: bool = option(True, "--download/--no-download",
                                  check=_bool("allow_download"), help="Download the official "
                                  "weights on first use when none are cached.")
    feature_cache_mb: float = option(2048.0, cli=False, check=lambda v: opt.check_positive(
        v, "feature_cache_mb"), help="Encoder features kept from matching for volume mode.")

    def __post_init__(self) -> None:
        _checked(self)


# --- what to segment and how -------------------------------------------------------------------


@dataclass(frozen=True)
class BankConfig:
    """Size and ranges of the augmentation bank (defaults: moderate, anatomy-preserving)."""

    size: int = option(16, "--bank-size", name="bank_size", check=_int("bank_size", 0, 4096),
                       help="Augmented copies of each support slice.")
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    shear_deg: float = 5.0
    translate: float = 0.05  # fraction of the frame size
    brightness: float = 0.2
    contrast: float = 0.2
    gamma: tuple[float, float] = (0.8, 1.2)
    noise_std: tuple[float, float] = (0.0, 0.03)
    p_affine: float = 0.9
    p_intensity: float = 0.8
    seed: int = option(0, "--seed", check=_int("seed", 0, 2**31 - 1),
                       help="Seed of the augmentation bank (results are reproducible per seed).")

    def __post_init__(self) -> None:
        _checked(self)
        if not (0 < self.scale[0] <= self.scale[1]):
            raise UsageError(f"scale range {self.scale} must be positive and increasing")


@dataclass(frozen=True)
class SupportConfig:
    """The support: which labelled slices, how the structure is completed, the bank."""

    support_slice: int | None = option(None, "--support-slice", check=_int("support_slice", 0),
                                       help="Support slice (index in the support's own voxel "
                                       "grid, along --axis); default: the largest painted.")
    shots: int = option(0, "--shots", check=_int("shots", 0, 64),
                        help="Support slices per structure: 1 (1-shot), k (at the protocol's "
                        "fractions of the extent), 0 = auto (every labelled slice, up to 16, "
                        "in a shared frame of reference; else 1).")
    complete: str = option("auto", "--complete", choices=opt.COMPLETE,
                           help="Complete a structure painted on a few slices through the "
                           "support scan before using it: auto (when the label is not already "
                           "3D), on, off.")
    bank: BankConfig = group(BankConfig)
    label_names: Path | None = option(None, "--label-names", check=_path, metavar="FILE",
                                      help="Names of a label map's values: a dataset.json "
                                      "(nnU-Net/MSD), a Slicer .ctbl or an ITK-SNAP label "
                                      "file (default: one found beside the label map).")
    resample_label: bool = option(False, "--resample-label", check=_bool("resample_label"),
                                  help="Resample a support label on another grid onto the "
                                  "support image (nearest neighbour).")
    support_series: str | None = option(None, "--support-series", check=_text("support_series"),
                                        help="DICOM series UID of the support.")

    def __post_init__(self) -> None:
        _checked(self)


@dataclass(frozen=True)
class LocateConfig:
    """Relating the query to the support: slice correspondence, presence, placement."""

    correspondence: str = option("auto", "--correspondence", choices=opt.CORRESPONDENCE,
                                 help="auto: relate query to support slices by content or "
                                 "world position; off: by order only.")
    presence: str = option("auto", "--presence", choices=opt.PRESENCE,
                           help="auto: no mask outside the structure's expected extent (and "
                           "with SAM2 none where its object score is not above 0); off: "
                           "every slice.")
    placement: str = option("auto", "--placement", choices=opt.PLACEMENT,
                            help="In-plane: auto (world in a shared frame, body box, content "
                            "search for cropped views), world, body, search, centre.")

    def __post_init__(self) -> None:
        _checked(self)


@dataclass(frozen=True)
class PostConfig:
    """Clean-up of the result and what happens where structures overlap."""

    overlap: str = option("first", "--overlap", choices=opt.OVERLAP,
                          help="Structures that overlap: first (one labelmap: the first listed "
                          "or higher SAM2 logit wins) or keep (multi-layer .seg.nrrd, "
                          "overlapping DICOM-SEG segments; the NIfTI labelmap unchanged).")
    keep_largest: bool = option(False, "--largest-component", name="keep_largest",
                                check=_bool("keep_largest"),
                                help="Keep the largest 3D connected component.")
    fill_holes: bool = option(False, "--fill-holes", check=_bool("fill_holes"),
                              help="Fill holes slice by slice.")
    z_range: str | None = option(None, "--z-range", check=opt.check_range_syntax,
                                 help="Keep frames START:STOP only.")

    def __post_init__(self) -> None:
        _checked(self)


@dataclass(frozen=True)
class SegmentConfig:
    """What to segment and how (everything but the model).

    Flat keywords (``SegmentConfig.from_options(shots=1, window="lung")``) and nested groups
    (``SegmentConfig(support=SupportConfig(shots=1))``) build the same object.
    """

    labels: tuple[int | str, ...] | None = option(
        None, "--labels", check=_items("labels"), parse=opt.split_list,
        help="Structures: support label values or segment names, e.g. 5,1 or liver,spleen "
        "(default: all).")
    names: tuple[str, ...] | None = option(None, "--names", check=opt.check_names,
                                           parse=opt.split_list, help="Output names, in the "
                                           "order of --labels.")
    method: str = option("sam2", "--method", choices=opt.METHODS,
                         help="sam2 (the method); transfer: each slice takes its matched "
                         "support mask, no SAM2 (weight-free baseline and preview).")
    mode: str = option("pair", "--mode", choices=opt.MODES,
                       help="pair: a [support, frame] clip per query frame (Zu et al.); "
                       "volume: propagate through the stack.")
    matcher: str | None = option(None, "--matcher", choices=opt.MATCHERS,
                                 help="sam2: perceptual distance on SAM2 features (default "
                                 "with --method sam2); ssim/ncc: weight-free (ncc: default "
                                 "with transfer).")
    axis: str = option("axial", "--axis", choices=opt.AXES, help="Slicing axis.")
    window: str | None = option(None, "--window", check=opt.check_window,
                                help="CT window: abdomen, soft-tissue, lung, bone, brain, or "
                                "LEVEL,WIDTH (default: chosen from the structures, recorded "
                                "in the report).")
    modality: str = option("auto", "--modality", choices=opt.MODALITIES,
                           help="Intensity handling.")
    query_series: str | None = option(None, "--series", name="query_series",
                                      check=_text("series"),
                                      help="DICOM series UID of the query.")
    support: SupportConfig = group(SupportConfig)
    locate: LocateConfig = group(LocateConfig)
    post: PostConfig = group(PostConfig)

    def __post_init__(self) -> None:
        _checked(self)
        if self.names is not None and self.labels and len(self.names) != len(self.labels):
            raise UsageError(f"names: {len(self.names)} names for {len(self.labels)} labels",
                             option="names")

    @property
    def resolved_matcher(self) -> str:
        """The matcher, its default filled in (sam2 with SAM2, ncc for transfer)."""
        return self.matcher or ("sam2" if self.method == "sam2" else "ncc")

    @property
    def needs_model(self) -> bool:
        """Whether this configuration runs SAM2 (method or matcher)."""
        return self.method == "sam2" or self.resolved_matcher == "sam2"

    @classmethod
    def from_options(cls, **options: Any) -> SegmentConfig:
        """A configuration from flat keywords (see :func:`with_options`)."""
        return with_options(cls(), **options)


# --- outputs and cohorts -----------------------------------------------------------------------


@dataclass(frozen=True)
class OutputSpec:
    """Where and how results are written."""

    folder: Path = option(Path("medseg-out"), "--output", "-o", name="output", check=_path,
                          help="Output folder.")
    formats: tuple[str, ...] = option(("nifti", "seg.nrrd"), "--format", name="formats",
                                      check=opt.check_formats, parse=opt.split_list,
                                      help="Comma list: " + ", ".join(opt.FORMATS) + ".")
    report: Path | None = option(None, "--report", check=_path,
                                 help="Report path (one query; default: beside the outputs).")
    qc: Path | None = option(None, "--qc", check=_path, help="QC picture (.png/.pdf/.svg; "
                             "a folder for a cohort).")
    statistics: bool = option(False, "--statistics", check=_bool("statistics"),
                              help="Write per-structure statistics (volume ml, slices, "
                              "extent, mean object score) as CSV and JSON beside the outputs.")
    overwrite: bool = option(False, "--overwrite", check=_bool("overwrite"),
                             help="Replace existing outputs.")

    def __post_init__(self) -> None:
        _checked(self)


@dataclass(frozen=True)
class CohortSpec:
    """How a cohort (several queries) runs."""

    resume: bool = option(False, "--resume", check=_bool("resume"),
                          help="Cohort: skip queries whose outputs are complete and valid.")
    ref: Path | None = option(None, "--ref", check=_path, help="Cohort: folder of reference "
                              "labels named like the queries (adds Dice/HD95 to the summary).")
    workers: int = option(1, "--workers", check=_int("workers", 1, 1024),
                          help="Cohort: Ray workers (one model each).")
    ray_address: str | None = option(None, "--ray-address", check=opt.check_ray_address,
                                     metavar="HOST:PORT",
                                     help="Cohort: a running Ray cluster (default: a local one "
                                     "of medseg's own).")
    query_timeout: float | None = option(None, "--query-timeout", metavar="SECONDS",
                                         check=lambda v: opt.check_positive(v, "query_timeout"),
                                         help="Cohort: a query taking longer (reading, "
                                         "segmenting, writing) is recorded as failed and the "
                                         "rest go on.")

    def __post_init__(self) -> None:
        _checked(self)


# --- flat names <-> nested fields ---------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """One option of a settings class: its flat name, where it sits, what it is."""

    name: str
    path: tuple[str, ...]
    field: dataclasses.Field
    opt: Opt

    @property
    def default(self) -> Any:
        f = self.field
        return f.default_factory() if f.default is dataclasses.MISSING else f.default


def leaves(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[Leaf]:
    """Every option of ``cls`` and its groups, in declaration order."""
    for f in fields(cls):
        if f.metadata.get("group"):
            yield from leaves(f.default_factory, prefix + (f.name,))  # type: ignore[arg-type]
        elif "option" in f.metadata:
            o = f.metadata["option"]
            yield Leaf(o.name or f.name, prefix + (f.name,), f, o)


def with_options(obj: Any, **options: Any) -> Any:
    """``obj`` with some options replaced, given by flat name (``shots=1``) or by group
    (``support=SupportConfig(...)``); unknown names are a :class:`TypeError`."""
    by_name = {leaf.name: leaf.path for leaf in leaves(type(obj))}
    groups = {f.name for f in fields(obj) if f.metadata.get("group")}
    nested: dict[str, Any] = {}
    unknown = []
    for key, value in options.items():
        if key in groups:
            obj = replace(obj, **{key: value})
        elif key in by_name:
            nested[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}; known: "
                        f"{', '.join(sorted(by_name))}")
    for key, value in nested.items():
        obj = _set(obj, by_name[key], value)
    return obj


def _set(obj: Any, path: Sequence[str], value: Any) -> Any:
    if len(path) == 1:
        return replace(obj, **{path[0]: value})
    return replace(obj, **{path[0]: _set(getattr(obj, path[0]), path[1:], value)})


def as_flat(obj: Any) -> dict[str, Any]:
    """``{flat name: value}`` of every option of a settings object."""
    out = {}
    for leaf in leaves(type(obj)):
        value = obj
        for part in leaf.path:
            value = getattr(value, part)
        out[leaf.name] = value
    return out


def to_dict(obj: Any) -> dict[str, Any]:
    """A settings object as plain JSON-ready values (nested groups kept as dicts)."""
    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(obj))


# --- documentation from the fields -------------------------------------------------------------


def _document(cls: type) -> None:
    """Append an ``Args:`` section (MONAI style) to ``cls``'s docstring, written from its
    fields' help: each option's flat name, type, default and command-line flag; a group's
    options are listed with their group."""
    hints = typing.get_type_hints(cls)
    lines = ["", "Args:"]
    for f in fields(cls):
        if f.metadata.get("group"):
            inner = ", ".join(leaf.name for leaf in leaves(f.default_factory))  # type: ignore
            text = (f"the {f.default_factory.__name__} group ({inner}); each of its options "  # type: ignore
                    "may also be given by name, flat.")
        elif "option" not in f.metadata:
            continue
        else:
            o: Opt = f.metadata["option"]
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            flag = f" Command line: {o.flags[0].split('/')[0]}." if o.cli and o.flags else ""
            text = f"{o.help} Default: {default!r}.{flag}"
            if o.name and o.name != f.name:
                text += f" Flat name: {o.name}."
        kind = getattr(hints[f.name], "__name__", None) or str(hints[f.name])
        wrapped = textwrap.wrap(f"{f.name} ({kind}): {text}", 84)
        lines += ["    " + wrapped[0]] + ["        " + w for w in wrapped[1:]]
    doc = inspect.cleandoc(cls.__doc__ or "")
    cls.__doc__ = doc + "\n" + "\n".join(lines) + "\n"


for _cls in (ModelConfig, BankConfig, SupportConfig, LocateConfig, PostConfig, SegmentConfig,
             OutputSpec, CohortSpec):
    _document(_cls)
