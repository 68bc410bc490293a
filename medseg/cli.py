"""Command line: ``medseg segment | evaluate | info | demo``.

Only Typer is imported at start-up; numpy, torch and sam2 load inside the commands, so
``medseg --help`` is instant. User mistakes print one line and exit with a documented code
(see :mod:`medseg.errors`); ``-v`` adds the traceback.
"""

from __future__ import annotations

import logging
import sys
import traceback
import warnings
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ._version import __version__
from .errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    MedsegError,
    UsageError,
)

app = typer.Typer(
    name="medseg",
    help="Training-free one-shot segmentation of 3D medical volumes with SAM2: label one slice "
    "of a support scan, segment the same structure in a new query scan.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

STATE = {"verbose": False, "quiet": False}


class Mode(str, Enum):
    pair = "pair"
    volume = "volume"


class Matcher(str, Enum):
    sam2 = "sam2"
    ssim = "ssim"
    ncc = "ncc"


class Method(str, Enum):
    sam2 = "sam2"
    transfer = "transfer"


class Model(str, Enum):
    tiny = "tiny"
    small = "small"
    base_plus = "base-plus"
    large = "large"


class Axis(str, Enum):
    axial = "axial"
    coronal = "coronal"
    sagittal = "sagittal"


class Modality(str, Enum):
    auto = "auto"
    ct = "ct"
    mr = "mr"


def _handled(fn):
    """Map medseg errors, Ctrl-C and bugs to one-line messages and exit codes."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            typer.echo("medseg: interrupted; no partial output was kept", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except MedsegError as exc:
            if STATE["verbose"]:
                traceback.print_exc()
            typer.echo(f"medseg: error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except Exception as exc:  # a bug, not a user mistake
            if STATE["verbose"]:
                traceback.print_exc()
            typer.echo(f"medseg: internal error: {type(exc).__name__}: {exc} "
                       "(run with -v for the traceback and please report it)", err=True)
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Show tracebacks and debug logs."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only errors; no progress bars."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    STATE["verbose"], STATE["quiet"] = verbose, quiet
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if quiet:
        warnings.simplefilter("ignore")


def _say(msg: str) -> None:
    if not STATE["quiet"]:
        typer.echo(msg, err=True)


def _ints(spec: Optional[str], what: str) -> Optional[list[int]]:
    if not spec:
        return None
    try:
        return [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} {spec!r}: give integers separated by commas, e.g. 5,1") from None


def _strs(spec: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in spec.split(",") if v.strip()] if spec else None


@app.command()
@_handled
def segment(
    support: Path = typer.Option(..., "--support", "-s", help="Support scan (NIfTI, NRRD or "
                                 "DICOM folder) with the labelled slice."),
    support_label: Path = typer.Option(..., "--support-label", "-l",
                                       help="Label map of the support scan (same grid)."),
    query: Path = typer.Option(..., "--query", "-i", help="Scan to segment."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Support label values to "
                                         "segment, e.g. 5,1 (default: all present)."),
    names: Optional[str] = typer.Option(None, "--names", help="Names, e.g. liver,spleen."),
    mode: Mode = typer.Option(Mode.pair, "--mode", help="pair: [support, frame] per query "
                              "frame (Zu et al.); volume: propagate through the stack."),
    matcher: Matcher = typer.Option(Matcher.sam2, "--matcher",
                                    help="sam2: perceptual distance on SAM2 features; ssim/ncc: "
                                    "weight-free."),
    method: Method = typer.Option(Method.sam2, "--method", help="sam2 (the method); transfer: "
                                  "each slice takes its matched support mask, no SAM2 (a fast "
                                  "weight-free baseline/preview with --matcher ssim or ncc)."),
    model: Model = typer.Option(Model.tiny, "--model", help="SAM2.1 model size."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="SAM2.1 checkpoint file "
                                              "(else $MEDSEG_CHECKPOINT, else cache/download)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    image_size: Optional[int] = typer.Option(None, "--image-size",
                                             help="Model input size (default: the checkpoint's, "
                                             "1024 for official ones)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Frames per encoder batch."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on CUDA), bf16, fp32."),
    formats: str = typer.Option("nifti,seg.nrrd", "--format", help="Comma list: nifti, seg.nrrd."),
    report: Optional[Path] = typer.Option(None, "--report", help="Report path "
                                          "(default OUT/<query>_report.json)."),
    qc: Optional[Path] = typer.Option(None, "--qc", help="Write a quality-control PNG here."),
    seed: int = typer.Option(0, "--seed", help="Seed of the augmentation bank."),
    bank_size: int = typer.Option(16, "--bank-size", min=0, help="Augmented support copies."),
    axis: Axis = typer.Option(Axis.axial, "--axis", help="Slicing axis."),
    window: Optional[str] = typer.Option(None, "--window", help="CT window: abdomen (default), "
                                         "soft-tissue, lung, bone, brain, or LEVEL,WIDTH."),
    modality: Modality = typer.Option(Modality.auto, "--modality", help="Intensity handling."),
    support_slice: Optional[int] = typer.Option(None, "--support-slice", help="Slice index "
                                                "(support's own voxel grid, along --axis)."),
    shots: int = typer.Option(1, "--shots", min=1, help="Support slices per label (k-shot)."),
    largest_component: bool = typer.Option(False, "--largest-component",
                                           help="Keep the largest 3D connected component."),
    fill_holes: bool = typer.Option(False, "--fill-holes", help="Fill holes slice by slice."),
    z_range: Optional[str] = typer.Option(None, "--z-range", help="Keep only frames START:STOP."),
    resample_label: bool = typer.Option(False, "--resample-label", help="Resample a support label "
                                        "with another grid onto the support image."),
    series: Optional[str] = typer.Option(None, "--series", help="DICOM series UID of the query."),
    support_series: Optional[str] = typer.Option(None, "--support-series",
                                                 help="DICOM series UID of the support."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    no_download: bool = typer.Option(False, "--no-download", help="Never download weights."),
) -> None:
    """Segment QUERY from one labelled support scan; writes NIfTI/.seg.nrrd and a report."""
    from .api import Segmenter

    fmt = _strs(formats) or []
    seg = Segmenter(model.value, checkpoint, device, image_size=image_size, batch_size=batch_size,
                    precision=precision, allow_download=not no_download,
                    progress=not STATE["quiet"])
    lab = _ints(labels, "--labels")
    nm = _strs(names)
    # refuse early, before minutes of compute, if outputs exist
    _precheck_outputs(output, query, fmt, report, qc, overwrite, [support, support_label, query])
    result = seg.segment(
        support, support_label, query, labels=lab, names=nm, mode=mode.value,
        matcher=matcher.value, method=method.value, axis=axis.value, window=window,
        modality=modality.value,
        support_slice=support_slice, shots=shots, keep_largest=largest_component,
        fill_holes=fill_holes, z_range=z_range, resample_label=resample_label,
        query_series=series, support_series=support_series, bank_size=bank_size, seed=seed,
    )
    paths = result.save(output, fmt, overwrite=overwrite, report=report, qc=qc)
    eng = result.report.get("engine") or {}
    if eng.get("random_weights"):
        _say("WARNING: random-weight SAM2 checkpoint: the masks are meaningless (test model).")
    t = result.report["timings_s"]
    _say(f"segmented {len(result.query_frames)} frames on {eng.get('device', 'cpu, no model')} in "
         f"{sum(v for k, v in t.items() if k != 'model_load'):.1f} s")
    for kind, p in paths.items():
        _say(f"  {kind:9s} {p}")


def _precheck_outputs(output, query, fmt, report, qc, overwrite, inputs) -> None:
    from .api import _stem, output_paths
    from .export import check_outputs

    paths = output_paths(output, _stem(str(query)), fmt, report, qc)
    check_outputs(list(paths.values()), overwrite=overwrite, inputs=inputs)


@app.command()
@_handled
def evaluate(
    pred: Path = typer.Option(..., "--pred", "-p", help="Predicted label map."),
    ref: Path = typer.Option(..., "--ref", "-r", help="Reference label map (same grid)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Prediction values to score "
                                         "(default: all present in either)."),
    ref_labels: Optional[str] = typer.Option(None, "--ref-labels", help="Matching reference "
                                             "values, if they differ (e.g. --labels 1,2 "
                                             "--ref-labels 5,1)."),
    tolerance: float = typer.Option(2.0, "--tolerance", help="Surface Dice tolerance (mm)."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the table as CSV."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write results as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Per-slice Dice plot (PNG)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Dice, IoU, HD95, ASSD and surface Dice (mm) of a prediction against a reference."""
    from .export import check_outputs
    from .metrics import evaluate_files, format_table

    outs = [p for p in (csv, json_out, plot) if p]
    check_outputs(outs, overwrite=overwrite, inputs=[pred, ref])
    res = evaluate_files(pred, ref, _ints(labels, "--labels"), _ints(ref_labels, "--ref-labels"),
                         tolerance)
    typer.echo(format_table(res))
    from . import export

    with export.OutputTransaction() as tx:
        if csv:
            tx.add(csv, lambda p: p.write_text(res.to_csv()))
        if json_out:
            tx.add(json_out, lambda p: export.write_json(p, res.as_dict()))
        if plot:
            from .qc import per_slice_dice_plot

            tx.add(plot, lambda p: per_slice_dice_plot(res.per_slice, p,
                                                      [f"label {s.label}" for s in res.scores],
                                                      "axial slice (inferior to superior)"))
    for p in outs:
        _say(f"wrote {p}")


@app.command()
@_handled
def info() -> None:
    """Versions, compute devices, sam2 installation and checkpoint cache."""
    import importlib.util

    from .api import versions
    from .checkpoints import cache_dir, cache_status

    v = versions()
    typer.echo(f"medseg {v.pop('medseg')}  (python {v.pop('python')}, {sys.platform})")
    for k, val in v.items():
        typer.echo(f"  {k:15s} {val}")
    try:
        import torch

        typer.echo(f"  {'cuda':15s} {torch.cuda.is_available()}"
                   + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
        mps = getattr(torch.backends, "mps", None)
        typer.echo(f"  {'mps':15s} {bool(mps and mps.is_available())}")
    except ImportError:
        typer.echo("  torch           not importable")
    ok = importlib.util.find_spec("sam2") is not None
    typer.echo(f"  {'sam2 importable':15s} {ok}")
    typer.echo(f"checkpoint cache: {cache_dir()}")
    for name, p in cache_status().items():
        typer.echo(f"  {name:10s} {p or 'not downloaded'}")


@app.command()
@_handled
def demo(
    output: Path = typer.Option(Path("medseg-demo"), "--output", "-o", help="Output folder."),
    case: str = typer.Option("ct-liver-spleen", "--case", help="Example case (see README)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="SAM2.1 checkpoint."),
    model: Model = typer.Option(Model.tiny, "--model", help="SAM2.1 model size."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    mode: Mode = typer.Option(Mode.pair, "--mode", help="pair or volume."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Fetch the public example scans, segment one case, evaluate it, write Slicer files."""
    from . import data
    from .api import Segmenter
    from .metrics import evaluate_files, format_table

    if case not in data.CASES:
        raise UsageError(f"--case {case!r}: choose one of {', '.join(data.CASES)}")
    c = data.CASES[case]
    _say(f"fetching example data into {data.data_dir()} ...")
    data.fetch(progress=not STATE["quiet"])
    p = data.case_paths(c)
    _precheck_outputs(output, Path(p["query"]), ["nifti", "seg.nrrd"], None,
                      output / "qc.png", overwrite, [])
    seg = Segmenter(model.value, checkpoint, device, progress=not STATE["quiet"])
    res = seg.segment(p["support"], p["support_label"], p["query"], labels=list(c.labels),
                      names=list(c.names), mode=mode.value, window=c.window)
    paths = res.save(output, overwrite=overwrite, qc=output / "qc.png")
    ev = evaluate_files(paths["nifti"], p["query_ref"], list(range(1, len(c.labels) + 1)),
                        list(c.ref_labels))
    typer.echo(format_table(ev))
    if (res.report.get("engine") or {}).get("random_weights"):
        _say("WARNING: random-weight SAM2 checkpoint: these scores are meaningless.")
    _say(f"reference: {c.reference}")
    for kind, path in paths.items():
        _say(f"  {kind:9s} {path}")
    _say("open the .seg.nrrd in 3D Slicer together with the query scan (drag and drop both).")


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI and return its exit code (usage errors: 2, as click does).

    ``-v``/``-q`` may also be given after the subcommand (``medseg segment ... -q``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = {"-v", "--verbose", "-q", "--quiet"}
    argv = [a for a in argv if a in flags] + [a for a in argv if a not in flags]
    try:
        app(args=argv, prog_name="medseg")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_INTERNAL
    return 0


def run() -> None:  # pragma: no cover - console script
    sys.exit(main())
