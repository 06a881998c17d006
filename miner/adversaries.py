"""Adversarial miner modes: cheaters the validator must never pay (``gauntlet miner run --mode NAME``).

Each mode is a small subclass of :class:`miner.loop.Miner` overriding one named step of the
window loop where it can (two where the cheat needs it, e.g. a copier skips training *and*
swaps the encoding). They exist so the local network and the end-to-end tests exercise
the validator with real, hostile processes rather than hand-made payloads only.

Modes and the step they override:

    free-rider-zero   train_delta      all-zero delta, no work
    free-rider-noise  train_delta      Gaussian noise of a plausible norm
    copycat           train_delta*     another miner's upload for W, re-signed raw
    copycat-noise     train_delta*     the same, decoded, +1% noise, re-encoded
    sybil             train_delta*     one of a pair uploading the same (copied) delta
    replay            train_delta*     a delta from an earlier window, re-signed for W
    stale             await_global_model  trains from the initial model (an old base hash)
    late              upload           uploads after the deadline plus the grace
    poisoner          encode_delta     x100 on even windows, sign-flipped on odd ones
    wrong-pages       window_tokens    trains on pages assigned to somebody else
    nan               sign             NaN / Inf in the value tables (re-signed)
    malformed         sign             truncated (even) or random garbage (odd windows)
    oversized         sign             a valid payload padded past max_upload_bytes
    forged            sign             signed by a key that is not the hotkey

(*) copiers also override ``encode_delta`` to hand over what they fetched.
``--target HOTKEY`` names the victim of copycat, copycat-noise, sybil and replay (replay
without a target replays its own first upload).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from miner.loop import Miner
from protocol.global_model import GlobalModel
from protocol.pages import assigned_pages, derive_seed
from protocol.storage import ObjectNotFound, StorageError, delta_key
from protocol.windows import upload_deadline, window_bounds

log = logging.getLogger(__name__)


def _zeros_like_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.zeros(p.shape) for n, p in model.named_parameters()}


class FreeRiderZero(Miner):
    """Uploads an all-zero delta: no training at all."""

    def train_delta(self, window: int, global_state: dict[str, torch.Tensor], tokens: torch.Tensor
                    ) -> dict[str, torch.Tensor] | None:
        return _zeros_like_params(self.model)


class FreeRiderNoise(Miner):
    """Uploads Gaussian noise with roughly the norm of an honest delta."""

    def train_delta(self, window: int, global_state: dict[str, torch.Tensor], tokens: torch.Tensor
                    ) -> dict[str, torch.Tensor] | None:
        g = torch.Generator().manual_seed(derive_seed("gauntlet/adversary-noise", window, self.hotkey))
        std = self.hp.inner.lr * self.hp.inner.steps
        return {n: torch.randn(p.shape, generator=g) * std for n, p in self.model.named_parameters()}


class Copycat(Miner):
    """Waits for the target's upload for W, then re-signs its encoding raw under its own hotkey."""

    target: str | None = None
    noise: float = 0.0  # relative noise added to the decoded values (copycat-noise)

    def source_window(self, window: int) -> int:
        return window

    def train_delta(self, window: int, global_state: dict[str, torch.Tensor], tokens: torch.Tensor
                    ) -> dict[str, torch.Tensor] | None:
        self._stolen = self.fetch(self.target, self.source_window(window), until=self.deadline(window))
        return None if self._stolen is None else {}

    def encode_delta(self, window: int, delta: dict[str, torch.Tensor]) -> Any:
        stolen = self._stolen
        if self.noise <= 0:
            return stolen
        from protocol import codec

        dense = codec.decode(stolen, self.compressor.cfg)
        g = torch.Generator().manual_seed(derive_seed("gauntlet/adversary-copy-noise", window, self.hotkey))
        noisy = {n: t + self.noise * t.std() * torch.randn(t.shape, generator=g) for n, t in dense.items()}
        return codec.encode(noisy, self.compressor.cfg)

    def fetch(self, hotkey: str | None, window: int, *, until: float) -> Any:
        """The decoded-format encoding of ``hotkey``'s upload for ``window``; None if it never shows up."""
        from protocol import wire

        if not hotkey or window < 0:
            return None
        url = self.chain.commitments(self.opt.netuid).get(hotkey)
        store = self.storage if url in (None, self.opt.storage_url) else self._open(url)
        while True:
            try:
                data = store.get(delta_key(window, hotkey), max_bytes=self.hp.max_upload_bytes)
                parsed = wire.parse_delta(data, expected_shapes=self.model_shapes(), cfg=self.compressor.cfg,
                                          max_bytes=self.hp.max_upload_bytes)
                log.info("window %d: took %s's upload for window %d", self.source_window(window), hotkey[:8], window)
                return parsed.encoded
            except ObjectNotFound:
                pass
            except (StorageError, wire.WireError) as exc:
                log.warning("cannot take %s's upload for window %d: %s", hotkey[:8], window, exc)
                return None
            if time.time() >= until - 0.5:
                log.info("window %d: %s uploaded nothing to copy", window, hotkey[:8])
                return None
            time.sleep(0.25)

    @staticmethod
    def _open(url: str) -> Any:
        from miner.setup import connect_storage

        return connect_storage(url)


