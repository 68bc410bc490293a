"""The few-shot papers' 1-shot protocol on local copies of Synapse (ABD) CT and CHAOS T2 MRI.

    python scripts/benchmark_protocol.py --root DATA --dataset sabs|chaost2
        [--method transfer|sam2] [--checkpoint PATH] [--folds 5] [--out benchmarks/protocol]

DATA holds the preprocessed NIfTI layout of the SSL-ALPNet lineage (also used by GMRD and
Zu et al.): ``<root>/image_<id>.nii.gz`` and ``<root>/label_<id>.nii.gz`` with the label
values of that layout (Synapse/SABS: 1 spleen, 2 right kidney, 3 left kidney, 6 liver;
CHAOST2: 1 liver, 2 right kidney, 3 left kidney, 4 spleen). The data are not
redistributable; get them from the sources the SSL-ALPNet repository lists.

Protocol (setting 1): scans sorted by id and split into ``folds`` contiguous folds; in each
fold the support is the last scan outside the fold (SSL-ALPNet's default support index
-1), every scan of the fold is a query. Per query and organ, the query is restricted to the
slices holding the organ in its reference; those slices are split into 3 chunks, chunk c
paired with the support slice at (2c + 1)/6 of the support organ's extent (medseg
``shots=3``, slice correspondence off, so the chunks follow position); 3D Dice on those
slices. Beside it, what a user gets: medseg with its defaults on the whole query, and the
whole-volume Dice. Prints the papers' table (liver, spleen, left and right kidney, mean)
and writes CSV + JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np

ORGANS = {  # organ -> label value
    "sabs": {"liver": 6, "spleen": 1, "left kidney": 3, "right kidney": 2},
    "chaost2": {"liver": 1, "spleen": 4, "left kidney": 3, "right kidney": 2},
}


def scans(root: Path) -> list[tuple[str, Path, Path]]:
    """(id, image, label) of every scan, sorted by numeric id."""
    out = []
    for img in root.glob("image_*.nii.gz"):
        sid = re.match(r"image_(\w+)\.nii\.gz", img.name).group(1)
        lab = root / f"label_{sid}.nii.gz"
        if lab.is_file():
            out.append((sid, img, lab))
    return sorted(out, key=lambda t: (len(t[0]), t[0]))


def folds(items: list, k: int) -> list[list]:
    n = len(items)
    return [items[i * n // k:(i + 1) * n // k] for i in range(k)]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    t = a.sum() + b.sum()
    return float("nan") if t == 0 else 2.0 * float((a & b).sum()) / float(t)


def organ_slab(query, ref, value: int):
    """The query and its reference restricted to the axial slices holding the organ."""
    from medseg.io import Volume

    ks = np.nonzero((ref.array == value).any(axis=(1, 2)))[0]
    a, b = int(ks.min()), int(ks.max()) + 1
    origin = query.index_to_world(np.array([0.0, 0.0, float(a)]))
    return (Volume(query.array[a:b], query.spacing, origin, query.direction),
            ref.array[a:b] == value)


def run_case(seg, support, s_lab, query, q_ref, organs: dict, method: str) -> list[dict]:
    """Protocol Dice (organ slices) and whole-volume Dice of one query, organ by organ."""
    rows = []
    for organ, value in organs.items():
        if not (q_ref.array == value).any() or not (s_lab.array == value).any():
            continue
        slab, slab_ref = organ_slab(query, q_ref, value)
        proto = seg.segment(support, s_lab, slab, labels=[value], method=method, shots=3,
                            presence="off", correspondence="off")
        whole = seg.segment(support, s_lab, query, labels=[value], method=method)
        rows.append({"organ": organ, "dice_protocol": dice(proto.labels.array == 1, slab_ref),
                     "dice_whole_volume": dice(whole.labels.array == 1,
                                               q_ref.array == value)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--dataset", choices=list(ORGANS), required=True)
    ap.add_argument("--method", choices=["transfer", "sam2"], default="transfer")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/protocol"))
    args = ap.parse_args(argv)

    from medseg.api import Segmenter
    from medseg.io import read_image
    from medseg.report import machine, versions

    items = scans(args.root)
    if len(items) < args.folds + 1:
        raise SystemExit(f"{args.root}: {len(items)} scans; need more than {args.folds}")
    seg = Segmenter(model="tiny", checkpoint=args.checkpoint, device=args.device)
    rows = []
    for fi, fold in enumerate(folds(items, args.folds)):
        outside = [t for t in items if t not in fold]
        sid, s_img, s_lab = outside[-1]
        support, support_label = read_image(s_img), read_image(s_lab)
        for qid, q_img, q_lab in fold:
            for r in run_case(seg, support, support_label, read_image(q_img), read_image(q_lab),
                              ORGANS[args.dataset], args.method):
                rows.append({"fold": fi, "support": sid, "query": qid, **r})
        print(f"fold {fi}: support {sid}, {len(fold)} queries", file=sys.stderr)
    table = summary(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.dataset}_{args.method}"
    with open(args.out / f"protocol_{tag}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (args.out / f"protocol_{tag}.json").write_text(json.dumps(
        {"dataset": args.dataset, "method": args.method, "folds": args.folds,
         "versions": versions(), "machine": machine(), "table": table, "rows": rows}, indent=2))
    print_table(table, args.dataset, args.method)


def summary(rows: list[dict]) -> dict:
    out = {}
    for key in ("dice_protocol", "dice_whole_volume"):
        per = {o: float(np.nanmean([r[key] for r in rows if r["organ"] == o]))
               for o in ("liver", "spleen", "left kidney", "right kidney")
               if any(r["organ"] == o for r in rows)}
        per["mean"] = float(np.mean(list(per.values())))
        out[key] = per
    return out


def print_table(table: dict, dataset: str, method: str) -> None:
    cols = ["liver", "spleen", "left kidney", "right kidney", "mean"]
    print(f"{dataset}, medseg {method} (Dice x 100)")
    print(f"{'':26s}" + "".join(f"{c:>14s}" for c in cols))
    for key, name in (("dice_protocol", "organ slices (protocol)"),
                      ("dice_whole_volume", "whole volume")):
        print(f"{name:26s}" + "".join(f"{100 * table[key].get(c, np.nan):14.2f}" for c in cols))


if __name__ == "__main__":
    main()
