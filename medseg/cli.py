"""Command line: ``medseg segment | evaluate | info | demo``.

``segment``'s options are generated from the settings' fields (:mod:`medseg.config`): one
definition of each option's vocabulary, default, check and help. Only Typer and the light
settings modules load at start-up (the rest through :func:`~medseg._lazy.lazy_import`), so
``medseg --help`` is quick. User mistakes print one line and exit with a documented code
(see :mod:`medseg.errors`); ``-v`` adds the traceback; library errors name library
options, printed here as flags.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
import typing
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer

from . import config
from . import options as opt
from ._allocator import tune_allocator
from ._lazy import available, lazy_import
from ._version import __version__
from .errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    EXIT_TERMINATED,
    MedsegError,
    UsageError,
    is_out_of_memory,
)

app = typer.Typer(
    name="medseg",
    help="Training-free one-shot segmentation of 3D medical volumes with SAM2: label one slice "
    "of a support scan, segment the same structure in new query scans.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
STATE = {"verbose": False, "quiet": False}
checkpoints = lazy_import("medseg.checkpoints")
commands = lazy_import("medseg.commands")
demo_module = lazy_import("medseg.demo")
export = lazy_import("medseg.export")
metrics = lazy_import("medseg.metrics")
qc = lazy_import("medseg.qc")
report = lazy_import("medseg.report")
torch = lazy_import("torch")


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


Model = _choices("Model", opt.MODELS)
Mode = _choices("Mode", opt.MODES)


def flag_of(option: str | None) -> str | None:
    """The command-line flag of a library option name (``shots`` -> ``--shots``)."""
    return FLAGS.get(option or "")


def _flags() -> dict[str, str]:
    out = {"format": "--format", "report": "--report", "qc": "--qc", "tolerance": "--tolerance",
           "series": "--series", "device": "--device", "precision": "--precision"}
    for cls in SETTINGS.values():
        for leaf in config.leaves(cls):
            if leaf.opt.flags:
                out[leaf.name] = leaf.opt.flags[0].split("/")[0]
                out.setdefault(leaf.field.name, out[leaf.name])
    return out


SETTINGS = {"model": config.ModelConfig, "segment": config.SegmentConfig,
            "output": config.OutputSpec, "cohort": config.CohortSpec}
FLAGS = _flags()


class Terminated(KeyboardInterrupt):
    """SIGTERM (schedulers, ``timeout``): handled like Ctrl-C, nothing partial is kept."""


def _on_sigterm(signum, frame):  # pragma: no cover - exercised in a subprocess test
    raise Terminated()


def flag_message(exc: MedsegError) -> str:
    """The error's message with its library option named as the command-line flag."""
    msg = str(exc)
    flag = flag_of(exc.option)
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
            signum = getattr(exc, "signum", None)  # OutputsKept: the write was completed first
            term = isinstance(exc, Terminated) or signum == signal.SIGTERM
            kept = "the outputs were completed first and are whole" if signum is not None \
                else "no partial output was kept"
            typer.echo(f"medseg: {'terminated' if term else 'interrupted'}; {kept}", err=True)
            raise typer.Exit(EXIT_TERMINATED if term else EXIT_INTERRUPTED) from None
        except MedsegError as exc:
            if is_out_of_memory(exc):  # e.g. a library that could not be mapped into memory
                _out_of_memory()
            if STATE["verbose"]:
                traceback.print_exc()
            typer.echo(f"medseg: error: {flag_message(exc)}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except MemoryError:
            _out_of_memory()
        except Exception as exc:  # a bug, not a user mistake (or memory by another name)
            if is_out_of_memory(exc) or is_out_of_memory(exc.__cause__ or exc):
                _out_of_memory()
            if STATE["verbose"]:
                traceback.print_exc()
            typer.echo(f"medseg: internal error: {type(exc).__name__}: {exc} "
                       "(run with -v for the traceback and please report it)", err=True)
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper


def _out_of_memory() -> None:
    typer.echo("medseg: error: out of memory (host RAM); use a smaller --batch-size, a "
               "smaller query, or a machine with more memory", err=True)
    raise typer.Exit(EXIT_RUNTIME) from None


class _StderrHandler(logging.StreamHandler):
    """Log lines to whatever ``sys.stderr`` is when they are written."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    medseg_log = logging.getLogger("medseg")
    medseg_log.handlers[:] = []
    medseg_log.setLevel(logging.NOTSET)
    medseg_log.propagate = True
    if verbose:  # medseg's own stage log with timings (not every library's debug output)
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("medseg: %(message)s"))
        medseg_log.setLevel(logging.INFO)
        medseg_log.handlers[:] = [handler]
        medseg_log.propagate = False
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


def _out(msg: str) -> None:
    """A result line (paths written): on stdout, one per line, for scripts."""
    typer.echo(msg)


# --- segment: generated from the settings' fields ---------------------------------------------

INPUTS = {  # the command's own inputs (not settings)
    "support": (Optional[list[Path]], typer.Option(
        "--support", "-s", metavar="SCAN", readable=False,
        help="Support scan(s) with the painted slice(s): NIfTI, NRRD or DICOM folder; "
        "repeatable (every query slice may take its match from any).")),
    "support_label": (Optional[list[Path]], typer.Option(
        "--support-label", "-l", metavar="LABEL", readable=False,
        help="Its label(s): label map, Slicer .seg.nrrd, DICOM-SEG or RTSTRUCT (default: "
        "found beside each support); one painted slice is enough; repeatable, in the order "
        "of --support.")),
    "query": (Optional[list[str]], typer.Option(
        "--query", "-i", metavar="QUERY", help="Scan(s) to segment: a file, a DICOM folder, a folder of "
        "scans, a glob, or a .txt/.csv list; repeatable. Omitted: the support scan itself.")),
}


PANELS = {"ModelConfig": "Model", "SegmentConfig": "What and how",
          "SupportConfig": "Support", "BankConfig": "Support", "LocateConfig": "Locate",
          "PostConfig": "Clean-up", "OutputSpec": "Outputs", "CohortSpec": "Cohorts"}


def _cli_type(leaf: config.Leaf, hints: dict) -> Any:
    """The Python type Typer sees for a settings field."""
    o = leaf.opt
    if o.choices is not None:
        return Optional[_choices(leaf.name.title().replace("_", ""), o.choices)]
    if o.parse is not None:
        return Optional[str]
    return hints[leaf.field.name]


def segment_parameters() -> list[inspect.Parameter]:
    """The ``segment`` command's parameters: its inputs, then every settings field."""
    params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None,
                                annotation=Annotated[t, o]) for n, (t, o) in INPUTS.items()]
    for cls in SETTINGS.values():
        for leaf in config.leaves(cls):
            if not leaf.opt.cli:
                continue
            owner = _owner(cls, leaf.path)
            kind = _cli_type(leaf, typing.get_type_hints(owner))
            default = leaf.default
            shown = ",".join(default) if isinstance(default, tuple) else default
            info = typer.Option(*leaf.opt.flags, help=leaf.opt.help, metavar=leaf.opt.metavar,
                                show_default=shown is not None and shown is not False,
                                readable=False,  # medseg checks paths (exit 3 or 4, not 2)
                                rich_help_panel=PANELS.get(owner.__name__))
            params.append(inspect.Parameter(leaf.name, inspect.Parameter.KEYWORD_ONLY,
                                            default=shown, annotation=Annotated[kind, info]))
    return params


