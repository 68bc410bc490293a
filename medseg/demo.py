"""``medseg demo``: what a user who paints one slice gets, on public example scans.

1. the support label of the example case is blanked to one painted slice per structure
   (its largest): what a user paints (``support_painted.nii.gz``);
2. medseg segments the rest of that scan from it (the painted scan itself) and scores it
   against the full label;
3. it segments the other scan of the case from the same painted slice and scores it
   against that scan's reference;
4. it writes Slicer files and QC pictures, and says how to correct a slice and rerun.

With SAM2 weights the method runs; without (offline, nothing cached) the weight-free
``transfer`` method runs instead, and says so. Rerunning the demo into its own folder
replaces its own earlier outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import data, export
from ._lazy import lazy_import
from .api import Segmenter
from .checkpoints import resolve_checkpoint
from .errors import ModelError, OutputError, UsageError
from .frames import volume_to_frames
from .io import Volume, read_image, write_image
from .labels import read_support_label

metrics = lazy_import("medseg.metrics")

MARKER = ".medseg-demo"  # the folder is the demo's own: its outputs may be replaced
BANNER = """
==============================================================================
 SAM2 did not run: no SAM2.1 checkpoint is available.
 {reason}
 Shown instead: the weight-free 'transfer' method (the painted slice completed
 through its scan by registration; each query slice takes the mask of its
 best-matched support slice). With the checkpoint in place, the same command
 runs SAM2.
==============================================================================
"""


def painted_label(image: Volume, masks: dict[int, np.ndarray]) -> Volume:
    """A label map holding, per structure, only its largest axial slice."""
    stack = volume_to_frames(image)
    arr = np.zeros(image.shape, np.uint16)
    for v, m in masks.items():
        f = stack.view_of(m)
        k = int(np.argmax(f.sum(axis=(1, 2))))
        one = np.zeros(f.shape, bool)
        one[k] = f[k]
        arr[stack.to_volume_array(one)] = v
    return image.with_array(arr)


def _folder(output: Path, overwrite: bool) -> bool:
    """Whether the demo may replace what is in ``output`` (its own earlier run)."""
    own = (output / MARKER).is_file()
    if output.exists() and any(output.iterdir()) and not (own or overwrite):
        raise OutputError(f"{output}: holds files that are not an earlier demo's; choose another "
                          "folder with -o or pass --overwrite")
    export.prepare_output_dir(output)
    (output / MARKER).write_text("written by medseg demo; its outputs here are replaced when "
                                 "it runs again\n", encoding="utf-8")
    return True


def run_demo(output: Path, case: str, checkpoint: Path | None, model: str, device: str, mode: str,
             overwrite: bool, say: Callable[[str], None], echo: Callable[[str], None],
             progress: bool = True) -> dict[str, Path]:
    """Fetch the example scans, paint one slice, segment that scan and the other, evaluate,
    write Slicer files (see the module docstring). Returns the query's output paths."""
    if case not in data.CASES:
        raise UsageError(f"--case {case!r}: choose one of {', '.join(data.CASES)}")
    c = data.CASES[case]
    say(f"fetching example data into {data.data_dir()} ...")
    data.fetch(progress=progress)
    p = data.case_paths(c)
    replace = _folder(output, overwrite)
    method = "sam2"
    try:
        ckpt, _ = resolve_checkpoint(model, checkpoint, progress=progress)
    except ModelError as exc:
        say(BANNER.format(reason=exc))
        ckpt, method = None, "transfer"
    support = read_image(p["support"], name="support")
    masks = {v: read_support_label(p["support_label"], support).mask(v) for v in c.labels}
    painted = output / "support_painted.nii.gz"
    write_image(painted_label(support, masks), painted)
    seg = Segmenter(model=model, checkpoint=ckpt, device=device, progress=progress)
    opts = {"labels": list(c.labels), "names": list(c.names), "mode": mode, "window": c.window,
            "method": method}
    say(f"\n1. the support scan from one painted slice per structure ({painted.name}):")
    own = seg.segment(p["support"], painted, None, **opts)
    own.save(output, stem="support", overwrite=replace, qc=output / "support_qc.png")
    ref = output / "support_reference.nii.gz"
    arr = np.zeros(support.shape, np.uint16)
    for v in reversed(list(c.labels)):
        arr[masks[v]] = v
    write_image(support.with_array(arr), ref)
    echo(_table(output / "support_labels.nii.gz", ref, c, c.labels))
    say(f"\n2. another scan ({Path(p['query']).name}) from the same painted slice:")
    res = seg.segment(p["support"], painted, p["query"], **opts)
    saved = res.save(output, overwrite=replace, qc=output / "qc.png")
    echo(_table(saved["nifti"], Path(p["query_ref"]), c, c.ref_labels))
    _closing(say, res, method, c, saved, p, output)
    return saved


def _table(pred: Path, ref: Path, case: data.Case, ref_labels) -> str:
    ev = metrics.evaluate_files(pred, ref, list(range(1, len(case.labels) + 1)), list(ref_labels))
    return metrics.format_table(ev)


def _closing(say, res, method: str, c: data.Case, saved: dict, p: dict, output: Path) -> None:
    if res.report.random_weights:
        say("WARNING: random-weight SAM2 checkpoint: these scores are meaningless.")
    say(f"\nmethod: {method}; reference: {c.reference}")
    for kind, path in saved.items():
        say(f"  {kind:9s} {path}")
    say("open a .seg.nrrd in 3D Slicer together with its scan (drag and drop both). To "
        "correct: edit slices of support.seg.nrrd in Slicer's Segment Editor, save, and run\n"
        f"  medseg segment -s {p['support']} -l {output / 'support.seg.nrrd'} -o {output}/fixed\n"
        "the slices you changed are kept exactly and the rest is estimated again.")
