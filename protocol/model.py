"""The shared model: a small Llama-style decoder in plain torch, its presets, seeded init and hash.

Every miner and validator must hold *bit-identical* weights at the start of a window, so this
module owns three consensus-critical pieces besides the architecture itself:

* ``build_model(cfg, seed)`` initialises weights from integer random bits with a single exactly
  rounded float multiplication per value. torch's own ``normal_`` takes SIMD-specific code paths
  (AVX2 vs scalar vs NEON transcendental functions), so it can differ in the last bit between an
  x86 validator and an ARM miner; integer bits from numpy's PCG64 (whose raw stream is stable by
  policy) turned into floats by one correctly rounded multiplication cannot.
* ``model_hash`` is the canonical digest that proves two nodes hold the same weights.
* ``param_shapes`` tells the wire parser which tensors (and shapes) a delta must contain, without
  allocating a model.

Architecture: RMSNorm (pre-norm), rotary position embeddings, SwiGLU MLP, causal attention via
``F.scaled_dot_product_attention``, no biases, input embedding tied to the output projection (the
tied matrix is one parameter, ``tok_emb.weight``).
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Attention",
    "Block",
    "Model",
    "ModelConfig",
    "RMSNorm",
    "SwiGLU",
    "apply_rope",
    "build_model",
    "empty_model",
    "init_weights",
    "model_from_state",
    "model_hash",
    "param_shapes",
    "preset",
    "rope_tables",
    "tensor_hash",
    "tensor_hashes",
]

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    mlp_hidden: int
    max_seq_len: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError("head dimension must be even for rotary embeddings")
        for field in ("vocab_size", "dim", "n_layers", "n_heads", "mlp_hidden", "max_seq_len"):
            if getattr(self, field) < 1:
                raise ValueError(f"ModelConfig.{field} must be positive")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


# tiny/small share the 4096-token tokenizer shipped for the default corpus; base/1b assume a
# general 32k tokenizer (any tokenizer whose vocabulary fits the model's works).
PRESETS: dict[str, ModelConfig] = {
    # ~1.4M parameters: trains in well under a second per step on a laptop CPU.
    "tiny": ModelConfig(vocab_size=4096, dim=128, n_layers=4, n_heads=4, mlp_hidden=384, max_seq_len=256),
    # ~26M parameters.
    "small": ModelConfig(vocab_size=4096, dim=512, n_layers=8, n_heads=8, mlp_hidden=1280, max_seq_len=512),
    # ~146M parameters.
    "base": ModelConfig(
        vocab_size=32000, dim=896, n_layers=12, n_heads=14, mlp_hidden=2432, max_seq_len=1024
    ),
    # ~1.2B parameters (TinyLlama shapes without grouped-query attention).
    "1b": ModelConfig(vocab_size=32000, dim=2048, n_layers=22, n_heads=32, mlp_hidden=5632, max_seq_len=2048),
}


def preset(name: str) -> ModelConfig:
    """The named preset; a clear error listing the valid names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


# --------------------------------------------------------------------------- layers

