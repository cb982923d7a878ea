"""Every notebook runs top to bottom in smoke mode (TINYLIB_SMOKE=1) and prints the checks it teaches.

Notebooks are committed without outputs; each one ends its checks with a "✓" line that is asserted here.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# notebook -> (fixtures that skip with a reason when ../shared is absent, lines its output must contain)
CASES = {
    "01_data_and_tokenizers": (("tinystories_dir", "gpt2_available"), (
        "round trip ✓", "batches ✓", "official and HF formats parse to the same story ✓")),
    "02_flop_token_budget": (("tinystories_dir",), (
        "by hand == tinylib.config.param_counts == the built model ✓",
        "formula within 2% of PyTorch's FLOP counter ✓", "worked example reproduced ✓",
        "the plan follows the sliders ✓", "the trainer's logged MFU equals the budget module's ✓",
        "measured/predicted")),
    "03_training": (("tinystories_dir",), ("loss went down ✓", "bit for bit ✓")),
    "04_generation": ((), (
        "greedy is deterministic ✓", "higher temperature, less predictable text ✓",
        "a seed makes sampling reproducible ✓", "same tokens with and without the cache ✓")),
    "05_attention_patterns": (("llama2c_dir", "tinystories_dir"), (
        "pattern by hand == blocks.1.attn.hook_pattern ✓", "stories260K")),
    "06_neurons": (("llama2c_dir", "tinystories_dir"), ("one coloured span per token ✓", "stories260K")),
    "07_ablations": (("llama2c_dir", "tinystories_dir"), ("contributions sum to the logit ✓", "stories260K")),
}


def run(name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook without outputs"
    )
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_runs(name, request, monkeypatch):
    fixtures, checks = CASES[name]
    for fixture in fixtures:
        request.getfixturevalue(fixture)
    monkeypatch.setenv("TINYLIB_SMOKE", "1")
    if name == "04_generation":
        # tiny models decode fastest on one thread, even on a busy CPU
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = run(name)
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    for check in checks:
        assert check in text
    if name == "04_generation":  # the story generator widget rendered
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                   for o in nb.cells[-2].outputs)
