"""notebooks/05_attention_patterns.ipynb runs top to bottom (SMOKE mode: a few short windows of validation text)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "05_attention_patterns.ipynb"


def test_notebook_05_runs(monkeypatch, llama2c_dir, tinystories_dir):
    monkeypatch.setenv("TINYLIB_SMOKE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "pattern by hand == blocks.1.attn.hook_pattern ✓" in text
    assert "stories260K" in text
