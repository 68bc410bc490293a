"""Command line: ``medseg segment | evaluate | info | demo``.

Only Typer is imported at start-up; numpy, torch and sam2 load inside the commands, so
``medseg --help`` is instant. User mistakes print one line and exit with a documented code
(see :mod:`medseg.errors`); ``-v`` adds the traceback. Choices come from
:mod:`medseg.options`; library errors name library options, printed here as flags.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import traceback
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options as opt
from ._version import __version__
from .errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    EXIT_TERMINATED,
    MedsegError,
    UsageError,
)

app = typer.Typer(
    name="medseg",
    help="Training-free one-shot segmentation of 3D medical volumes with SAM2: label one slice "
    "of a support scan, segment the same structure in new query scans.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
STATE = {"verbose": False, "quiet": False}
DEFAULT_OUTPUT = Path("medseg-out")


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


Mode = _choices("Mode", opt.MODES)
Matcher = _choices("Matcher", opt.MATCHERS)
Method = _choices("Method", opt.METHODS)
Model = _choices("Model", opt.MODELS)
Axis = _choices("Axis", opt.AXES)
Modality = _choices("Modality", opt.MODALITIES)
Precision = _choices("Precision", opt.PRECISIONS)

FLAGS = {"labels": "--labels", "names": "--names", "mode": "--mode", "matcher": "--matcher",
         "method": "--method", "axis": "--axis", "modality": "--modality", "window": "--window",
         "device": "--device", "precision": "--precision", "format": "--format", "qc": "--qc",
         "report": "--report", "support_slice": "--support-slice", "shots": "--shots",
         "resample_label": "--resample-label", "series": "--series",
         "support_series": "--support-series", "model": "--model", "z_range": "--z-range",
         "image_size": "--image-size", "batch_size": "--batch-size", "seed": "--seed",
         "tolerance": "--tolerance", "bank_size": "--bank-size"}


class Terminated(KeyboardInterrupt):
    """SIGTERM (schedulers, ``timeout``): handled like Ctrl-C, nothing partial is kept."""


def _on_sigterm(signum, frame):  # pragma: no cover - exercised in a subprocess test
    raise Terminated()


def flag_message(exc: MedsegError) -> str:
    """The error's message with its library option named as the command-line flag."""
    msg = str(exc)
    flag = FLAGS.get(exc.option or "")
    if flag and msg.startswith(exc.option):
        return flag + msg[len(exc.option):]
    if flag:
        return msg.replace(f" {exc.option} ", f" {flag} ", 1)
    return msg


