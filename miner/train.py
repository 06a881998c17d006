"""Inner training: H optimizer steps on a miner's assigned pages, and the pseudo-gradient.

Pure building blocks with no chain, storage or wallet: the miner loop, the validator's
tests and ``benchmarks/convergence.py`` all train through these functions, so "what a
miner does in a window" has exactly one definition.

* ``make_optimizer`` builds AdamW (default) or Muon (Newton-Schulz orthogonalised momentum
  for 2-D hidden weights, AdamW for embeddings and norm gains; MuLoCo reports that Muon
  inner steps compress better).
* ``iter_batches`` cycles deterministically through the assigned sequences; under
  ``torch.distributed`` each rank takes a disjoint slice of them.
* ``inner_train`` runs the steps and returns loss/throughput statistics.
* ``pseudo_gradient`` is Δ = θ_global - θ_local (the direction the outer step subtracts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from protocol.hparams import InnerParams

# --------------------------------------------------------------------------- Muon


@torch.no_grad()
def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise ``g`` (U·Vᵀ of its SVD) with the quintic Newton-Schulz iteration.

    Coefficients from Keller Jordan's Muon: they push singular values into ~[0.7, 1.2] in five
    steps, which is all Muon needs (an exact polar factor is not required).
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float()
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / (x.norm() + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights: SGD-Nesterov momentum, orthogonalised, with decoupled weight decay.

    The update is scaled by ``0.2·sqrt(max(rows, cols))`` so its RMS matches AdamW's; the same
    learning rate and weight decay as the AdamW groups then work (Moonshot's "Muon is scalable").
    """

    def __init__(self, params, lr: float, momentum: float = 0.95, weight_decay: float = 0.0,
                 ns_steps: int = 5) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "ns_steps": ns_steps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                direction = p.grad.add(buf, alpha=group["momentum"])  # Nesterov
                update = newton_schulz(direction, group["ns_steps"]).to(p.dtype)
                scale = 0.2 * math.sqrt(max(p.shape[0], p.shape[1]))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


class MuonAdamW:
    """Muon on hidden 2-D weights plus AdamW on everything else, behind one optimizer-like face."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW) -> None:
        self.optimizers = [muon, adamw]

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict:
        return {"muon": self.optimizers[0].state_dict(), "adamw": self.optimizers[1].state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizers[0].load_state_dict(state["muon"])
        self.optimizers[1].load_state_dict(state["adamw"])


Optimizer = torch.optim.Optimizer | MuonAdamW


def make_optimizer(model: nn.Module, params: InnerParams) -> Optimizer:
    """The inner optimizer named by the hyper-parameters (norm gains are never weight-decayed)."""
    decay, no_decay, hidden = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            no_decay.append(p)
        elif params.optimizer == "muon" and "tok_emb" not in name:
            hidden.append(p)  # embeddings/output head stay on AdamW, as in the Muon papers
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": params.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=params.lr, betas=tuple(params.betas), eps=1e-8)
    if params.optimizer == "adamw":
        return adamw
    return MuonAdamW(Muon(hidden, lr=params.lr, weight_decay=params.weight_decay), adamw)


def set_lr(optimizer: Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def lr_at(step: int, params: InnerParams) -> float:
    """Linear warm-up over ``warmup_steps`` (counted over the miner's life), then constant."""
    if params.warmup_steps and step < params.warmup_steps:
        return params.lr * (step + 1) / params.warmup_steps
    return params.lr


# --------------------------------------------------------------------------- data


def rank_slice(tokens: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's disjoint share of the window's sequences (strided, so pages mix across ranks)."""
    if world <= 1:
        return tokens
    part = tokens[rank::world]
    if part.shape[0] == 0:
        raise ValueError(f"{tokens.shape[0]} sequences cannot be split over {world} ranks")
    return part


def iter_batches(tokens: torch.Tensor, micro_batch: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """``steps`` micro-batches cycling over ``tokens`` [N, T], reshuffled each pass by ``seed``.

    Deterministic given (tokens, seed): a restarted miner re-trains a window identically.
    """
    n = tokens.shape[0]
    if n == 0:
        raise ValueError("no sequences to train on")
    gen = torch.Generator().manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)
    order = torch.empty(0, dtype=torch.long)
    pos = 0
    for _ in range(steps):
        idx = []
        while len(idx) < micro_batch:
            if pos >= order.numel():
                order, pos = torch.randperm(n, generator=gen), 0
            take = min(micro_batch - len(idx), order.numel() - pos)
            idx.extend(order[pos : pos + take].tolist())
            pos += take
        yield tokens[idx]


# --------------------------------------------------------------------------- training


@dataclass
class InnerStats:
    steps: int
    tokens: int
    first_loss: float
    last_loss: float
    mean_loss: float
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def inner_train(
    model: nn.Module,
    batches: Iterator[torch.Tensor],
    optimizer: Optimizer,
    steps: int,
    *,
    params: InnerParams | None = None,
    step_offset: int = 0,
    grad_clip: float | None = 1.0,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> InnerStats:
    """Run up to ``steps`` optimizer steps; ``model`` may be wrapped in DDP (gradients then all-reduce).

    ``on_step(step, loss, tokens_per_s)`` feeds the progress line; ``should_stop`` lets the loop
    abandon a window whose deadline can no longer be met.
    """
    core = model.module if hasattr(model, "module") else model
    model.train()
    losses: list[float] = []
    tokens = 0
    t0 = time.perf_counter()
    for i, batch in zip(range(steps), batches, strict=False):
        if should_stop is not None and should_stop():
            break
        if params is not None:
            set_lr(optimizer, lr_at(step_offset + i, params))
        batch = batch.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        # DDP hooks its all-reduce on forward(); call the wrapper, and compute the loss from logits.
        logits = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(core.parameters(), grad_clip)
        optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"inner loss became {value} at step {i}")
        losses.append(value)
        tokens += batch.numel()
        if on_step is not None:
            on_step(i + 1, value, tokens / max(time.perf_counter() - t0, 1e-9))
    seconds = time.perf_counter() - t0
    if not losses:
        return InnerStats(0, 0, math.nan, math.nan, math.nan, seconds)
    return InnerStats(len(losses), tokens, losses[0], losses[-1], sum(losses) / len(losses), seconds)


@torch.no_grad()
def pseudo_gradient(global_state: Mapping[str, torch.Tensor], local_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Δ = θ_global - θ_local per parameter (fp32, CPU): the outer step subtracts it."""
    return {
        name: (g.detach().float().cpu() - local_state[name].detach().float().cpu()).contiguous()
        for name, g in global_state.items()
    }


@torch.no_grad()
def load_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a global state (name -> tensor) into the model's parameters in place."""
    params = dict(model.named_parameters())
    missing = set(params) - set(state)
    if missing:
        raise KeyError(f"state lacks parameters: {sorted(missing)[:3]}")
    for name, p in params.items():
        p.copy_(state[name].to(p.device, p.dtype))


@torch.no_grad()
def evaluate(model: nn.Module, tokens: torch.Tensor, batch: int = 16, device: torch.device | str = "cpu") -> float:
    """Mean next-token loss of ``model`` over ``tokens`` [N, T] (held-out evaluation)."""
    core = model.module if hasattr(model, "module") else model
    was_training = core.training
    core.eval()
    total, count = 0.0, 0
    for start in range(0, tokens.shape[0], batch):
        rows = tokens[start : start + batch].to(device)
        total += float(core.per_sequence_loss(rows).sum())
        count += rows.shape[0]
    core.train(was_training)
    return total / max(count, 1)
