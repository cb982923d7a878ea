"""notebooks/01_data_and_tokenizers.ipynb runs top to bottom (SMOKE mode: a few hundred stories)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_data_and_tokenizers.ipynb"


def test_notebook_01_runs(tinystories_dir, gpt2_available, monkeypatch):
    monkeypatch.setenv("TINYLIB_SMOKE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    for check in ("round trip ✓", "batches ✓", "official and HF formats parse to the same story ✓"):
        assert check in text
