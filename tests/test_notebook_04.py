"""notebooks/04_generation.ipynb runs top to bottom (SMOKE mode: short generations)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_generation.ipynb"


def test_notebook_04_runs(monkeypatch):
    monkeypatch.setenv("TINYLIB_SMOKE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models decode fastest on one thread, even on a busy CPU
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    for check in ("greedy is deterministic ✓", "higher temperature, less predictable text ✓",
                  "a seed makes sampling reproducible ✓", "same tokens with and without the cache ✓"):
        assert check in text
    widget = nb.cells[-2].outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in widget)