def _owner(cls: type, path: tuple[str, ...]) -> type:
    """The settings class that declares the field at ``path``."""
    for part in path[:-1]:
        cls = typing.get_type_hints(cls)[part]
    return cls


def settings_from(options: dict[str, Any]) -> dict[str, Any]:
    """The settings objects built from the command's options (each checked)."""
    out = {}
    for key, cls in SETTINGS.items():
        given = {}
        for leaf in config.leaves(cls):
            if leaf.name not in options:
                continue
            value = options[leaf.name]
            if leaf.opt.parse is not None and isinstance(value, str):
                value = leaf.opt.parse(value)
            given[leaf.name] = value
        out[key] = config.with_options(cls(), **given)
    return out


def _segment(**options: Any) -> None:
    """Segment query scan(s) from labelled support scan(s).

    One painted slice of a structure is enough: medseg completes it through the support scan first. Without --query the support scan itself is segmented (the painted slices come back exactly as drawn); correct slices of a result in 3D Slicer and rerun with the corrected .seg.nrrd as the label. Several queries run as a cohort: one model load, a summary (cohort_summary.csv/.json), failures recorded and skipped.
    """  # noqa: E501 - one paragraph per line: the help wraps it to the terminal
    commands.segment(options, settings_from(options), _say, _out, STATE["verbose"],
                     STATE["quiet"])


