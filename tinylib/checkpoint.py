"""Checkpoints: a folder with `model.safetensors`, `config.json` and (for resuming) `state.pt`; and
`TrainState`, everything a training run saves there so that a resumed run continues exactly.

Weights are safetensors (loading never runs pickled code); `state.pt` holds the optimizer, RNG and data-stream
state as plain tensors and containers, loaded with `torch.load(weights_only=True)`. A folder is written under
a temporary name and renamed into place, so a crash never leaves a half-written checkpoint; `checksums.json`
records each file's size and SHA-256, so a later bit flip or truncation is found before anything is loaded.
A training run keeps `<run>/latest/` and `<run>/best/` next to `<run>/metrics.jsonl`, and the `keep_previous`
latest checkpoints before them in `<run>/previous/`; resuming takes the newest intact one. Every failure a
user can meet (a damaged, foreign or mismatched checkpoint, pickled code, a full disk) ends in a
`CheckpointError` or `DiskFullError` that names the file, what is wrong and what to do.

Three parts, in this order: files that stay trustworthy on disk (checksums, the kept history, quarantine of a
damaged one, a full disk), writing and reading a checkpoint, and `TrainState` with `resume`. What it leaves
to others: when to save and what to do with a refused checkpoint (`tinylib.train`, `tinylib.faults`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tinylib.config import ModelConfig
from tinylib.device import check_fits
from tinylib.model import Transformer
from tinylib.paths import REFERENCE_DIR
from tinylib.tokenizer import Tokenizer, get_tokenizer

if TYPE_CHECKING:
    from tinylib.batches import RandomBatches


# --- files that stay trustworthy on disk: checksums, the kept history, a full disk -----------------------

MANIFEST = "checksums.json"
HISTORY = "previous"  # <run>/previous/latest-step<N>: the checkpoints that latest/ replaced
DAMAGED = "damaged"  # <run>/damaged/: checkpoints a resume passed over, kept for inspection, never used again


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file, what is wrong and what to use instead."""


class CheckpointMismatchError(CheckpointError):
    """A sound checkpoint that does not fit this run (model, tokenizer, data): older ones would not either."""


