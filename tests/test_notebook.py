"""The quickstart notebook runs top to bottom on CPU."""

import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("MEDSEG_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("MEDSEG_CHECKPOINT", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
    assert images >= 4
    assert "Dice" in text and "seg.nrrd" in text
    if "RANDOM WEIGHTS" in text:
        assert "THE MASKS BELOW ARE MEANINGLESS" in text
    assert (tmp_path / "out" / "qc.png").is_file()