_segment.__signature__ = inspect.Signature(segment_parameters())  # type: ignore[attr-defined]
_segment.__annotations__ = {p.name: p.annotation for p in _segment.__signature__.parameters.values()}
segment = app.command("segment")(_handled(_segment))


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
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Score a structure the "
                                       "reference lacks (else an error)."),
) -> None:
    """Dice, IoU, HD95, ASSD and surface Dice (mm) of a prediction against a reference."""
    opt.check_positive(tolerance, "tolerance")
    outs = [p for p in (csv, json_out, plot) if p]
    for p in outs:
        export.check_output_dir(p.parent)
    export.check_outputs(outs, overwrite=overwrite, inputs=[pred, ref])
    res = metrics.evaluate_files(pred, ref, _ints(labels, "--labels"),
                                 _ints(ref_labels, "--ref-labels"), tolerance, allow_missing)
    typer.echo(metrics.format_table(res))
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
            tx.add(plot, lambda p: qc.per_slice_dice_plot(res.per_slice, p, res.names,
                                                      "axial slice (inferior to superior)"))
    for p in outs:
        _say(f"wrote {p}")


@app.command()
@_handled
def info() -> None:
    """Versions, compute devices, sam2 installation and checkpoint cache."""
    v = report.versions()
    typer.echo(f"medseg {v.pop('medseg')}  (python {v.pop('python')}, {sys.platform})")
    for k, val in v.items():
        typer.echo(f"  {k:15s} {val}")
    try:
        typer.echo(f"  {'cuda':15s} {torch.cuda.is_available()}"
                   + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
        mps = getattr(torch.backends, "mps", None)
        typer.echo(f"  {'mps':15s} {bool(mps and mps.is_available())}")
    except MedsegError:
        typer.echo("  torch           not importable")
    typer.echo(f"  {'sam2 importable':15s} {available('sam2')}")
    typer.echo(f"checkpoint cache: {checkpoints.cache_dir()}")
    for name, p in checkpoints.cache_status().items():
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
    demo_module.run_demo(output, case, checkpoint, model.value, device, mode.value, overwrite, _say,
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


WORKER = "MEDSEG_WORKER"  # set in the process that does the work under a supervisor
NATIVE_DEATHS = {signal.SIGKILL: "killed by the system", signal.SIGSEGV: "a native library "
                 "crashed", signal.SIGABRT: "a native library aborted", signal.SIGBUS: "a "
                 "native library crashed"}


def run() -> None:  # pragma: no cover - console script
    """The console script: a command that does work runs in a child process watched by
    this one, so that a death no Python code can catch -- the system's out-of-memory
    killer, a native library crashing or aborting when an allocation fails -- still ends
    with one line and exit 5; help and version answer at once, in this process."""
    argv = sys.argv[1:]
    light = not argv or any(a in ("-h", "--help", "--version") for a in argv)
    if os.environ.get(WORKER) or light:
        signal.signal(signal.SIGTERM, _on_sigterm)
        tune_allocator()
        finish(main(argv))
    sys.exit(supervise(argv))


def finish(code: int) -> NoReturn:
    """Exit with ``code`` as Python does -- exit handlers run, standard streams flushed --
    but without tearing the interpreter down object by object, which took about a second
    after a SAM2 run (torch and the model). Nothing of medseg's is open by then: outputs are
    published before a command returns. With another (non-daemon) thread still running,
    the ordinary exit, which waits for it."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        sys.exit(code)
    try:
        atexit._run_exitfuncs()  # what a normal exit runs (logging, temporary files, Ray)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed, or a broken pipe
                pass
        os._exit(code)


def supervise(argv: list[str]) -> int:
    """Run ``medseg ARGV`` in a child process; its exit code, or 5 (130, 143) with one line
    when it died of a signal."""
    env = {**os.environ, WORKER: "1"}
    child = subprocess.Popen([sys.executable, "-m", "medseg.cli", *argv], env=env)

    def forward(signum, frame):  # Ctrl-C reaches the child through the terminal's group
        if signum != signal.SIGINT:
            child.send_signal(signum)

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, forward)
    rc = child.wait()
    if rc >= 0:
        return rc
    sig = signal.Signals(-rc)
    if sig in (signal.SIGINT, signal.SIGTERM):
        return EXIT_INTERRUPTED if sig == signal.SIGINT else EXIT_TERMINATED
    why = NATIVE_DEATHS.get(sig, f"it received {sig.name}")
    typer.echo(f"medseg: error: the work stopped ({why}, {sig.name}): most likely out of memory "
               "(host RAM); use a smaller --batch-size, a smaller query, or a machine with "
               "more memory", err=True)
    return EXIT_RUNTIME


if __name__ == "__main__":  # pragma: no cover - python -m medseg.cli
    signal.signal(signal.SIGTERM, _on_sigterm)
    tune_allocator()
    finish(main())