class DiskFullError(OSError):
    """The filesystem could not hold a checkpoint; nothing was left half-written."""


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: Path) -> None:
    """Record size and SHA-256 of the binary files in `folder` (written last, before the folder is renamed).

    config.json is left out: people edit it by hand, and it is checked by parsing it instead."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in sorted(folder.iterdir())
             if p.name != "config.json"}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def damage(folder: str | Path, only: tuple[str, ...] | None = None) -> str | None:
    """What is wrong with a checkpoint's files (or the `only` ones): missing, cut short, changed; or None.

    Checkpoints written before checksums existed (no checksums.json) pass when their weights file is there.
    """
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return None if (folder / "model.safetensors").is_file() else "model.safetensors is missing"
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"{MANIFEST} is unreadable ({e})"
    for name, want in files.items():
        if only is not None and name not in only:
            continue
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        try:
            size, digest = file.stat().st_size, sha256(file)
        except OSError as e:  # e.g. moved away by another rank
            return f"{name} is unreadable ({e})"
        if size != want["bytes"]:
            how = "cut off" if size < want["bytes"] else "grown since: appended to or replaced"
            return f"{name} has {size:,} bytes where {want['bytes']:,} were written ({how})"
        if digest != want["sha256"]:
            return (f"{name} does not match the SHA-256 recorded when it was written (its bytes changed "
                    "since: a bit flip, a partial copy or an edit)")
    return None


def step_of(folder: Path) -> int | None:
    """The training step a checkpoint folder was saved at, from its config.json (None if unreadable)."""
    try:
        return int(json.loads((folder / "config.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def history(folder: Path) -> list[Path]:
    """The earlier versions of checkpoint `folder` kept in <run>/previous/, newest first."""
    kept = (folder.parent / HISTORY).glob(f"{folder.name}-step*")
    return sorted(kept, key=lambda p: int(p.name.rsplit("step", 1)[1]), reverse=True)


def swap_in(tmp: Path, folder: Path, step: int | None, keep_previous: int) -> None:
    """Rename the finished `tmp` to `folder`; the folder it replaces goes to previous/ (or away), and the
    history is cut to `keep_previous`. A crash between the two renames leaves the old one in previous/."""
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists() or folder.is_symlink():
        old_step = step_of(folder)
        if keep_previous > 0 and old_step is not None and old_step != step:
            old = folder.parent / HISTORY / f"{folder.name}-step{old_step}"
            old.parent.mkdir(exist_ok=True)
        remove(old)
        folder.rename(old)
    tmp.rename(folder)
    remove(folder.with_name(f".{folder.name}.old"))
    for stale in history(folder)[keep_previous:]:
        remove(stale)


def remove(path: Path) -> None:
    """Delete a checkpoint folder, or only the link when it is a symlink (a user's `latest -> elsewhere`)."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def quarantine(folder: Path) -> Path:
    """Move a damaged checkpoint to <run>/damaged/, out of the way of resuming and of the kept history."""
    run = folder.parent.parent if folder.parent.name == HISTORY else folder.parent
    dest = run / DAMAGED / f"{folder.name}-step{step_of(folder)}-{time.strftime('%Y%m%dT%H%M%S')}"
    dest.parent.mkdir(exist_ok=True)
    folder.rename(dest)
    return dest


def alternatives(folder: Path, resumable: bool = False) -> str:
    """'Use X instead' for a damaged checkpoint: the intact (resumable) checkpoints beside it in its run."""
    run = folder.parent.parent if folder.parent.name == HISTORY else folder.parent
    near = [run / "latest", *([] if resumable else [run / "best"]), *history(run / "latest")]
    need = "state.pt" if resumable else "model.safetensors"
    ok = [p for p in near if p != folder and (p / need).is_file() and damage(p) is None]
    if not ok:
        return "No other intact checkpoint is in this run: train again or restore the folder from a copy"
    return f"Use {ok[0]} instead" + (f" (or {', '.join(map(str, ok[1:]))})" if ok[1:] else "")


def tensor_bytes(obj) -> int:
    """Bytes of all tensors in nested dicts/lists: what a checkpoint of them will take on disk, nearly."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def is_disk_full(e: BaseException) -> bool:
    # torch.save reports ENOSPC as "[enforce fail at inline_container.cc] unexpected pos ..." or "file write
    # failed"; Python and safetensors as an OSError
    text = str(e)
    return (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
        m in text for m in ("No space left", "unexpected pos", "file write failed"))


def disk_full(folder: Path, need: int) -> DiskFullError:
    free = shutil.disk_usage(folder.parent).free
    try:
        inodes = os.statvfs(folder.parent).f_favail
    except (OSError, AttributeError):
        inodes = None
    if inodes == 0 and free >= need:  # ENOSPC with bytes to spare: the filesystem has no file entries left
        return DiskFullError(
            f"out of inodes: checkpoint {folder} needs a few new files but its filesystem can create no more "
            f"(it has {free:,} bytes free, so space is not the problem); nothing was written (the files "
            "already there are intact). Delete files there (or choose another --out-dir), then resume with "
            "--resume")
    return DiskFullError(
        f"disk full: checkpoint {folder} needs about {need:,} bytes ({need / 2**20:.1f} MiB) but its "
        f"filesystem has {free:,} bytes free; nothing was written (the files already there are intact). "
        "Free some space or choose another --out-dir, then resume with --resume")


# --- writing and reading a checkpoint ---------------------------------------------------------------------


def save_checkpoint(folder: str | os.PathLike, model: Transformer, meta: dict, state: dict | None = None, *,
                    keep_previous: int = 0) -> Path:
    """Write weights (fp32, tied matrix stored once), `config.json` = meta + model config, optional state,
    and `checksums.json`; keep the `keep_previous` checkpoints it replaces in <run>/previous/."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        weights.pop("lm_head.weight", None)
    bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to write non-finite weights ({', '.join(bad[:3])}) to {folder}: the "
                              "run diverged. The checkpoint already there is unchanged")
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):  # left by a process killed while writing
        remove(stale)
    need = tensor_bytes(weights) + tensor_bytes(state) + 2**16  # + headers, config and pickle framing
    if shutil.disk_usage(folder.parent).free < need:
        raise disk_full(folder, need)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is an ordinary folder
    try:
        save_file(weights, str(tmp / "model.safetensors"))
        config = {**meta, "model": model.cfg.to_dict()}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        if state is not None:
            torch.save(state, tmp / "state.pt")
        write_manifest(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full(folder, need) from e
        raise
    swap_in(tmp, folder, meta.get("step"), keep_previous)
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
        raise CheckpointError(f"{folder / 'config.json'} is missing or not valid JSON ({e}); the checkpoint "
                              f"is incomplete. {alternatives(folder)}") from e


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The safetensors weights of a checkpoint folder, after checking them against checksums.json."""
    problem = damage(folder, only=("model.safetensors",))
    if problem is None:
        try:
            return load_file(str(folder / "model.safetensors"))
        except (SafetensorError, OSError) as e:
            problem = f"model.safetensors is not a readable safetensors file ({e})"
    raise CheckpointError(f"checkpoint {folder} is damaged: {problem}. {alternatives(folder)}")


def model_config(folder: Path, meta: dict) -> ModelConfig:
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(
            f"{folder} is not a tinylib checkpoint: its config.json has no 'model' entry (it has "
            f"{sorted(meta)[:8]}). A Hugging Face model folder loads with tinylib.interop.hf, a llama2.c "
            "file with tinylib.interop.llama2c")
    return ModelConfig.from_dict(meta["model"])


def load_weights_into(model: Transformer, folder: Path) -> None:
    missing, unexpected = model.load_state_dict(read_weights(folder), strict=False)
    if model.cfg.tie_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(f"{folder / 'model.safetensors'} does not match its config.json: missing "
                              f"{missing}, unexpected {unexpected}. {alternatives(folder)}")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> Transformer:
    """Build the model from config.json and load its safetensors weights (no pickled code runs)."""
    folder = resolve(path)
    model_cfg = model_config(folder, load_meta(folder))
    check_fits(model_cfg, torch.device("cpu"), training=False, what=str(folder / "config.json"))
    model = Transformer(model_cfg)
    try:
        load_weights_into(model, folder)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise CheckpointError(f"{folder / 'model.safetensors'} does not match its config.json: "
                              f"{str(e).splitlines()[-1].strip()}. {alternatives(folder)}") from e
    return model.to(device).eval()


def load_state(path: str | os.PathLike) -> dict:
    """The optimizer/RNG/data state saved for resuming (plain tensors and containers only)."""
    folder = resolve(path)
    file = folder / "state.pt"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: this checkpoint holds weights only and cannot resume "
                                "training")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = found.group(1) if found else "an object that is not a tensor"
        raise CheckpointError(
            f"{file} holds pickled code ({what}), which a tinylib checkpoint never contains: it was refused "
            "and nothing in it was run. Do not load it with weights_only=False. Delete the file and resume "
            f"from another checkpoint, or use the weights alone (load_model). {alternatives(folder, True)}"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{file} is damaged and cannot be read ({str(e).splitlines()[0]}). "
                              f"{alternatives(folder, True)}") from e


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
    found = [p.parent for p in root.rglob("model.safetensors")
             if not p.parent.name.startswith(".") and p.parent.parent.name not in (HISTORY, DAMAGED)]
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

    def save(self, folder: str | os.PathLike, meta: dict, *, resumable: bool = True,
             keep_previous: int = 0) -> None:
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
            save_checkpoint(folder, self.model, {**meta, **self.progress()}, state,
                            keep_previous=keep_previous)

    def restore(self, folder: str | os.PathLike, tokenizer: str | None = None) -> None:
        """Load weights, optimizer, this rank's data position, RNG and counters from a resumable checkpoint,
        after checking that it was saved by this model (and, when given, this tokenizer)."""
        folder = resolve(folder)
        meta = load_meta(folder)
        missing = [k for k in ("step", "tokens_seen", "best_val_loss", "total_steps") if k not in meta]
        if missing:  # resume() then passes it over for an older one
            raise CheckpointError(f"{folder / 'config.json'} lacks {missing}: not a resumable checkpoint "
                                  "(edited, or written by another tool)")
        saved = model_config(folder, meta).to_dict()
        diff = [f"{k}={saved.get(k)!r} (this run: {v!r})" for k, v in self.model.cfg.to_dict().items()
                if saved.get(k) != v]
        if tokenizer and meta.get("tokenizer", tokenizer) != tokenizer:
            diff.append(f"tokenizer={meta['tokenizer']!r} (this run's data: {tokenizer!r})")
        if diff:
            raise CheckpointMismatchError(
                f"cannot resume from {folder}: it was saved by a different setup: {', '.join(diff)}. "
                "Resume with the preset, model_overrides and data it was trained with (its config.json "
                "'train' entry), or start a new run in another --out-dir")
        load_weights_into(self.model, folder)
        state = load_state(folder)
        self.optimizer.load_state_dict(state["optimizer"])
        rank = dist.get_rank() if dist.is_initialized() else 0
        data = state["data"]
        try:
            self.batches.load_state_dict(data[rank] if isinstance(data, list) else data)
        except ValueError as e:
            raise CheckpointMismatchError(f"{e} (checkpoint {folder} was trained on {meta.get('data')})"
                                          ) from e
        set_rng_state(state["rng"])
        self.step, self.tokens_seen = meta["step"], meta["tokens_seen"]
        self.best_val_loss, self.total_steps = meta["best_val_loss"], meta["total_steps"]

    def resume(self, run_dir: str | os.PathLike, tokenizer: str | None = None,
               at_most: int | None = None) -> tuple[Path | None, list[str]]:
        """Restore the newest intact checkpoint of a run (latest/, then previous/ newest first), of a step no
        later than `at_most` when given (the divergence guard: only checkpoints a later step confirmed).

        Returns the folder (None: the run has none, start afresh) and why each newer one was passed over.
        A damaged one is skipped and moved to <run>/damaged/ (by rank 0); one that does not fit this run
        stops here (its older ones would not fit either).
        """
        latest = Path(run_dir) / "latest"
        notes: list[str] = []
        damaged: list[Path] = []
        for folder in [latest, *history(latest)]:
            if not folder.exists():
                continue
            if at_most is not None and (step_of(folder) or 0) > at_most:
                continue
            try:
                problem = damage(folder)
                if problem or not (folder / "state.pt").is_file():
                    problem = problem or "state.pt is missing"
                    raise CheckpointError(problem)
                self.restore(folder, tokenizer)
            except CheckpointMismatchError:
                raise
            except CheckpointError as e:
                notes.append(f"{folder}: {str(e).split('. Use ')[0].split('. No other')[0]}")
                damaged.append(folder)
                continue
            if not dist.is_initialized() or dist.get_rank() == 0:
                notes = [f"{n} (moved to {quarantine(d)})" for n, d in zip(notes, damaged)]
            return folder, notes
        if notes:
            raise CheckpointError(f"cannot resume: no intact checkpoint in {run_dir}: " + "; ".join(notes)
                                  + ". Start a new run without --resume, or restore the folder from a copy")
        return None, notes
