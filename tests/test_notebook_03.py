"""notebooks/03_training.ipynb runs top to bottom in smoke mode (a few training steps per run)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_training.ipynb"


def test_notebook_03_runs(tinystories_dir, monkeypatch):
    monkeypatch.setenv("TINYLIB_SMOKE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "loss went down ✓" in text and "bit for bit ✓" in text