class CopycatNoise(Copycat):
    noise = 0.01


class Sybil(Copycat):
    """One hotkey of a pair uploading the same delta (localnet: B copies A, A copies an honest miner)."""


class Replay(Copycat):
    """Re-signs a delta of an earlier window for W: the target's W-1 upload, or its own first one."""

    def source_window(self, window: int) -> int:
        return window - 1

    def train_delta(self, window: int, global_state: dict[str, torch.Tensor], tokens: torch.Tensor
                    ) -> dict[str, torch.Tensor] | None:
        if self.target:
            return super().train_delta(window, global_state, tokens)
        first = next((h["window"] for h in self.progress.history), None)
        if first is None:  # nothing of our own to replay yet: train once, honestly
            self._stolen = None
            return Miner.train_delta(self, window, global_state, tokens)
        self._stolen = self.fetch(self.hotkey, first, until=self.deadline(window))
        return None if self._stolen is None else {}

    def encode_delta(self, window: int, delta: dict[str, torch.Tensor]) -> Any:
        return Miner.encode_delta(self, window, delta) if self._stolen is None else self._stolen


class Stale(Miner):
    """Never follows the aggregates: trains from the initial model and signs its (old) hash."""

    def await_global_model(self, window: int) -> bool:
        if self.global_model is None:
            self.global_model = GlobalModel.initial(self.hp)
        return True


class Late(Miner):
    """Trains honestly but uploads only after the store deadline (window end + grace) has passed."""

    def upload(self, window: int, payload: bytes) -> bool:
        end = self.chain.block_timestamp(window_bounds(window, self.hp.windows).end_block)
        wake = upload_deadline(end, self.hp.windows) + 1.0
        time.sleep(max(0.0, wake - time.time()))
        self.storage.put(delta_key(window, self.hotkey), payload)
        log.info("window %d: uploaded late (%.1fs after the deadline)", window, time.time() - wake + 1.0)
        return True


class Poisoner(Miner):
    """Large-norm (x100) deltas on even windows, sign-flipped ones on odd windows."""

    def encode_delta(self, window: int, delta: dict[str, torch.Tensor]) -> Any:
        scale = 100.0 if window % 2 == 0 else -1.0
        return super().encode_delta(window, {n: t * scale for n, t in delta.items()})


class WrongPages(Miner):
    """Trains on pages assigned to a different (made-up) hotkey instead of its own."""

    def window_tokens(self, window: int) -> torch.Tensor:
        ids = assigned_pages(window, self.hotkey + "/not-mine", self.hp.data.public_seed, self.pages.num_pages,
                             self.hp.data.pages_per_window)
        return self.pages.pages(ids)


