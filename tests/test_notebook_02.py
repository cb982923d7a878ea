"""notebooks/02_flop_token_budget.ipynb runs top to bottom (SMOKE mode: a 4-step tiny run at the end)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_flop_token_budget.ipynb"


def test_notebook_02_runs(tinystories_dir, monkeypatch):
    monkeypatch.setenv("TINYLIB_SMOKE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    for check in ("by hand == tinylib.config.param_counts == the built model ✓",
                  "formula within 2% of PyTorch's FLOP counter ✓", "worked example reproduced ✓",
                  "the plan follows the sliders ✓", "the trainer's logged MFU equals the budget module's ✓"):
        assert check in text
    assert "measured/predicted" in text
