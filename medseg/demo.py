"""``medseg demo``: the public example case end to end, with or without SAM2 weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import data, export
from ._lazy import lazy_import
from .api import Segmenter
from .checkpoints import resolve_checkpoint
from .errors import ModelError, UsageError

metrics = lazy_import("medseg.metrics")

BANNER = """
==============================================================================
 SAM2 did not run: no SAM2.1 checkpoint is available.
 {reason}
 Shown instead: the weight-free 'transfer' method (each query slice takes the
 mask of its best-matched augmented support slice). With the checkpoint in
 place, the same command runs SAM2.
==============================================================================
"""


def run_demo(output: Path, case: str, checkpoint: Path | None, model: str, device: str, mode: str,
             overwrite: bool, say: Callable[[str], None], echo: Callable[[str], None],
             progress: bool = True) -> dict[str, Path]:
    """Fetch the example scans, segment ``case``, evaluate it, write Slicer files.

    When no SAM2 checkpoint can be had (offline, nothing cached), the weight-free
    ``transfer`` method runs instead, and the output says so.
    """
    if case not in data.CASES:
        raise UsageError(f"--case {case!r}: choose one of {', '.join(data.CASES)}")
    c = data.CASES[case]
    say(f"fetching example data into {data.data_dir()} ...")
    data.fetch(progress=progress)
    p = data.case_paths(c)
    paths = export.output_paths(output, export.query_stem(p["query"]), ("nifti", "seg.nrrd"),
                                None, output / "qc.png")
    export.check_outputs(list(paths.values()), overwrite=overwrite, inputs=[])
    method = "sam2"
    try:
        ckpt, _ = resolve_checkpoint(model, checkpoint, progress=progress)
    except ModelError as exc:
        say(BANNER.format(reason=exc))
        ckpt, method = None, "transfer"
    seg = Segmenter(model=model, checkpoint=ckpt, device=device, progress=progress)
    res = seg.segment(p["support"], p["support_label"], p["query"], labels=list(c.labels),
                      names=list(c.names), mode=mode, window=c.window, method=method)
    saved = res.save(output, overwrite=overwrite, qc=output / "qc.png")
    ev = metrics.evaluate_files(saved["nifti"], p["query_ref"], list(range(1, len(c.labels) + 1)),
                        list(c.ref_labels))
    echo(metrics.format_table(ev))
    if res.report.random_weights:
        say("WARNING: random-weight SAM2 checkpoint: these scores are meaningless.")
    say(f"method: {method}; reference: {c.reference}")
    for kind, path in saved.items():
        say(f"  {kind:9s} {path}")
    say("open the .seg.nrrd in 3D Slicer together with the query scan (drag and drop both).")
    return saved
