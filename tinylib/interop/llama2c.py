"""llama2.c's model files: read Karpathy's TinyStories checkpoints, export ours in llama2.c's format.

What this module does:
- `load_llama2c(path)` reads the three checkpoint formats of karpathy/llama2.c into a tinylib `Transformer`:
  the legacy export (`.bin`: 7 int32s, float32 weights, freq_cis tables; a positive vocab_size means the
  classifier is the token embedding), the version-1 export (256-byte header with magic "ak42") and PyTorch
  training checkpoints (`ckpt.pt`: `model_args` + `model` state dict, maybe with `_orig_mod.` prefixes).
- `export_llama2c(model, path)` writes a LLaMA-style tinylib model as a legacy (or version-1) `.bin` that
  llama2.c's `run.c` runs, and that `load_llama2c` reads back to identical weights.

The one real conversion: llama2.c applies RoPE to interleaved pairs (dims 2i, 2i+1 of each head, Meta's
convention) while tinylib rotates halves (dims i, i + d_head/2, transformers' convention). Permuting the rows
of wq and wk inside each head (as transformers' `convert_llama_weights_to_hf` does) makes the two identical,
so tinylib needs no second RoPE. Grouped-query attention needs nothing: both repeat kv head h // n_rep.

What it leaves to others: model names and downloads (tinylib.interop.tinyllamas; this module takes paths and
never touches the network), tokenizers (tinylib.interop.sentencepiece), the model, generation, other exports.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from tinylib.config import ModelConfig
from tinylib.model import Transformer
from tinylib.paths import atomic_writer

V1_MAGIC = 0x616B3432  # "ak42" read as a little-endian uint32
V1_HEADER_BYTES = 256
LEGACY_HEADER = struct.Struct("<7i")
V1_PREFIX = struct.Struct("<Ii7iB")  # magic, version, 7 params, shared_classifier flag; zero padding follows
ROPE_THETA = 10000.0  # run.c hard-codes both
NORM_EPS = 1e-5


# ------------------------------------------------------------------------------------------------------------
# Header and file layout


@dataclass(frozen=True)
class Llama2cHeader:
    """The seven numbers every llama2.c export starts with, the classifier flag and the format version."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int  # always positive here; the legacy sign is decoded into shared_classifier
    seq_len: int
    shared_classifier: bool
    version: int  # 0 = legacy .bin, 1 = "ak42" version 1, -1 = PyTorch checkpoint

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    def config(self) -> ModelConfig:
        """The tinylib config of this model: LLaMA style, run.c's eps and theta, no dropout."""
        return ModelConfig(
            vocab_size=self.vocab_size, n_layer=self.n_layers, n_head=self.n_heads, n_kv_head=self.n_kv_heads,
            d_model=self.dim, d_mlp=self.hidden_dim, max_seq_len=self.seq_len, norm="rmsnorm", mlp="swiglu",
            pos="rope", rope_theta=ROPE_THETA, bias=False, tie_embeddings=self.shared_classifier, dropout=0.0,
            norm_eps=NORM_EPS)

    def problems(self) -> list[str]:
        """What makes these numbers impossible for a llama2.c model (empty when they are fine)."""
        out = [f"{k}={getattr(self, k)} is not positive" for k in
               ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
               if getattr(self, k) <= 0]
        if out:
            return out
        if self.dim % self.n_heads:
            out.append(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        elif self.head_size % 2:
            out.append(f"head size {self.head_size} is odd (RoPE needs pairs)")
        if self.n_heads % self.n_kv_heads:
            out.append(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        return out


def _layout(h: Llama2cHeader, version: int) -> list[tuple[str, tuple[int, ...]]]:
    """(llama2.c tensor name, shape) in file order; names follow llama2.c's model.py state dict."""
    L, d, hd, kv = h.n_layers, h.dim, h.hidden_dim, h.n_kv_heads * h.head_size

    def per_layer(name: str, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
        return [(f"layers.{i}.{name}.weight", shape) for i in range(L)]

    emb = [("tok_embeddings.weight", (h.vocab_size, d))]
    att_norm, ffn_norm = per_layer("attention_norm", (d,)), per_layer("ffn_norm", (d,))
    attn = (per_layer("attention.wq", (d, d)) + per_layer("attention.wk", (kv, d))
            + per_layer("attention.wv", (kv, d)) + per_layer("attention.wo", (d, d)))
    w1, w2, w3 = (per_layer("feed_forward.w1", (hd, d)), per_layer("feed_forward.w2", (d, hd)),
                  per_layer("feed_forward.w3", (hd, d)))
    final = [("norm.weight", (d,))]
    classifier = [] if h.shared_classifier else [("output.weight", (h.vocab_size, d))]
    if version == 0:
        freqs = [(f"freq_cis_{part}", (h.seq_len, h.head_size // 2)) for part in ("real", "imag")]
        return emb + att_norm + attn + ffn_norm + w1 + w2 + w3 + final + freqs + classifier
    return att_norm + ffn_norm + final + emb + attn + w1 + w2 + w3 + classifier


def _header_bytes(version: int) -> int:
    return LEGACY_HEADER.size if version == 0 else V1_HEADER_BYTES


def expected_file_size(h: Llama2cHeader, version: int) -> int:
    """Bytes of a float32 export with header `h`: the header, then 4 bytes per number of the layout."""
    return _header_bytes(version) + 4 * sum(math.prod(shape) for _, shape in _layout(h, version))


def _describe(h: Llama2cHeader) -> str:
    return ", ".join(f"{f.name}={getattr(h, f.name)}" for f in fields(h) if f.name != "version")


def read_llama2c_header(path: str | os.PathLike) -> Llama2cHeader:
    """Parse and check the header of a legacy or version-1 `.bin`, and that the file's length matches it."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(V1_HEADER_BYTES)
    if len(head) >= 4 and head[:4] == b"GGUF":
        raise ValueError(f"{path} is a GGUF file (llama.cpp); load_llama2c reads llama2.c's .bin exports and "
                         f"ckpt.pt")
    if len(head) >= 8 and struct.unpack_from("<I", head)[0] == V1_MAGIC:
        version = struct.unpack_from("<i", head, 4)[0]
        if version != 1:
            hint = (" (version 2 is llama2.c's int8 Q8_0 export; tinylib reads float32 exports: re-export "
                    "with llama2.c's `export.py --version 1`, or version 0)") if version == 2 else ""
            raise ValueError(f"{path}: unsupported llama2.c export version {version}; expected version 1 "
                             f"after the 'ak42' magic{hint}")
        if len(head) < V1_PREFIX.size:
            raise ValueError(
                f"{path}: truncated version-1 header: {len(head)} bytes, expected {V1_HEADER_BYTES}")
        _, _, *params, shared = V1_PREFIX.unpack_from(head)
        if shared not in (0, 1):
            raise ValueError(f"{path}: shared_classifier flag at byte 36 is {shared}, expected 0 or 1")
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq = params
        h = Llama2cHeader(dim, hidden, n_layers, n_heads, n_kv, vocab, seq, bool(shared), 1)
    else:
        if len(head) < LEGACY_HEADER.size:
            raise ValueError(f"{path} has {size} bytes, too short for a llama2.c model: a legacy export "
                             f"starts with a {LEGACY_HEADER.size}-byte header, a version-1 export with "
                             f"{V1_HEADER_BYTES} bytes")
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq = LEGACY_HEADER.unpack_from(head)
        h = Llama2cHeader(dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq, vocab > 0, 0)
    problems = h.problems()
    if problems:
        magic = struct.unpack_from("<I", head)[0] if len(head) >= 4 else None
        found = f"first uint32 0x{magic:08x}" if magic is not None else "no bytes"
        raise ValueError(
            f"{path} is not a llama2.c model file: expected the version-1 magic 0x{V1_MAGIC:08x} ('ak42') or "
            f"a legacy header of 7 int32s (dim, hidden_dim, n_layers, n_heads, n_kv_heads, +/-vocab_size, "
            f"seq_len); found {found}, read as a legacy header: {'; '.join(problems)}")
    expected = expected_file_size(h, h.version)
    if size != expected:
        kind = "legacy" if h.version == 0 else "version-1"
        what = (f"{expected - size} bytes missing (truncated file?)" if size < expected
                else f"{size - expected} extra bytes (padded file, or a header that does not match the "
                     f"weights)")
        raise ValueError(f"{path}: a {kind} llama2.c export with {_describe(h)} has {expected:,} bytes, but "
                         f"the file has {size:,}: {what}")
    return h


# ------------------------------------------------------------------------------------------------------------
# RoPE pairing: llama2.c (interleaved) <-> tinylib/transformers (rotate half)


def interleaved_to_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a q/k projection inside each head: row 2i+j moves to j*d/2 + i (j = 0, 1).

    After this, tinylib's rotate-half RoPE on the new rows equals llama2.c's interleaved RoPE on the old ones.
    """
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, d // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def half_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `interleaved_to_half` (for export)."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, 2, d // 2, cols).transpose(1, 2).reshape(rows, cols)


# llama2.c state-dict name (after "layers.{i}.") -> tinylib name (after "blocks.{i}.")
_LAYER_NAMES = {
    "attention_norm.weight": "attn_norm.weight",
    "attention.wq.weight": "attn.q_proj.weight",
    "attention.wk.weight": "attn.k_proj.weight",
    "attention.wv.weight": "attn.v_proj.weight",
    "attention.wo.weight": "attn.o_proj.weight",
    "ffn_norm.weight": "mlp_norm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",  # llama2.c: w2(silu(w1 x) * w3 x)
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"tok_embeddings.weight": "tok_emb.weight", "norm.weight": "norm_f.weight",
              "output.weight": "lm_head.weight"}


def _rename(sd: dict[str, torch.Tensor], top: dict[str, str], layer: dict[str, str], prefix: str,
            heads: dict[str, int], permute) -> dict[str, torch.Tensor]:
    """Rename every tensor (`top`: whole names, `layer`: names after "<block>.<i>.") under `prefix`.<i>, and
    re-pair the rows of the q/k projections named in `heads` (name -> head count) with `permute`."""
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if name in top:
            out[top[name]] = t
            continue
        _, i, rest = name.split(".", 2)
        out[f"{prefix}.{i}.{layer[rest]}"] = permute(t, heads[rest]) if rest in heads else t
    return out


def _to_tinylib_state(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    heads = {"attention.wq.weight": cfg.n_head, "attention.wk.weight": cfg.n_kv_head}
    out = _rename(sd, _TOP_NAMES, _LAYER_NAMES, "blocks", heads, interleaved_to_half)
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["tok_emb.weight"]
    return out


def _to_llama2c_state(model: Transformer) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    if sd.pop("emb_proj.weight", None) is not None:  # factorized: run.c reads the multiplied-out embedding
        sd["tok_emb.weight"] = sd["lm_head.weight"] = model.dense_embedding().detach().float().cpu()
    heads = {"attn.q_proj.weight": cfg.n_head, "attn.k_proj.weight": cfg.n_kv_head}
    top, layer = {v: k for k, v in _TOP_NAMES.items()}, {v: k for k, v in _LAYER_NAMES.items()}
    out = _rename(sd, top, layer, "layers", heads, half_to_interleaved)
    if cfg.tie_embeddings:
        out.pop("output.weight", None)
    return out


# ------------------------------------------------------------------------------------------------------------
# Import


def _read_bin(path: Path) -> tuple[Llama2cHeader, dict[str, torch.Tensor]]:
    h = read_llama2c_header(path)
    flat = np.fromfile(path, dtype="<f4", offset=_header_bytes(h.version))
    sd: dict[str, torch.Tensor] = {}
    pos = 0
    for name, shape in _layout(h, h.version):
        n = math.prod(shape)
        if not name.startswith("freq_cis"):  # tinylib computes RoPE itself
            sd[name] = torch.from_numpy(flat[pos:pos + n].reshape(shape).copy())
        pos += n
    return h, sd


def _read_ckpt(path: Path) -> tuple[Llama2cHeader, dict[str, torch.Tensor]]:
    """llama2.c's train.py checkpoint: plain dicts, numbers, strings and tensors, so weights_only loads it."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read {path} as a PyTorch checkpoint with torch.load(weights_only=True) "
                         f"({type(e).__name__}: {e}); tinylib never unpickles code, so convert it to a "
                         f"llama2.c .bin with llama2.c's export.py") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        found = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{path}: expected llama2.c's checkpoint dict with 'model_args' and 'model', found {found}")
    args = dict(ckpt["model_args"])
    sd = {k.removeprefix("_orig_mod."): v.float() for k, v in ckpt["model"].items()}
    missing = {"tok_embeddings.weight", "norm.weight", "layers.0.feed_forward.w1.weight"} - set(sd)
    if missing:
        raise ValueError(f"{path}: the 'model' state dict lacks {sorted(missing)}: not a llama2.c model")
    for key, want in (("rope_theta", ROPE_THETA), ("norm_eps", NORM_EPS)):
        if float(args.get(key, want)) != want:
            raise ValueError(f"{path}: {key}={args[key]}, but llama2.c models (and this loader) use {want}")
    shared = "output.weight" not in sd or torch.equal(sd["output.weight"], sd["tok_embeddings.weight"])
    if shared:
        sd.pop("output.weight", None)
    n_heads = int(args["n_heads"])
    h = Llama2cHeader(
        dim=int(args["dim"]), hidden_dim=int(sd["layers.0.feed_forward.w1.weight"].shape[0]), version=-1,
        n_layers=int(args["n_layers"]), n_heads=n_heads, n_kv_heads=int(args.get("n_kv_heads") or n_heads),
        vocab_size=int(args["vocab_size"]), seq_len=int(args["max_seq_len"]), shared_classifier=shared)
    if h.problems():
        raise ValueError(f"{path}: impossible model_args {args}: {'; '.join(h.problems())}")
    expected = dict(_layout(h, 1))
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    if shapes != expected:
        diff = sorted(set(expected) ^ set(shapes)) or [k for k in expected if expected[k] != shapes[k]]
        entries = ", ".join(f"{k} expected {expected.get(k)} found {shapes.get(k)}" for k in diff[:5])
        raise ValueError(
            f"{path}: state dict does not match model_args ({_describe(h)}); differing entries: {entries}")
    return h, sd


def read_llama2c(path: str | os.PathLike) -> tuple[Llama2cHeader, dict[str, torch.Tensor]]:
    """The header and the float32 weights of a llama2.c file, in llama2.c's own names and RoPE layout.

    Names are those of llama2.c's model.py state dict (`layers.0.attention.wq.weight`, ...); `output.weight`
    is absent when the classifier is shared. `load_llama2c` converts this into a tinylib model.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"llama2.c model file {p} not found: give a .bin or .pt path (a name such as "
                                f"'stories260K' is downloaded by tinylib.interop.tinyllamas.resolve_llama2c)")
    with open(p, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # torch.save's zip container
    return _read_ckpt(p) if is_zip or p.suffix == ".pt" else _read_bin(p)


def load_llama2c(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> Transformer:
    """A tinylib `Transformer` (fp32, eval mode) from a llama2.c legacy `.bin`, version-1 `.bin` or `ckpt.pt`.

    The config is LLaMA style with run.c's constants (norm_eps 1e-5, rope_theta 10000), d_mlp = hidden_dim,
    max_seq_len = the model's training context, tied embeddings when the classifier is shared. A model by
    name: `load_llama2c(resolve_llama2c("stories15M"))` (tinylib.interop.tinyllamas).
    """
    h, sd = read_llama2c(path)
    cfg = h.config()
    model = Transformer(cfg)
    model.load_state_dict(_to_tinylib_state(sd, cfg), strict=True)
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------------------
# Export


def exportable_problems(model: Transformer) -> list[str]:
    """Why `model` cannot be written as a llama2.c file (empty when it can)."""
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, ModelConfig):
        return [f"expected a tinylib Transformer, got {type(model).__name__}"]
    out = []
    for field, want in (("norm", "rmsnorm"), ("mlp", "swiglu"), ("pos", "rope"), ("bias", False)):
        if getattr(cfg, field) != want:
            out.append(f"{field}={getattr(cfg, field)!r} (llama2.c needs {want!r})")
    if cfg.norm_eps != NORM_EPS:
        out.append(f"norm_eps={cfg.norm_eps} (run.c hard-codes {NORM_EPS})")
    if cfg.rope_theta != ROPE_THETA:
        out.append(f"rope_theta={cfg.rope_theta} (run.c hard-codes {ROPE_THETA:g})")
    for field in ("sliding_window", "qk_norm", "logit_softcap"):  # architecture-lab switches run.c lacks
        if getattr(cfg, field) not in (None, False):
            out.append(f"{field}={getattr(cfg, field)!r} (run.c has no such switch)")
    return out


def _freq_cis(head_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """llama2.c's precompute_freqs_cis in its float32 arithmetic, so exports match its files bit for bit."""
    freqs = 1.0 / (ROPE_THETA ** (torch.arange(0, head_size, 2)[: head_size // 2].float() / head_size))
    angles = torch.outer(torch.arange(seq_len), freqs).float()
    return torch.cos(angles), torch.sin(angles)


def export_llama2c(model: Transformer, path: str | os.PathLike, version: int = 0) -> Path:
    """Write a LLaMA-style tinylib model as llama2.c's legacy (version=0) or version-1 float32 export.

    The file runs in llama2.c's run.c (legacy; version 1 in its Python tools) and loads back with
    `load_llama2c` to identical weights. Written atomically (temporary name, then rename).
    """
    if version not in (0, 1):
        raise ValueError(f"version={version}: llama2.c's float32 exports are version 0 (legacy) and 1")
    problems = exportable_problems(model)
    if problems:
        raise ValueError("this model cannot be exported to llama2.c, which only runs LLaMA-style models: "
                         + "; ".join(problems))
    cfg = model.cfg
    shared = bool(cfg.tie_embeddings)
    h = Llama2cHeader(cfg.d_model, cfg.d_mlp, cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.vocab_size,
                      cfg.max_seq_len, shared, version)
    sd = _to_llama2c_state(model)
    if version == 0:
        sd["freq_cis_real"], sd["freq_cis_imag"] = _freq_cis(h.head_size, h.seq_len)
        header = LEGACY_HEADER.pack(h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads,
                                    h.vocab_size if shared else -h.vocab_size, h.seq_len)
    else:
        header = V1_PREFIX.pack(V1_MAGIC, 1, h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads,
                                h.vocab_size, h.seq_len, int(shared))
        header += b"\0" * (V1_HEADER_BYTES - len(header))
    with atomic_writer(path) as f:
        f.write(header)
        for name, shape in _layout(h, version):
            t = sd[name]
            if tuple(t.shape) != shape:  # a bug guard: the layout and the model disagree
                raise RuntimeError(f"{name}: shape {tuple(t.shape)}, layout expects {shape}")
            f.write(t.contiguous().numpy().astype("<f4", copy=False).tobytes())
    return Path(path)