def _handled(fn):
    """Map medseg errors, Ctrl-C, SIGTERM and bugs to one-line messages and exit codes."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            import SimpleITK as sitk

            sitk.ProcessObject.SetGlobalWarningDisplay(STATE["verbose"])  # ITK's warning blocks
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt as exc:
            what = "terminated" if isinstance(exc, Terminated) else "interrupted"
            typer.echo(f"medseg: {what}; no partial output was kept", err=True)
            raise typer.Exit(EXIT_TERMINATED if isinstance(exc, Terminated)
                             else EXIT_INTERRUPTED) from None
        except MedsegError as exc:
            if STATE["verbose"]:
                traceback.print_exc()
            typer.echo(f"medseg: error: {flag_message(exc)}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except MemoryError:
            typer.echo("medseg: error: out of memory (host RAM); use a smaller --batch-size, "
                       "a smaller query, or a machine with more memory", err=True)
            raise typer.Exit(EXIT_RUNTIME) from None
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


def _opt(default, *flags: str, **kw):
    """An option for ``Annotated[...]``: the default goes in the signature (``= value``),
    written here too so each option reads in one place."""
    return typer.Option(*flags, **kw)


Presence = _choices("Presence", opt.PRESENCE)
Placement = _choices("Placement", opt.PLACEMENT)
Correspondence = _choices("Correspondence", opt.CORRESPONDENCE)
Overlap = _choices("Overlap", opt.OVERLAP)
A = Annotated
OptPath = Optional[Path]
O_SUPPORT = _opt(..., "--support", "-s", help="Support scan (NIfTI, NRRD or DICOM folder) "
                 "with the labelled slice.")
O_LABEL = _opt(None, "--support-label", "-l", help="Its label: label map, Slicer .seg.nrrd, "
               "DICOM-SEG or RTSTRUCT (default: found beside the support, e.g. s_label.nii.gz).")
O_QUERY = _opt(..., "--query", "-i", help="Scan(s) to segment: a file, a DICOM folder, a folder "
               "of scans, a glob, or a .txt/.csv list; repeatable.")
O_LABELS = _opt(None, "--labels", help="Structures: support label values or segment names, "
                "e.g. 5,1 or liver,spleen (default: all).")
O_MATCHER = _opt(None, "--matcher", help="sam2: perceptual distance on SAM2 features (default "
                 "with --method sam2); ssim/ncc: weight-free (ncc: default with transfer).")
O_METHOD = _opt("sam2", "--method", help="sam2 (the method); transfer: each slice takes its "
                "matched support mask, no SAM2 (weight-free baseline/preview).")
O_BATCH = _opt(8, "--batch-size", min=1, help="Frames per encoder batch and clips per batched "
               "SAM2 call (1: bit-identical to stock sam2).")
O_COMPILE = _opt(False, "--compile", help="torch.compile the image encoder (a warm-up of tens "
                 "of seconds; pays off on long volumes and cohorts on a GPU).")
O_SHOTS = _opt(0, "--shots", min=0, help="Support slices per structure: 1 (1-shot), k (at the "
               "protocol's fractions of the extent), 0 = auto (every labelled slice, up to 16, "
               "in a shared frame of reference; else 1).")
O_PRESENCE = _opt("auto", "--presence", help="auto: no mask outside the structure's expected "
                  "extent; off: every slice.")
O_PLACEMENT = _opt("auto", "--placement", help="In-plane: auto (world in a shared frame, body "
                   "box, content search for cropped views), world, body, search, centre.")
O_CORR = _opt("auto", "--correspondence", help="auto: relate query to support slices by "
              "content or world position; off: by order only.")
O_OVERLAP = _opt("first", "--overlap", help="Structures that overlap: first (one labelmap: the "
                 "first listed or higher SAM2 logit wins) or keep (multi-layer .seg.nrrd, "
                 "overlapping DICOM-SEG segments; the NIfTI labelmap unchanged).")
O_LARGEST = _opt(False, "--largest-component", help="Keep the largest 3D connected component.")
O_WINDOW = _opt(None, "--window", help="CT window: abdomen (default), soft-tissue, lung, bone, "
                "brain, or LEVEL,WIDTH.")


@app.command()
@_handled
def segment(
    support: A[Path, O_SUPPORT],
    query: A[list[str], O_QUERY],
    support_label: A[OptPath, O_LABEL] = None,
    output: A[Path, _opt(DEFAULT_OUTPUT, "--output", "-o", help="Output folder.")] = DEFAULT_OUTPUT,
    labels: A[Optional[str], O_LABELS] = None,
    names: A[Optional[str], _opt(None, "--names", help="Output names.")] = None,
    mode: A[Mode, _opt("pair", "--mode", help="pair: [support, frame] clip per query frame "
                       "(Zu et al.); volume: propagate through the stack.")] = "pair",
    matcher: A[Optional[Matcher], O_MATCHER] = None,
    method: A[Method, O_METHOD] = "sam2",
    model: A[Model, _opt("tiny", "--model", help="SAM2.1 model size.")] = "tiny",
    checkpoint: A[OptPath, _opt(None, "--checkpoint", help="SAM2.1 checkpoint file (else "
                                "$MEDSEG_CHECKPOINT, else cache/download).")] = None,
    device: A[str, _opt("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    image_size: A[Optional[int], _opt(None, "--image-size", help="Model input size.")] = None,
    batch_size: A[int, O_BATCH] = 8,
    precision: A[Precision, _opt("auto", "--precision", help="auto: bf16 on CUDA.")] = "auto",
    compile_: A[bool, O_COMPILE] = False,
    formats: A[str, _opt("nifti,seg.nrrd", "--format", help="Comma list: "
                         + ", ".join(opt.FORMATS) + ".")] = "nifti,seg.nrrd",
    report: A[OptPath, _opt(None, "--report", help="Report path (one query).")] = None,
    qc: A[OptPath, _opt(None, "--qc", help="QC picture (.png/.pdf/.svg; a folder for a "
                        "cohort).")] = None,
    seed: A[int, _opt(0, "--seed", help="Seed of the augmentation bank.")] = 0,
    bank_size: A[int, _opt(16, "--bank-size", min=0, help="Augmented support copies.")] = 16,
    axis: A[Axis, _opt("axial", "--axis", help="Slicing axis.")] = "axial",
    window: A[Optional[str], O_WINDOW] = None,
    modality: A[Modality, _opt("auto", "--modality", help="Intensity handling.")] = "auto",
    support_slice: A[Optional[int], _opt(None, "--support-slice", help="Slice index (the "
                                         "support's own voxel grid, along --axis).")] = None,
    shots: A[int, O_SHOTS] = 0,
    presence: A[Presence, O_PRESENCE] = "auto",
    placement: A[Placement, O_PLACEMENT] = "auto",
    correspondence: A[Correspondence, O_CORR] = "auto",
    overlap: A[Overlap, O_OVERLAP] = "first",
    largest_component: A[bool, O_LARGEST] = False,
    fill_holes: A[bool, _opt(False, "--fill-holes", help="Fill holes slice by slice.")] = False,
    z_range: A[Optional[str], _opt(None, "--z-range", help="Keep frames START:STOP.")] = None,
    resample_label: A[bool, _opt(False, "--resample-label", help="Resample a support label on "
                                 "another grid onto the support image.")] = False,
    series: A[Optional[str], _opt(None, "--series", help="DICOM series UID of the query.")] = None,
    support_series: A[Optional[str], _opt(None, "--support-series", help="DICOM series UID "
                                          "of the support.")] = None,
    overwrite: A[bool, _opt(False, "--overwrite", help="Replace existing outputs.")] = False,
    no_download: A[bool, _opt(False, "--no-download", help="Never download weights.")] = False,
    resume: A[bool, _opt(False, "--resume", help="Cohort: skip queries whose outputs are "
                         "complete and valid.")] = False,
    ref: A[OptPath, _opt(None, "--ref", help="Cohort: folder of reference labels named like "
                         "the queries (adds Dice/HD95 to the summary).")] = None,
    workers: A[int, _opt(1, "--workers", min=1, help="Cohort: Ray workers (one model each).")] = 1,
    ray_address: A[Optional[str], _opt(None, "--ray-address", help="Cohort: a running Ray "
                                       "cluster (default: a local one).")] = None,
) -> None:
    """Segment QUERY scan(s) from one labelled support scan; writes NIfTI/.seg.nrrd + report.

    Several queries (a folder, a glob, a list file, or --query repeated) run as a cohort:
    one model load, a summary (cohort_summary.csv/.json), failures recorded and skipped.
    """
    _segment_command(**locals())


def _segment_command(**a) -> None:
    """The ``segment`` command's work (options as given)."""
    from .api import Segmenter
    from .cohort import expand_queries, run_cohort
    from .segmentations import find_label_beside

    value = lambda x: getattr(x, "value", x)  # noqa: E731 - Enum members or plain values
    label = a["support_label"] or _find_label(a["support"], find_label_beside)
    fmt = opt.split_list(a["formats"]) or []
    seg_kwargs = dict(model=value(a["model"]), checkpoint=a["checkpoint"], device=a["device"],
                      image_size=a["image_size"], batch_size=a["batch_size"],
                      precision=value(a["precision"]), allow_download=not a["no_download"],
                      compile=a["compile_"])
    seg = Segmenter(**seg_kwargs, progress=not STATE["quiet"])
    config = dict(labels=opt.split_list(a["labels"]), names=opt.split_list(a["names"]),
                  matcher=value(a["matcher"]), keep_largest=a["largest_component"],
                  query_series=a["series"], **{k: value(a[k]) for k in CONFIG_KEYS})
    queries = expand_queries(a["query"])
    single = len(queries) == 1 and len(a["query"]) == 1 and queries[0] == Path(a["query"][0])
    if single and not (a["resume"] or a["ref"] or a["workers"] > 1):
        _segment_one(seg, a["support"], label, queries[0], a["output"], fmt, a["report"],
                     a["qc"], a["overwrite"], config)
        return
    run_cohort(seg, seg_kwargs, a["support"], label, queries, a["output"], fmt, a["report"],
               a["qc"], a["overwrite"], a["resume"], a["ref"], a["workers"], a["ray_address"],
               config, _say, STATE["verbose"],
               [q for q in a["query"] if Path(q).is_file() and Path(q).suffix.lower() in
                (".txt", ".csv", ".lst")])