#: Most logits (batch x positions x vocab) materialised at once: 2^27 fp32 values are 512 MiB.
MAX_LOGIT_ELEMENTS = 1 << 27


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 even under bf16 autocast: the mean of squares loses precision otherwise.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rope_tables(
    cfg: ModelConfig, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each [max_seq_len, head_dim] in fp32."""
    half = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(half, dtype=torch.float64, device=device) / half))
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float64, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [B, H, T, D] by position (the "rotate half" convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            w(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv)
        )
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.mlp_hidden, bias=False)  # gate
        self.w3 = nn.Linear(cfg.dim, cfg.mlp_hidden, bias=False)  # up
        self.w2 = nn.Linear(cfg.mlp_hidden, cfg.dim, bias=False)  # down (an output projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


# --------------------------------------------------------------------------- model


class Model(nn.Module):
    """Decoder-only transformer. ``forward`` maps tokens [B, T] to logits [B, T, vocab]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        # Derived from the config, never trained or shipped: non-persistent buffers.
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final normalised hidden states [B, T, dim], before the output projection."""
        t = tokens.shape[1]
        if t > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len {self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.tok_emb(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # Tied output projection: logits against the input embedding matrix.
        return F.linear(self.hidden(tokens), self.tok_emb.weight)

    def _token_losses(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-position next-token cross-entropy [B, T-1]; inputs and targets are the row shifted by one.

        The fp32 logits of a whole batch are B x T x vocab: 12 GB for 48 sequences of 2048 tokens
        at a 32k vocabulary. Above ``MAX_LOGIT_ELEMENTS`` they are computed a few rows at a time
        and dropped after each row's cross-entropy; below it (every batch of the tiny preset) the
        one-shot path runs unchanged, so small-model results stay bit-identical.
        """
        if tokens.dim() != 2 or tokens.shape[1] < 2:
            raise ValueError(f"tokens must be [batch, seq >= 2], got {tuple(tokens.shape)}")
        h = self.hidden(tokens[:, :-1])
        targets = tokens[:, 1:]
        per_row = targets.shape[1] * self.cfg.vocab_size
        rows = max(1, MAX_LOGIT_ELEMENTS // per_row)
        chunks = [F.cross_entropy(F.linear(h[i : i + rows], self.tok_emb.weight).float().flatten(0, 1),
                                  targets[i : i + rows].flatten(), reduction="none")
                  for i in range(0, h.shape[0], rows)]
        return (chunks[0] if len(chunks) == 1 else torch.cat(chunks)).view_as(targets)

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) over all predicted positions of the batch."""
        return self._token_losses(tokens).mean()

    def per_sequence_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of each row, [B]; validators compare peers on the same rows."""
        return self._token_losses(tokens).mean(dim=1)


# --------------------------------------------------------------------------- deterministic init

_INIT_STD = 0.02
_UNIFORM_BITS = 24  # odd integers in (-2^24, 2^24): exact in fp32


def _init_std(name: str, cfg: ModelConfig) -> float | None:
    """Target std of a parameter, or None for norm gains (initialised to one).

    Output projections (attention ``wo`` and MLP ``w2``) write into the residual stream once per
    layer; scaling them by 1/sqrt(2 * n_layers) keeps the residual's variance independent of depth.
    """
    if name.endswith("norm.weight"):
        return None
    if name.endswith(("attn.wo.weight", "mlp.w2.weight")):
        return _INIT_STD / math.sqrt(2 * cfg.n_layers)
    return _INIT_STD


def _param_bits(seed: int, name: str) -> np.random.PCG64:
    """One independent PCG64 stream per parameter, so no tensor's values depend on another's size."""
    digest = hashlib.blake2b(f"gauntlet/init/v1|{seed}|{name}".encode(), digest_size=16).digest()
    return np.random.PCG64(int.from_bytes(digest, "little"))


def _uniform_fill(out: torch.Tensor, bits: np.random.PCG64, std: float) -> None:
    """Fill ``out`` (fp32, CPU) with a uniform distribution of the given std, bit-reproducibly.

    Each 64-bit word of the stream gives two values (its little-endian 32-bit halves, low half
    first); each half's top 25 bits with the lowest forced to one, minus 2^24, is an odd integer
    k uniform in (-2^24, 2^24), exact in fp32. The value is k times one fp32 constant: a single
    correctly rounded IEEE multiplication, identical on every platform (no FMA contraction or
    libm call can intervene).
    """
    scale = np.float32(std * math.sqrt(3.0) / 2**_UNIFORM_BITS)
    flat = out.view(-1).numpy()
    chunk = 1 << 20  # bounded, cache-friendly temporaries even for the 1B preset's largest tensors
    for start in range(0, flat.size, chunk):
        n = min(chunk, flat.size - start)
        words = bits.random_raw((n + 1) // 2)  # the raw stream is stable by numpy's policy
        halves = words.astype("<u8", copy=False).view("<u4")[:n]
        halves >>= 32 - (_UNIFORM_BITS + 1)
        halves |= 1
        k = halves.view("<i4")
        k -= 2**_UNIFORM_BITS
        dst = flat[start : start + n]
        np.copyto(dst, k, casting="unsafe")  # |k| < 2^24: exact in fp32
        dst *= scale


def _init_param(name: str, param: torch.Tensor, cfg: ModelConfig, seed: int) -> None:
    std = _init_std(name, cfg)
    in_place = param.device.type == "cpu" and param.dtype == torch.float32 and param.is_contiguous()
    host = param.data if in_place else torch.empty(param.shape, dtype=torch.float32)
    if std is None:
        host.fill_(1.0)
    else:
        _uniform_fill(host, _param_bits(seed, name), std)
    if not in_place:
        param.data.copy_(host)


@torch.no_grad()
def init_weights(model: Model, seed: int) -> None:
    """Deterministically (re)initialise every parameter of ``model``.

    Each parameter has its own stream, so the result does not depend on the order in which
    parameters are filled; they are filled in parallel threads (numpy releases the GIL).
    """
    named = sorted(model.named_parameters())
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for future in [pool.submit(_init_param, n, p, model.cfg, seed) for n, p in named]:
            future.result()


def empty_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> Model:
    """A model with allocated but *uninitialised* parameters and valid rotary tables.

    Constructed on the meta device first so torch's default initialisers never run (they would
    cost seconds for the 1B preset and their output is overwritten anyway).
    """
    with torch.device("meta"):
        model = Model(cfg)
    model = model.to_empty(device=device)
    cos, sin = rope_tables(cfg)  # fp64 maths on the CPU: some accelerators (MPS) lack fp64
    model.rope_cos.copy_(cos)
    model.rope_sin.copy_(sin)
    return model


def build_model(cfg: ModelConfig, seed: int, device: torch.device | str = "cpu") -> Model:
    """The fp32 model with weights determined by ``seed`` alone (bit-identical on any machine)."""
    model = empty_model(cfg, device)
    init_weights(model, seed)
    return model


@torch.no_grad()
def model_from_state(
    cfg: ModelConfig, state: Mapping[str, torch.Tensor], device: torch.device | str = "cpu"
) -> Model:
    """A model holding a copy of ``state``; names and shapes must match ``param_shapes(cfg)`` exactly."""
    shapes = param_shapes(cfg)
    missing, unexpected = shapes.keys() - state.keys(), state.keys() - shapes.keys()
    if missing or unexpected:
        raise ValueError(
            f"state does not fit the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    model = empty_model(cfg, device)
    for name, param in model.named_parameters():
        if tuple(state[name].shape) != shapes[name]:
            raise ValueError(f"{name}: shape {tuple(state[name].shape)} != expected {shapes[name]}")
        param.copy_(state[name])
    return model


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter, sorted by name, without allocating (tied weights once)."""
    with torch.device("meta"):
        model = Model(cfg)
    return {name: tuple(p.shape) for name, p in sorted(model.named_parameters())}


# --------------------------------------------------------------------------- hashing

_HASH_CHUNK = 1 << 24  # elements converted and hashed at a time (64 MiB of fp32)


def _named_tensors(source: nn.Module | Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    items = source.named_parameters() if isinstance(source, nn.Module) else source.items()
    return sorted(items, key=lambda item: item[0])


def _fp32_le_bytes(t: torch.Tensor) -> Iterator[memoryview]:
    """The tensor's values as little-endian fp32 bytes, in row-major chunks."""
    flat = t.detach().reshape(-1)
    for start in range(0, flat.numel(), _HASH_CHUNK):
        part = flat[start : start + _HASH_CHUNK].to(device="cpu", dtype=torch.float32).contiguous().numpy()
        yield memoryview(part.astype("<f4", copy=False)).cast("B")


def _field(data: bytes) -> bytes:
    """Length-prefixed field: no two different field sequences share a byte stream."""
    return struct.pack("<Q", len(data)) + data


def tensor_hash(name: str, tensor: torch.Tensor) -> str:
    """64-hex blake2b-256 of one named tensor: name, dtype tag ``float32``, shape, fp32 LE values."""
    h = hashlib.blake2b(digest_size=32, person=b"gauntlet-tensor")
    h.update(_field(name.encode()) + _field(b"float32") + _field(",".join(map(str, tensor.shape)).encode()))
    h.update(struct.pack("<Q", tensor.numel() * 4))
    for buf in _fp32_le_bytes(tensor):
        h.update(buf)  # hashlib releases the GIL on large buffers: tensors hash in parallel
    return h.hexdigest()


def tensor_hashes(source: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Name -> ``tensor_hash`` for every parameter (or state-dict entry), in sorted-name order.

    Comparing two nodes' tables pinpoints which tensors differ when their model hashes do not.
    """
    named = _named_tensors(source)
    workers = min(len(named), os.cpu_count() or 1, 8) or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(lambda item: tensor_hash(*item), named))
    return {name: digest for (name, _), digest in zip(named, digests, strict=True)}


def model_hash(source: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """64-hex blake2b-256 over the weights in canonical form; equal iff the fp32 values are equal.

    Two levels so that large models hash on all cores: each tensor's ``tensor_hash`` (over its
    name, the dtype tag ``float32``, its shape and its values as little-endian fp32 bytes), then
    one root digest over the (name, leaf digest) pairs in sorted-name order, every field
    length-prefixed. Values are converted to fp32 first, so a bf16 copy and its fp32 upcast hash
    the same; tensors are streamed in chunks, never concatenated. Accepts a module (its
    parameters, tied weights once) or a state dict; key order does not matter.
    """
    root = hashlib.blake2b(digest_size=32, person=b"gauntlet-model")
    root.update(b"gauntlet-model-hash/v1")
    for name, digest in tensor_hashes(source).items():
        root.update(_field(name.encode()) + bytes.fromhex(digest))
    return root.hexdigest()
