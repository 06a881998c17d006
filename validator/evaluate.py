"""Stage 2: exact loss before/after each accepted delta, plus a first-order estimate.

For window W every evaluated peer gets:

* ``loss_before/after_assigned`` on ``eval_pages`` of the pages it was assigned (which ones
  is drawn from the window's beacon, unknown until uploads are due, so training only a subset
  does not pay),
* ``loss_before/after_random`` on pages drawn from the window's beacon, which no miner can
  predict; one random set per window, shared by all peers and all validators, so their scores
  compare;
* ``control_losses``, per page, on the window's *control* pages, drawn from the public beacon
  (``protocol.pages.control_pages``): what the per-page proof of work is measured against, so
  that every validator reaches the same verdict on it (``scoring.work``).

"After" means theta_W with the evaluation step applied: theta - eta * c * delta, where
eta = ``eval_step_scale`` x outer lr and c is the subnet's size rule (``scoring.scale``):
min(1, cap / norm) with cap = ``eval_clip_ratio`` x the window's median norm (the default
``cap``), or median / norm (``normalise``: the direction only, so k x delta scores as delta). The random-page loss
is also measured further along the direction, at ``eval_reach`` multiples of that step (4, 16,
64): the contribution is the best gain over them (``scoring.loss.reach_contribution``).

Sharing and exactness: the "before" losses are computed once per page id and cached for
the window. The delta is applied in place to one model copy and undone by writing back
the original values saved at the touched indices, never by adding it again (theta + d - d
is not theta in floating point). Assigned and random pages go through one batched forward
under ``torch.inference_mode`` (with the control pages between them).

The first-order estimate comes from one backward pass on the random batch at theta_W: the
predicted loss change is -eta * c * <g, delta> over the delta's kept coordinates only.
It is stored next to the exact change so the two can be compared per receipt.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from protocol.model import Model
from protocol.sync import SparseUpdate
from scoring.loss import first_order_estimate


class PageSource(Protocol):
    """Token pages by id; the validator's view of ``protocol.pages.PageStore``."""

    def pages(self, ids: Sequence[int]) -> torch.Tensor:
        """LongTensor [len(ids) * page_seqs, seq_len] in the order given."""
        ...


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class Compute:
    """Where and in what precision Stage 2 runs (``--device``, ``--dtype``).

    The weights stay fp32 on ``device`` whatever the dtype: the evaluation step is applied to
    and undone from fp32 values exactly. ``bf16`` autocasts the forward passes (matmuls in
    bf16, norms and the cross-entropy in fp32), about 4x the fp32 throughput on an H100-class
    GPU; on the CPU it only serves to compare the two paths.
    """

    device: str = "cpu"
    dtype: Literal["fp32", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        dev = torch.device(self.device)  # raises on a malformed name
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but no CUDA device is available")
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.torch_device.type, dtype=DTYPES[self.dtype])


@dataclass(frozen=True, slots=True)
class EvalJob:
    """One peer's Stage-2 work: its delta, the step to apply and the pages to score."""

    hotkey: str
    #: The delta, or a zero-argument callable that decodes it (``validator.stage1.Decoded.load_update``):
    #: a window's jobs are planned at once, and holding every decoded delta would cost 12 bytes per
    #: kept value per peer; lazily, one is decoded at a time, while it is evaluated.
    update: SparseUpdate | Callable[[], SparseUpdate]
    step: float  # eta * size factor (scoring.scale): theta_after = theta - step * delta
    assigned_page_ids: tuple[int, ...]
    #: Further multiples of ``step`` at which only the random-page loss is measured (``scoring.eval_reach``).
    reach: tuple[float, ...] = ()

    def sparse(self) -> SparseUpdate:
        return self.update() if callable(self.update) else self.update