CONFIG_KEYS = ("mode", "method", "axis", "window", "modality", "support_slice", "shots",
               "presence", "placement", "correspondence", "overlap", "fill_holes", "z_range",
               "resample_label", "support_series", "bank_size", "seed")


def _find_label(support: Path, finder) -> Path:
    found, tried = finder(support)
    if found is None:
        names = ", ".join(p.name for p in tried[:8])
        raise UsageError(f"no --support-label given and none found beside {support} (tried "
                         f"{names}, ... {len(tried)} names); pass --support-label")
    _say(f"support label: {found} (found beside the support)")
    return found


def _segment_one(seg, support, support_label, query: Path, output: Path, fmt, report, qc,
                 overwrite, config) -> None:
    from . import export, pipeline

    cfg = pipeline.make_config(None, dict(config))  # every option checked before any work
    if "dicom-seg" in fmt:
        from .dicom import check_seg_sources

        check_seg_sources(query)
    inputs = [support, support_label, query]
    paths = export.output_paths(output, export.query_stem(str(query)), fmt, report, qc)
    for folder in {output, *(p.parent for p in paths.values())}:
        export.check_output_dir(folder)
    export.check_outputs(list(paths.values()), overwrite=overwrite, inputs=inputs)
    result = seg.segment(support, support_label, query, cfg)
    paths = result.save(output, fmt, overwrite=overwrite, report=report, qc=qc)
    if result.report.random_weights:
        _say("WARNING: random-weight SAM2 checkpoint: the masks are meaningless (test model).")
    eng = result.report.engine or {}
    t = result.report.timings_s
    _say(f"segmented {len(result.query_frames)} frames on {eng.get('device', 'cpu, no model')} in "
         f"{sum(v for k, v in t.items() if k != 'model_load'):.1f} s")
    for kind, p in paths.items():
        _say(f"  {kind:9s} {p}")


