"""Print medseg's dependencies from pyproject.toml, one per line (for scripts/setup.sh).

    python scripts/requirements.py [--extra dev] [--exclude sam2 ...]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--extra", action="append", default=[], help="also list this extra")
    ap.add_argument("--exclude", action="append", default=[], help="leave this package out")
    args = ap.parse_args()
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in args.extra:
        reqs += project["optional-dependencies"][extra]
    skip = {e.lower() for e in args.exclude}
    for r in reqs:
        name = re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower()
        if name not in skip:
            print(r)


if __name__ == "__main__":
    main()