@dataclass(frozen=True, slots=True)
class EvalResult:
    hotkey: str
    loss_before_assigned: float
    loss_after_assigned: float
    loss_before_random: float
    loss_after_random: float
    estimate: float  # first-order predicted change of the random loss (negative = better)
    seconds: float
    #: (before, after) per assigned page, in ``EvalJob.assigned_page_ids`` order: the per-page
    #: proof-of-work evidence (``scoring.loss.page_indicator``).
    page_losses: tuple[tuple[float, float], ...] = ()
    #: (multiple, random loss at theta - multiple * step * delta) for the job's ``reach``: how far the
    #: direction keeps lowering the loss (``scoring.loss.reach_contribution``).
    reach_losses: tuple[tuple[float, float], ...] = ()
    #: (before, after) per control page, in ``control_page_ids`` order: what the per-page proof of work
    #: is measured against. Empty: no control pages (a worker of an older version); the proof of work
    #: then falls back to the random pages.
    control_losses: tuple[tuple[float, float], ...] = ()
    #: Where the numbers were computed (published in the receipt): device class and parameter dtype
    #: set the tolerance an auditor recomputing them on other hardware needs; ``evaluator`` says
    #: whether a worker did it (its "before" batches hold other pages than the validator's).
    device: str = "cpu"
    dtype: str = "float32"
    evaluator: str = "validator"

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> EvalResult:
        """The inverse of :meth:`as_dict` after a JSON round trip (lists back to tuples)."""
        pages = tuple((float(b), float(a)) for b, a in data.get("page_losses", ()))  # type: ignore[attr-defined]
        reach = tuple((float(c), float(a)) for c, a in data.get("reach_losses", ()))  # type: ignore[attr-defined]
        control = tuple((float(b), float(a)) for b, a in data.get("control_losses", ()))  # type: ignore[attr-defined]
        return cls(**{**data, "page_losses": pages, "reach_losses": reach,  # type: ignore[arg-type]
                      "control_losses": control})


