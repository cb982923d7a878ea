"""Every notebook runs top to bottom in smoke mode (TINYLIB_SMOKE=1) with its exercises' solutions filled in
(TINYLIB_SOLUTIONS=1), prints the checks it teaches, and leaves data/ and checkpoints/ as they were.

Notebooks are committed without outputs; each one ends its checks with a "✓" line that is asserted here.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tinylib.data import prepare_dataset
from tinylib.exercises.catalog import REGISTRY
from tinylib.widgets.models import open_model, validation_stories

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

# notebook -> (fixtures that skip with a reason when ../shared is absent, lines its output must contain)
CASES = {
    "00_start_here": ((), (
        "SDPA and written-out attention give the same logits ✓", "environment checked ✓",
        "every notebook is in the table ✓")),
    "01_data_and_tokenizers": (("tinystories_dir", "gpt2_available"), (
        "round trip ✓", "batches ✓", "official and HF formats parse to the same story ✓",
        "your merges encode each word exactly as tiktoken does ✓",
        "your frame_stories matches the first 20 stories of train.bin ✓")),
    "02_flop_token_budget": (("tinystories_dir", "gpt2_available"), (
        "by hand == tinylib.config.param_counts == the built model ✓",
        "formula within 2% of PyTorch's FLOP counter ✓", "worked example reproduced ✓",
        "your param_count matches every preset, built ✓", "6 x the",
        "your formula is within 2% of PyTorch's FLOP counter ✓", "the table holds ✓",
        "your training_hours reproduces every plan, and hours x GPUs x price its cost ✓",
        "the plan follows the sliders ✓", "the trainer's logged MFU equals the budget module's ✓",
        "measured/predicted")),
    "03_training": (("tinystories_dir",), (
        "loss went down ✓", "the gradient of the whole batch ✓", "bit for bit ✓", "norms unchanged ✓",
        "SDPA == eager attention ✓", "fp32 weights under bf16 autocast ✓",
        "2 processes (DDP, gloo) == 1 process ✓")),
    "04_generation": ((), (
        "greedy is deterministic ✓", "higher temperature, less predictable text ✓",
        "a seed makes sampling reproducible ✓", "same tokens with and without the cache ✓")),
    "05_attention_patterns": (("llama2c_dir", "tinystories_dir"), (
        "pattern by hand == blocks.1.attn.hook_pattern ✓",
        "a previous-token head and an attention sink on this prompt ✓",
        "your induction_score == head_scores' on the model ✓",
        "stories260K: previous-token heads, no induction heads, the repeat barely easier ✓",
        "scores higher on text than on random tokens ✓")),
    "06_neurons": (("llama2c_dir", "tinystories_dir"), (
        "stories260K", "your word_mask and cohens_d agree with tinylib on the model ✓",
        "your top_positions == top_activations' ranking ✓",
        "stories260K: two random positions give a large d; the names neuron is far above chance ✓",
        "stories260K: L3N114 off the mask is mostly pronouns and capitalised words",
        "stories260K: the names neuron responds to more than the current token ✓",
        "stories260K: a clean neuron (one class, many tokens) and mixed neurons (four or more classes) ✓",
        "one coloured span per token ✓", "graded, not on/off ✓")),
    "07_ablations": (("llama2c_dir", "tinystories_dir"), (
        "stories260K", "your zero-ablation hook reproduces ablate_each_head ✓",
        "your mean-ablation hook reproduces ablate_each_head ✓",
        "stories260K: mean ablation gentler in total, not for the costliest head; no head essential ✓",
        "stories260K: no induction head; the second copy is harder; no head's excess reaches 0.1 nats ✓",
        "contributions sum to the logit ✓", "your head attribution == direct_logit_attribution's ✓")),
    "08_induction_heads_form": (("tinystories_dir",), (
        "more than half of every mixed window is random tokens ✓", "scores computed on every checkpoint ✓",
        "your induction_score_repeated == scores_from_patterns on the model ✓", "phase-change figure drawn ✓",
        "plain: no induction head ✓", "placed to 25 steps by the dense checkpoints ✓",
        "the loss gap measured at equal steps and at equal text tokens ✓",
        "in-context scores stated with their intervals ✓",
        "your in_context_score == icl_score on the model ✓",
        "a previous-token head in layer 0, induction heads in layer 1 (L1H0, and L1H1 at 0.9",
        "the previous-token head L0H1 is the costliest in layer 0 ✓",
        "your k_composition == composition_scores on the model ✓",
        "the previous-token head composes with both induction heads, far above random pairs ✓",
        "your ablation_table == ablated_induction_scores on the model ✓",
        "no other layer-0 head does ✓",
        "the other layer-0 heads that matter feed the queries, not the keys ✓",
        "your ov_copying == copying_accuracy(full_ov_circuit(...)) ✓",
        "the induction head writes the token it attends to; the direct-path circuit alone does not show it ✓",
        "patching recovers 1 at the clean final stream and 0 where nothing reaches the answer ✓",
        "the answer sits at the names until the last block, where one head moves it to the last position ✓",
        "== the head map's ✓",
        "the top patching head is not a name mover; another last-block head behaves like one ✓",
        "steering with strength 0 equals plain generation token for token ✓",
        "steering moves the sentiment both ways, and every nonzero strength costs fluency ✓")),
    "09_fine_tuning": (("tinystories_dir",), (
        "DERIVED set", "the prompt a request sends is the prompt training used ✓",
        "bad examples are reported with their line ✓", "your targets == the fine-tuning loop's ✓",
        "your masked loss == the model's loss ✓",
        "packing fills windows at least as well as padding; the stream wastes nothing ✓",
        "the checkpoint says stage instruct and names its parent ✓",
        "your word inclusion == the evaluation's ✓",
        "smoke mode: 16 requests cannot show a difference; full mode asserts it on 200 ✓")),
    "10_experiments": ((), (  # smoke mode reads the shipped experiments/results/cpu_study/
        "every run gets the same FLOPs, within one optimizer step ✓", "the table has every run ✓",
        "GPT vs LLaMA compared at equal FLOPs ✓",
        "your budget_tokens == token_target, what the runner gives each run ✓",
        "your loss_at == value_at on every run's curve ✓",
        "your gap_at_equal_flops == the comparison above at the end of the budget ✓",
        "wsd's gap is beyond two seeds' noise only when paired; relu2's is within it either way ✓")),
    "11_architecture_lab": ((), (
        "banded mask == full attention when the window covers the sequence ✓",
        "factorized embeddings with r = d and identity factors == plain embeddings ✓",
        "QK-norm: scaling W_q and W_k leaves the outputs unchanged ✓",
        "ReLU-squared MLP == down(relu(up x)^2) ✓",
        "soft-cap bounds the logits ✓", "every block starts as the identity ✓", "then linear to the floor ✓",
        "fp8 checked on this machine ✓", "results section ran ✓",
        "your sliding_window_mask is where the W=8 model's attention patterns are nonzero ✓",
        "your soft_cap turns the uncapped model's logits into the capped model's ✓",
        "your wsd_lr reproduces the plotted schedule step by step ✓")),
    "12_build_it_yourself": (("tinystories_dir",), (
        "your merges == tinylib's trainer's merges, in order ✓", "your encodings == tinylib's tokenizer's",
        "relative position only ✓", "your model gives tinylib's logits, within 1e-4 in fp32 ✓",
        "five of your training steps == tinylib's train_step, within 1e-4 per weight ✓",
        "your model trained: validation loss below",
        "your sampler with your cache == without it == tinylib's generate, id for id ✓",
        "your own model, trained by your own step, wrote this with your own sampler ✓")),
    "13_evaluation": (("tinystories_dir", "llama2c_dir"), (
        "at least 600 items in at least 5 families of at least 100 ✓",
        "your mean_continuation_loss == the library's option scores on a real item ✓",
        "your is_right agrees with the benchmark on every item ✓",
        "your centred_accuracy and bootstrap_interval reproduce the table's numbers ✓",
        "all counted wrong;", "every schema item is a tie", "your pair scored by every model ✓",
        "an item where the lower loss is not the right answer ✓")),
    "14_sparse_autoencoders": ((), (  # smoke mode reads the shipped experiments/results/compare/
        "your sae_loss == SparseAutoencoder's on the model's activations ✓",
        "your topk_activation == the autoencoder's, L0 <= k ✓", "reconstruction error (per dim, scaled)",
        "an exact identity spliced in leaves the loss unchanged ✓", "your loss_recovered == evaluate_sae's ✓",
        "your label_entropy == context_entropy's ✓",
        "neurons and features of one layer measured with intervals ✓",
        "steering with a feature at strength 0 equals plain generation token for token ✓",
        "every stated difference recomputed from the results ✓")),
}


def snapshot() -> set[tuple[str, int, int]]:
    """Every file under data/ and checkpoints/, with its size and modification time."""
    return {(str(p.relative_to(ROOT)), p.stat().st_size, p.stat().st_mtime_ns)
            for folder in ("data", "checkpoints") for p in (ROOT / folder).rglob("*") if p.is_file()}


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
    monkeypatch.setenv("TINYLIB_SOLUTIONS", "1")
    if name == "04_generation":
        # tiny models decode fastest on one thread, even on a busy CPU
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = snapshot()
    nb = run(name)
    assert snapshot() == before, "smoke mode must not write into data/ or checkpoints/"
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    for check in checks:
        assert check in text
    for ex in (ex for ex in REGISTRY.values() if ex.notebook == name):
        assert f"✓ {ex.title}:" in text, f"exercise {ex.name} was not checked"
    if name == "04_generation":  # the story generator widget rendered
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                   for o in nb.cells[-2].outputs)


# 05-07 without ../shared: the shipped reference model, and stories decoded from data/ (else sampled from it)
WITHOUT_SHARED = {
    "05_attention_patterns": ("reference checkpoint", "pattern by hand == blocks.1.attn.hook_pattern ✓",
                              "a previous-token head and an attention sink on this prompt ✓",
                              "by this measure"),
    "06_neurons": ("reference checkpoint", "your word_mask and cohens_d agree with tinylib on the model ✓",
                   "graded, not on/off ✓"),
    "07_ablations": ("reference checkpoint", "your zero-ablation hook reproduces ablate_each_head ✓",
                     "your head attribution == direct_logit_attribution's ✓"),
}


@pytest.mark.parametrize("name", sorted(WITHOUT_SHARED))
def test_interp_notebook_runs_without_shared(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLIB_SHARED", str(tmp_path))  # empty: no stories260K, no TinyStories text
    monkeypatch.delenv("TINYSTORIES_DIR", raising=False)
    monkeypatch.setenv("TINYLIB_SMOKE", "1")
    monkeypatch.setenv("TINYLIB_SOLUTIONS", "1")
    before = snapshot()
    nb = run(name)
    assert snapshot() == before, "smoke mode must not write into data/ or checkpoints/"
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    for check in WITHOUT_SHARED[name]:
        assert check in text
    assert "stories260K:" not in text, "a fact about stories260K was checked on another model"
    for ex in (ex for ex in REGISTRY.values() if ex.notebook == name):
        assert f"✓ {ex.title}:" in text, f"exercise {ex.name} was not checked"


def test_validation_stories_fall_back_without_shared(tmp_path, monkeypatch):
    """../shared's text, else stories decoded from data/tinystories-*/val.bin, else stories a model writes."""
    monkeypatch.setenv("TINYLIB_SHARED", str(tmp_path / "no-shared"))
    data = tmp_path / "data"
    found = open_model("untrained")
    with pytest.raises(FileNotFoundError, match="TINYLIB_SHARED"):
        validation_stories(2, data_dir=data)
    sampled = validation_stories(2, found.tokenizer, found.model, data_dir=data)
    assert len(sampled) == 2 and "SAMPLED" in sampled.source

    written = [f"Story {i}: Lily met a dog named Max {i} times. They were happy." for i in range(40)]
    source = tmp_path / "stories.txt"
    source.write_text("\n<|endoftext|>\n".join(written) + "\n", encoding="utf-8")
    prepare_dataset(source, "tinystories-512", data / "tinystories-512", val_fraction=0.2, num_proc=1,
                    progress=False)
    decoded = validation_stories(3, found.tokenizer, found.model, data_dir=data)
    assert len(decoded) == 3 and set(decoded) <= set(written) and "val.bin" in decoded.source