class NotFinite(Miner):
    """A real delta whose value tables hold NaN (even windows) or +Inf (odd windows), validly signed.

    The packer refuses non-finite encodings, so the payload is packed clean, the float32
    tables are overwritten inside the signed body, and the body is signed again.
    """

    def sign(self, window: int, encoded: Any) -> bytes:
        payload = super().sign(window, encoded)
        return poison_tables(payload, self.keypair, float("nan") if window % 2 == 0 else float("inf"))


def poison_tables(payload: bytes, keypair: Any, value: float, tables: int = 3) -> bytes:
    """``payload`` with the first value of ``tables`` LUTs set to ``value``, re-signed by ``keypair``."""
    import json
    import struct

    from protocol import wire

    head = len(wire.MAGIC) + 1 + wire.SIGNATURE_BYTES
    body = bytearray(payload[head:])
    hlen = int.from_bytes(body[:8], "little")
    header = json.loads(body[8:8 + hlen])
    luts = sorted(k for k in header if k.endswith(".lut"))[:tables]
    for name in luts:
        start = 8 + hlen + header[name]["data_offsets"][0]
        body[start:start + 4] = struct.pack("<f", value)
    signature = bytes(keypair.sign(wire.signing_message(bytes(body))))
    return payload[: len(wire.MAGIC) + 1] + signature + bytes(body)


class Malformed(Miner):
    """A correctly signed payload cut in half (even windows) or random bytes (odd windows)."""

    def sign(self, window: int, encoded: Any) -> bytes:
        payload = super().sign(window, encoded)
        if window % 2 == 0:
            return payload[: len(payload) // 2]
        return os.urandom(len(payload))


class Oversized(Miner):
    """A valid payload padded to one byte over ``max_upload_bytes``."""

    def sign(self, window: int, encoded: Any) -> bytes:
        payload = super().sign(window, encoded)
        return payload + b"\0" * max(0, self.hp.max_upload_bytes + 1 - len(payload))


class Forged(Miner):
    """Claims its own hotkey in the metadata but signs with an unrelated key."""

    def sign(self, window: int, encoded: Any) -> bytes:
        from bittensor.sp_core import Keypair

        forger = Keypair.create_from_uri(f"//forger/{self.hotkey}")
        return self.compressor.pack(encoded, window=window, hotkey=self.hotkey,
                                    base_model_hash=self.global_model.hash, keypair=_Impostor(self.hotkey, forger))


class _Impostor:
    """A signer that shows one address and signs with another key (what a forger would do)."""

    def __init__(self, address: str, key: Any) -> None:
        self.ss58_address, self._key = address, key

    def sign(self, data: bytes) -> bytes:
        return bytes(self._key.sign(data))


MODES: dict[str, type[Miner]] = {
    "honest": Miner,
    "free-rider-zero": FreeRiderZero,
    "free-rider-noise": FreeRiderNoise,
    "copycat": Copycat,
    "copycat-noise": CopycatNoise,
    "sybil": Sybil,
    "replay": Replay,
    "stale": Stale,
    "late": Late,
    "poisoner": Poisoner,
    "wrong-pages": WrongPages,
    "nan": NotFinite,
    "malformed": Malformed,
    "oversized": Oversized,
    "forged": Forged,
}
ADVERSARY_MODES: tuple[str, ...] = tuple(m for m in MODES if m != "honest")
NEEDS_TARGET = frozenset({"copycat", "copycat-noise", "sybil"})


def miner_class(mode: str) -> type[Miner]:
    try:
        return MODES[mode]
    except KeyError:
        raise ValueError(f"unknown miner mode {mode!r}; valid modes: {', '.join(MODES)}") from None


def build_miner(mode: str, *args: Any, target: str | None = None, **kwargs: Any) -> Miner:
    """A miner of ``mode`` (``Miner(*args, **kwargs)`` plus the victim hotkey for copiers)."""
    cls = miner_class(mode)
    if mode in NEEDS_TARGET and not target:
        raise ValueError(f"miner mode {mode!r} needs --target HOTKEY (whose upload to copy)")
    miner = cls(*args, **kwargs)
    if isinstance(miner, Copycat):
        miner.target = target
        miner._stolen = None
    return miner