@dataclass(frozen=True, slots=True)
class RemoteJob:
    """One Stage-2 evaluation as it travels to a worker (``validator.worker``) through the work queue.

    Everything the numbers depend on, and where the upload is: the worker fetches the delta
    itself and checks it is still the upload Stage 1 accepted (``payload_hash``).
    """

    window: int
    hotkey: str
    url: str
    payload_hash: str
    step: float
    assigned_page_ids: tuple[int, ...]
    random_page_ids: tuple[int, ...]
    seed_hex: str
    reach: tuple[float, ...] = ()
    control_page_ids: tuple[int, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"window": self.window, "hotkey": self.hotkey, "url": self.url, "payload_hash": self.payload_hash,
                "step": self.step, "assigned_page_ids": list(self.assigned_page_ids),
                "random_page_ids": list(self.random_page_ids), "seed_hex": self.seed_hex, "reach": list(self.reach),
                "control_page_ids": list(self.control_page_ids)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RemoteJob:
        """The inverse of :meth:`to_json`; a missing or mistyped field is a ``ValueError`` naming it."""
        try:
            return cls(int(data["window"]), str(data["hotkey"]), str(data["url"]), str(data["payload_hash"]),
                       float(data["step"]), tuple(int(p) for p in data["assigned_page_ids"]),
                       tuple(int(p) for p in data["random_page_ids"]), str(data["seed_hex"]),
                       tuple(float(c) for c in data.get("reach", ())),
                       tuple(int(p) for p in data.get("control_page_ids", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed Stage-2 job: {type(exc).__name__}: {exc}") from None


def eval_subset(assigned: Sequence[int], count: int, *, seed: bytes, hotkey: str) -> tuple[int, ...]:
    """``count`` of a peer's assigned pages, chosen by ``seed`` (the window's beacon; all of them if fewer)."""
    pages = sorted(set(assigned))
    if len(pages) <= count:
        return tuple(pages)
    key = lambda p: hashlib.blake2b(seed + hotkey.encode() + p.to_bytes(8, "little"), digest_size=8).digest()  # noqa: E731
    return tuple(sorted(pages, key=key)[:count])


@torch.no_grad()
def apply_in_place(model: Model, update: SparseUpdate, step: float) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """theta[idx] -= step * values; returns what :func:`restore` needs to undo it exactly."""
    params = dict(model.named_parameters())
    saved = []
    for name, (idx, values) in update.items():
        flat = params[name].data.view(-1)
        idx, values = idx.to(flat.device), values.to(flat.device)
        original = flat[idx].clone()
        flat.index_copy_(0, idx, original - step * values)
        saved.append((flat, idx, original))
    return saved


@torch.no_grad()
def restore(saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """Write back the original values at the touched indices (in reverse, for duplicates)."""
    for flat, idx, original in reversed(saved):
        flat.index_copy_(0, idx, original)


class WindowEvaluator:
    """Evaluates any number of peers against one theta_W, one random and one control page set."""

    def __init__(self, model: Model, pages: PageSource, random_page_ids: Sequence[int],
                 compute: Compute | None = None, control_page_ids: Sequence[int] = ()) -> None:
        self.model = model.eval()
        self.compute = compute or Compute(device=str(next(model.parameters()).device))
        self.pages = pages
        self.random_page_ids = tuple(random_page_ids)
        self.control_page_ids = tuple(control_page_ids)
        self._random_tokens = pages.pages(self.random_page_ids)
        self._control_tokens = pages.pages(self.control_page_ids) if self.control_page_ids else None
        self._before: dict[int, torch.Tensor] = {}  # page id -> per-sequence losses at theta_W
        self._grad: dict[str, torch.Tensor] | None = None
        self.loss_before_random = self._page_losses_before(self.random_page_ids)
        if self.control_page_ids:
            self._page_losses_before(self.control_page_ids)

    # -- shared "before" losses
    def _page_losses_before(self, page_ids: Sequence[int]) -> float:
        missing = [p for p in dict.fromkeys(page_ids) if p not in self._before]
        if missing:
            losses = self._losses(self.pages.pages(missing))
            for p, chunk in zip(missing, losses.chunk(len(missing)), strict=True):
                self._before[p] = chunk.clone()
        return float(torch.cat([self._before[p] for p in page_ids]).double().mean())

    def _losses(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-sequence losses on the compute device, returned on the CPU."""
        with torch.inference_mode(), self.compute.autocast():
            return self.model.per_sequence_loss(tokens.to(self.compute.torch_device)).cpu()

    # -- first-order screen
    def gradient(self) -> dict[str, torch.Tensor]:
        """dL_random/dtheta at theta_W, flattened per parameter (one backward, computed once)."""
        if self._grad is None:
            self.model.zero_grad(set_to_none=True)
            with torch.enable_grad(), self.compute.autocast():
                self.model.loss(self._random_tokens.to(self.compute.torch_device)).backward()
            self._grad = {n: p.grad.detach().reshape(-1).cpu() for n, p in self.model.named_parameters()
                          if p.grad is not None}
            self.model.zero_grad(set_to_none=True)
        return self._grad

    def estimate(self, update: SparseUpdate, step: float) -> float:
        """Predicted change of the random loss: -step * <g, delta> over the kept coordinates."""
        grad = self.gradient()
        names = [n for n in update if n in grad]
        if not names:
            return 0.0
        g = torch.cat([grad[n][update[n][0]] for n in names])
        d = torch.cat([update[n][1] for n in names])
        return first_order_estimate(g, d, step)

    def _per_page(self, page_ids: Sequence[int], after: torch.Tensor) -> tuple[tuple[float, float], ...]:
        """(before, after) mean loss per page, from the per-sequence "after" losses of those pages in order."""
        if not page_ids:
            return ()
        return tuple((float(self._before[p].double().mean()), float(a.mean()))
                     for p, a in zip(page_ids, after.chunk(len(page_ids)), strict=True))

    # -- exact before/after
    def evaluate(self, job: EvalJob) -> EvalResult:
        t0 = time.perf_counter()
        update = job.sparse()
        before_assigned = self._page_losses_before(job.assigned_page_ids)
        estimate = self.estimate(update, job.step)
        assigned = self.pages.pages(job.assigned_page_ids)
        control = self._control_tokens if self._control_tokens is not None else assigned[:0]
        batch = torch.cat([assigned, control, self._random_tokens])
        saved = apply_in_place(self.model, update, job.step)
        try:
            losses = self._losses(batch).double()
        finally:
            restore(saved)
        reach = []
        for multiple in job.reach:
            saved = apply_in_place(self.model, update, job.step * multiple)
            try:
                reach.append((float(multiple), float(self._losses(self._random_tokens).double().mean())))
            finally:
                restore(saved)
        n, m = assigned.shape[0], assigned.shape[0] + control.shape[0]
        page_losses = self._per_page(job.assigned_page_ids, losses[:n])
        control_losses = self._per_page(self.control_page_ids, losses[n:m])
        return EvalResult(
            hotkey=job.hotkey,
            loss_before_assigned=before_assigned,
            loss_after_assigned=float(losses[:n].mean()),
            loss_before_random=self.loss_before_random,
            loss_after_random=float(losses[m:].mean()),
            estimate=estimate,
            seconds=time.perf_counter() - t0,
            page_losses=page_losses,
            reach_losses=tuple(reach),
            control_losses=control_losses,
            device=self.compute.torch_device.type,
            dtype=str(DTYPES[self.compute.dtype]).removeprefix("torch."),  # float32 or bfloat16 (autocast)
        )