@app.command()
@_handled
def evaluate(
    pred: Path = typer.Option(..., "--pred", "-p", help="Predicted label map (or .seg.nrrd)."),
    ref: Path = typer.Option(..., "--ref", "-r", help="Reference label map (same grid)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Prediction values to score "
                                         "(default: from the prediction's report, else all)."),
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
    from . import export
    from .metrics import evaluate_files, format_table
    from .options import check_positive

    check_positive(tolerance, "tolerance")
    outs = [p for p in (csv, json_out, plot) if p]
    for p in outs:
        export.check_output_dir(p.parent)
    export.check_outputs(outs, overwrite=overwrite, inputs=[pred, ref])
    res = evaluate_files(pred, ref, _ints(labels, "--labels"), _ints(ref_labels, "--ref-labels"),
                         tolerance)
    typer.echo(format_table(res))
    if res.mapping_note:
        _say(res.mapping_note)
    for p in outs:
        export.prepare_output_dir(p.parent)
    with export.OutputTransaction(overwrite) as tx:
        if csv:
            tx.add(csv, lambda p: p.write_text(res.to_csv(), encoding="utf-8"))
        if json_out:
            tx.add(json_out, lambda p: export.json_file(p, res.as_dict()))
        if plot:
            from .qc import per_slice_dice_plot

            tx.add(plot, lambda p: per_slice_dice_plot(res.per_slice, p, res.names,
                                                      "axial slice (inferior to superior)"))
    for p in outs:
        _say(f"wrote {p}")


@app.command()
@_handled
def info() -> None:
    """Versions, compute devices, sam2 installation and checkpoint cache."""
    import importlib.util

    from .checkpoints import cache_dir, cache_status
    from .report import versions

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
    typer.echo(f"  {'sam2 importable':15s} {importlib.util.find_spec('sam2') is not None}")
    typer.echo(f"checkpoint cache: {cache_dir()}")
    for name, p in cache_status().items():
        typer.echo(f"  {name:10s} {p or 'not downloaded'}")


@app.command()
@_handled
def demo(
    output: Path = typer.Option(Path("medseg-demo"), "--output", "-o", help="Output folder."),
    case: str = typer.Option("ct-liver-spleen", "--case", help="Example case (see README)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="SAM2.1 checkpoint."),
    model: Model = typer.Option("tiny", "--model", help="SAM2.1 model size."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    mode: Mode = typer.Option("pair", "--mode", help="pair or volume."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Fetch the public example scans, segment one case, evaluate it, write Slicer files.

    Without SAM2 weights (offline, nothing cached) it runs the weight-free transfer method
    instead and says so; with weights, the method itself.
    """
    from .demo import run_demo

    run_demo(output, case, checkpoint, model.value, device, mode.value, overwrite, _say,
             typer.echo, progress=not STATE["quiet"])


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI and return its exit code (usage errors: 2, one line).

    ``-v``/``-q`` may also be given after the subcommand (``medseg segment ... -q``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = {"-v", "--verbose", "-q", "--quiet"}
    argv = [a for a in argv if a in flags] + [a for a in argv if a not in flags]
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        _quiet_libraries()
        try:
            rc = app(args=argv, prog_name="medseg", standalone_mode=False)
        except Exception as exc:  # the command-line parser's own exceptions (click's kinds)
            return _parser_exit(exc)
    return int(rc or 0)


def _parser_exit(exc: Exception) -> int:
    """Exit code of a parser exception; usage errors as one line (exit 2)."""
    kind = type(exc).__name__
    if kind == "Exit":
        return int(getattr(exc, "exit_code", 0))
    if kind == "Abort":
        typer.echo("medseg: interrupted; no partial output was kept", err=True)
        return EXIT_INTERRUPTED
    if kind == "NoArgsIsHelpError":
        typer.echo(exc.format_message())  # type: ignore[attr-defined]
        return 0
    if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
        msg = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        typer.echo(f"medseg: error: {msg}", err=True)
        return int(exc.exit_code)  # type: ignore[attr-defined]
    raise exc


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one ``medseg: warning: ...`` line (none with -q)."""
    if not STATE["quiet"]:
        text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
        typer.echo(f"medseg: warning: {text}", err=True)


def _quiet_libraries() -> None:
    """nibabel's log messages stay out of the output (ITK's: see ``_handled``)."""
    logging.getLogger("nibabel").setLevel(logging.ERROR)


def run() -> None:  # pragma: no cover - console script
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover - python -m medseg.cli
    run()
