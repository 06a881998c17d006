"""A local network for validator tests and benchmarks: chain, stores, miners, honest and hostile deltas.

Honest deltas are real training signal: the miner takes one SGD step on its assigned
pages from theta_W (delta = theta_W - theta_after = lr * grad), compresses it with the
protocol codec and signs it with the wire format, exactly what a miner uploads. Hostile
deltas are made by hand (garbage, someone else's signed upload, a rescaled copy, a huge
norm, a wrong base model, a late upload, a replay of an older window).

Test scaffolding (formerly ``validator.simulate``), kept out of the production packages:
it exists so tests and ``benchmarks/validator.py`` build the same scenarios.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from protocol.global_model import GlobalModel
from protocol.hparams import HParams
from protocol.storage import LocalStorage, delta_key


def keypair(name: str) -> Any:
    """A deterministic dev sr25519 keypair (``//name``)."""
    from bittensor.sp_core import Keypair

    return Keypair.create_from_uri(f"//{name}")


@dataclass
class Miner:
    name: str
    keypair: Any
    store: LocalStorage
    url: str

    @property
    def hotkey(self) -> str:
        return str(self.keypair.ss58_address)


def make_miners(root: Path, n: int, prefix: str = "miner") -> list[Miner]:
    """``n`` miners, each with its own local store under ``root``."""
    out = []
    for i in range(n):
        d = root / f"{prefix}{i}"
        d.mkdir(parents=True, exist_ok=True)
        out.append(Miner(f"{prefix}{i}", keypair(f"{prefix}{i}"), LocalStorage(d), f"file://{d}"))
    return out


def register_all(chain: Any, netuid: int, validator: Any, miners: list[Miner], *, stake: float = 1000.0) -> None:
    """Register the validator (with stake, hence a permit) and the miners, and commit miners' URLs."""
    chain.register(validator, netuid)
    chain.stake(validator, stake)
    for m in miners:
        chain.register(m.keypair, netuid)
        chain.commit(m.keypair, netuid, m.url)


def training_delta(model: GlobalModel, tokens: torch.Tensor, lr: float = 10.0) -> dict[str, torch.Tensor]:
    """theta_W - theta_after for one SGD step on ``tokens`` (a real pseudo-gradient)."""
    from protocol.model import model_from_state

    module = model_from_state(model.config, model.state)
    loss = module.loss(tokens)
    loss.backward()
    return {n: (lr * p.grad).detach().clone() for n, p in module.named_parameters()}


def encode(delta: Mapping[str, torch.Tensor], hp: HParams) -> Any:
    from protocol import codec

    return codec.encode(dict(delta), codec.CodecConfig.from_params(hp.codec))


def sign(encoded: Any, *, window: int, hotkey: str, base_hash: str, kp: Any, hp: HParams) -> bytes:
    from protocol import codec, wire

    meta = wire.DeltaMeta(window=window, hotkey=hotkey, base_model_hash=base_hash, spec_version=hp.spec_version)
    return wire.pack_delta(encoded, meta, codec.CodecConfig.from_params(hp.codec), kp)


def honest_upload(miner: Miner, model: GlobalModel, window: int, pages: Any, hp: HParams, num_pages: int,
                  *, lr: float = 10.0) -> bytes:
    """Train one step on the miner's assigned pages and return the signed upload (not stored)."""
    from protocol.pages import assigned_pages

    ids = assigned_pages(window, miner.hotkey, hp.data.public_seed, num_pages, hp.data.pages_per_window)
    delta = training_delta(model, pages.pages(ids), lr)
    return sign(encode(delta, hp), window=window, hotkey=miner.hotkey, base_hash=model.hash, kp=miner.keypair, hp=hp)


def put(miner: Miner, window: int, data: bytes, *, uploaded_at: float | None = None) -> None:
    """Store an upload; ``uploaded_at`` rewrites the store's timestamp (simulating the store's clock)."""
    miner.store.put(delta_key(window, miner.hotkey), data)
    if uploaded_at is not None:
        os.utime(miner.store.root / delta_key(window, miner.hotkey), (uploaded_at, uploaded_at))


class RandomPages:
    """Deterministic pages of random tokens (a fast stand-in for the KJV page store)."""

    def __init__(self, num_pages: int = 256, page_seqs: int = 8, seq_len: int = 64, vocab: int = 4096) -> None:
        self.num_pages, self.page_seqs, self.seq_len, self.vocab = num_pages, page_seqs, seq_len, vocab

    def page(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(7919 * i + 1)
        # A skewed unigram distribution, so that training steps have something to learn.
        probs = torch.arange(self.vocab, 0, -1, dtype=torch.float64) ** 2
        return torch.multinomial(probs, self.page_seqs * self.seq_len, replacement=True,
                                 generator=g).view(self.page_seqs, self.seq_len)

    def pages(self, ids: Any) -> torch.Tensor:
        parts = [self.page(int(i)) for i in ids]
        return torch.cat(parts) if parts else torch.empty(0, self.seq_len, dtype=torch.long)


class Clock:
    """A settable clock for the local chain (tests move time instead of sleeping)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class LocalNet:
    """Chain + validator context + miners, all in one directory, with a controllable clock."""

    root: Path
    hp: HParams
    chain: Any
    clock: Clock
    validator: Any
    miners: list[Miner]
    pages: Any
    netuid: int = 1

    def window_time(self, window: int, fraction: float = 0.5) -> float:
        """A time inside ``window`` (fraction of the way through)."""
        from protocol.windows import window_bounds

        b = window_bounds(window, self.hp.windows)
        start, end = self.chain.block_timestamp(b.start_block), self.chain.block_timestamp(b.end_block)
        return start + fraction * (end - start)

    def close_window(self, window: int) -> None:
        """Move the clock past ``window``'s end plus the upload grace."""
        from protocol.windows import window_bounds

        end = self.chain.block_timestamp(window_bounds(window, self.hp.windows).end_block)
        self.clock.now = max(self.clock.now, end + self.hp.windows.upload_grace_s + 1.0)


def local_net(root: Path, hp: HParams, num_miners: int, *, pages: Any = None, block_time_s: float = 1.0) -> LocalNet:
    from chain.local import LocalChain

    # Start at the real time: the validator's own proposals carry real store timestamps, which
    # the follower rule compares with the (simulated) chain time of each window's deadline.
    clock = Clock(float(int(time.time())))
    chain = LocalChain.create(root / "chain.db", block_time_s=block_time_s, weights_rate_limit=0, clock=clock)
    validator = keypair("validator")
    miners = make_miners(root / "miners", num_miners)
    register_all(chain, 1, validator, miners)
    return LocalNet(root, hp, chain, clock, validator, miners, pages or RandomPages())
