"""Checkpoints: a folder with `model.safetensors`, `config.json` and (for resuming) `state.pt`; and
`TrainState`, everything a training run saves there so that a resumed run continues exactly.

Weights are safetensors (loading never runs pickled code); `state.pt` holds the optimizer, RNG and data-stream
state as plain tensors and containers, loaded with `torch.load(weights_only=True)`. A folder is written under
a temporary name and renamed into place, so a crash never leaves a half-written checkpoint. A training run
keeps `<run>/latest/` and `<run>/best/` next to `<run>/metrics.jsonl`. This module knows files; training
decides when.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from tinylib.config import ModelConfig
from tinylib.model import Transformer
from tinylib.paths import REFERENCE_DIR
from tinylib.tokenizer import Tokenizer, get_tokenizer

if TYPE_CHECKING:
    from tinylib.batches import RandomBatches


def save_checkpoint(folder: str | os.PathLike, model: Transformer, meta: dict,
                    state: dict | None = None) -> Path:
    """Write weights (fp32, tied matrix stored once), `config.json` = meta + model config, optional state."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is an ordinary folder
    try:
        weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
        if model.cfg.tie_embeddings:
            weights.pop("lm_head.weight", None)
        save_file(weights, str(tmp / "model.safetensors"))
        config = {**meta, "model": model.cfg.to_dict()}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        if state is not None:
            torch.save(state, tmp / "state.pt")
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint folder from a checkpoint folder, a run folder (best/, then latest/) or a weights file."""
    path = Path(path)
    if path.is_file() and path.name == "model.safetensors":
        path = path.parent
    if (path / "model.safetensors").is_file():
        return path
    for sub in ("best", "latest"):
        if (path / sub / "model.safetensors").is_file():
            return path / sub
    raise FileNotFoundError(f"no checkpoint at {path}: expected a folder with model.safetensors and "
                            "config.json, or a run folder with best/ or latest/ (train one with `make demo` "
                            "or tinylib.train)")


def load_meta(path: str | os.PathLike) -> dict:
    folder = resolve(path)
    try:
        return json.loads((folder / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder / 'config.json'} is missing or not valid JSON ({e}); the checkpoint is "
                         "incomplete") from e


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> Transformer:
    """Build the model from config.json and load its safetensors weights (no pickled code runs)."""
    folder = resolve(path)
    cfg = ModelConfig.from_dict(load_meta(folder)["model"])
    model = Transformer(cfg)
    weights = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if cfg.tie_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"{folder} does not match its config: missing {missing}, unexpected {unexpected}")
    return model.to(device).eval()


def load_state(path: str | os.PathLike) -> dict:
    """The optimizer/RNG/data state saved for resuming (plain tensors and containers only)."""
    file = resolve(path) / "state.pt"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: this checkpoint holds weights only and cannot resume "
                                "training")
    return torch.load(file, map_location="cpu", weights_only=True)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer recorded in the checkpoint's config.json."""
    meta = load_meta(path)
    if "tokenizer" not in meta:
        raise ValueError(f"{resolve(path)}/config.json records no tokenizer; pass one explicitly")
    return get_tokenizer(meta["tokenizer"])


def list_checkpoints(root: str | os.PathLike = "checkpoints") -> list[Path]:
    """Every checkpoint folder under root (newest first), e.g. for the generation widget's dropdown."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p.parent for p in root.rglob("model.safetensors") if not p.parent.name.startswith(".")]
    return sorted(found, key=lambda p: (p / "model.safetensors").stat().st_mtime, reverse=True)


def find_reference_checkpoint() -> Path | None:
    """The small model the project ships under checkpoints/reference, when present."""
    try:
        return resolve(REFERENCE_DIR)
    except FileNotFoundError:
        return None


# --- the state of a training run ----------------------------------------------------------------------------

def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    """Everything that shapes the next training step: weights, optimizer, data position, RNG, step counters.

    `model` is the plain model (weights are saved from it); `module` is what runs the forward pass: the model
    itself, or the model compiled and/or wrapped in DDP. `batches` is the data stream; each rank saves its
    position.
    """

    model: Transformer
    optimizer: torch.optim.Optimizer
    batches: RandomBatches | None = None  # None for steps without a data stream (the benchmarks)
    module: torch.nn.Module | None = None
    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float | None = None
    total_steps: int | None = None  # None while a time budget has not planned it yet

    def __post_init__(self) -> None:
        self.module = self.module if self.module is not None else self.model

    def progress(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "best_val_loss": self.best_val_loss,
                "total_steps": self.total_steps}

    def save(self, folder: str | os.PathLike, meta: dict, *, resumable: bool = True) -> None:
        """Write a checkpoint from rank 0. Under DDP every rank must call it: data positions are gathered."""
        state = None
        if resumable:
            data = self.batches.state_dict()
            if dist.is_initialized() and dist.get_world_size() > 1:
                gathered: list = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, data)
                data = gathered
            state = {"optimizer": self.optimizer.state_dict(), "rng": rng_state(), "data": data}
        if not dist.is_initialized() or dist.get_rank() == 0:
            save_checkpoint(folder, self.model, {**meta, **self.progress()}, state)

    def restore(self, folder: str | os.PathLike) -> None:
        """Load weights, optimizer, this rank's data position, RNG and counters from a resumable
        checkpoint."""
        folder = resolve(folder)
        meta = load_meta(folder)
        self.model.load_state_dict(load_file(str(folder / "model.safetensors")),
                                   strict=not self.model.cfg.tie_embeddings)
        state = load_state(folder)
        self.optimizer.load_state_dict(state["optimizer"])
        rank = dist.get_rank() if dist.is_initialized() else 0
        data = state["data"]
        self.batches.load_state_dict(data[rank] if isinstance(data, list) else data)
        set_rng_state(state["rng"])
        self.step, self.tokens_seen = meta["step"], meta["tokens_seen"]
        self.best_val_loss, self.total_steps = meta["best_val_loss"], meta["total_steps"]
