"""Shared test fixtures: where ../shared lives, and skips that say why when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TINYLIB_SHARED", ROOT.parent / "shared"))

# Offline defaults so a plain `pytest` behaves like .ci/run when ../shared is beside the repo.
if (SHARED / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
if (SHARED / "data" / "tinystories").is_dir():
    os.environ.setdefault("TINYSTORIES_DIR", str(SHARED / "data" / "tinystories"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Decoding a tiny model is a chain of tiny ops:
    one torch thread is fastest (and immune to a busy CPU)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tinystories_dir() -> Path:
    """Real TinyStories text (../shared/data/tinystories, or $TINYSTORIES_DIR)."""
    path = Path(os.environ.get("TINYSTORIES_DIR", SHARED / "data" / "tinystories"))
    if not (path / "TinyStories-valid.first1000.hf.txt").is_file():
        pytest.skip(
            f"TinyStories sample not found at {path}: set TINYSTORIES_DIR or put ../shared beside the repo"
        )
    return path


@pytest.fixture(scope="session")
def llama2c_dir() -> Path:
    """llama2.c's stories260K checkpoint and tokenizers (../shared/models/llama2c)."""
    path = SHARED / "models" / "llama2c"
    if not (path / "stories260K.bin").is_file():
        pytest.skip(f"llama2.c models not found at {path}: put ../shared beside the repo")
    return path


@pytest.fixture(scope="session")
def gpt2_available() -> None:
    """Skip when tiktoken cannot load GPT-2's ranks offline."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    if not cache or not any(Path(cache).glob("*")):
        pytest.skip("GPT-2 BPE ranks unavailable offline: set TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache")
