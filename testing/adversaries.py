"""Adversarial miner modes: cheaters the validator must never pay (``testing.run --mode NAME -- miner run``).

Each mode is a small subclass of :class:`miner.loop.Miner` overriding one named step of the
window loop where it can (two where the cheat needs it, e.g. a copier skips training *and*
swaps the encoding). They exist so the local network and the end-to-end tests exercise
the validator with real, hostile processes rather than hand-made payloads only. They live
outside the production packages: ``testing.modes`` finds them through the
``gauntlet.miner_modes`` entry points declared in ``pyproject.toml``, and ``testing.run``
hands one to the real ``gauntlet miner run`` as its miner factory.

Modes and the step they override:

    free-rider-zero   train_delta      all-zero delta, no work
    free-rider-noise  train_delta      Gaussian noise of a plausible norm
    copycat           train_delta*     another miner's upload for W, re-signed raw
    copycat-noise     train_delta*     the same, decoded, +1% noise, re-encoded
    multi-copy        train_delta*     chunks dealt round-robin from 2+ miners' uploads for W
    sybil             train_delta*     one of a pair uploading the same (copied) delta
    replay            train_delta*     a delta from an earlier window, re-signed for W
    stale             await_global_model  trains from the initial model (an old base hash)
    late              upload           uploads after the deadline plus the grace
    poisoner          encode_delta     x100 on even windows, sign-flipped on odd ones
    scaled-K          encode_delta     an honest pseudo-gradient times K (0.3, 1.5, 3, 10)
    wrong-pages       window_tokens    trains on pages assigned to somebody else
    partial-pages     window_tokens    half its own assigned pages, half somebody else's
    nan               sign             NaN / Inf in the value tables (re-signed)
    malformed         sign             truncated (even) or random garbage (odd windows)
    oversized         sign             a valid payload padded past max_upload_bytes
    forged            sign             signed by a key that is not the hotkey

(*) copiers also override ``encode_delta`` to hand over what they fetched.
``--target HOTKEY`` (repeatable, or comma-separated) names the victims: copycat,
copycat-noise, sybil and replay use the first (replay without a target replays its own
first upload), multi-copy needs at least two and uses all of them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
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

    needs_targets = 1
    targets: list[str] = []  # set by testing.modes.build_miner from --target
    noise: float = 0.0  # relative noise added to the decoded values (copycat-noise)

    @property
    def target(self) -> str | None:
        """The victim: the first ``--target``."""
        return self.targets[0] if self.targets else None

    def configure(self, targets: list[str]) -> None:
        self._stolen: Any = None

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
        if not hotkey:
            return None
        return self.fetch_all([hotkey], window, until=until).get(hotkey)

    def fetch_all(self, hotkeys: Sequence[str], window: int, *, until: float) -> dict[str, Any]:
        """Encodings of the ``hotkeys``' uploads for ``window`` that show up before ``until``.

        All of them are polled together, so one victim that never uploads does not use up
        the time another one's upload could still be taken in.
        """
        pending = [h for h in dict.fromkeys(hotkeys) if h]
        if window < 0 or not pending:
            return {}
        urls = self.chain.commitments(self.opt.netuid)
        stores = {h: self.storage if urls.get(h) in (None, self.opt.storage_url) else self._open(urls[h])
                  for h in pending}
        taken: dict[str, Any] = {}
        while True:
            for hotkey in list(pending):
                done, encoded = self._take(stores[hotkey], hotkey, window)
                if done:
                    pending.remove(hotkey)
                    if encoded is not None:
                        taken[hotkey] = encoded
            if not pending:
                return taken
            if time.time() >= until - 0.5:
                log.info("window %d: %s uploaded nothing to copy", window, ", ".join(h[:8] for h in pending))
                return taken
            time.sleep(0.25)

    def _take(self, store: Any, hotkey: str, window: int) -> tuple[bool, Any]:
        """One look at ``hotkey``'s upload: (done, encoding); not done while it is not there yet."""
        from protocol import wire

        try:
            data = store.get(delta_key(window, hotkey), max_bytes=self.hp.max_upload_bytes)
            parsed = wire.parse_delta(data, expected_shapes=self.model_shapes(), cfg=self.compressor.cfg,
                                      max_bytes=self.hp.max_upload_bytes)
        except ObjectNotFound:
            return False, None
        except (StorageError, wire.WireError) as exc:
            log.warning("cannot take %s's upload for window %d: %s", hotkey[:8], window, exc)
            return True, None
        log.info("took %s's upload for window %d", hotkey[:8], window)
        return True, parsed.encoded

    @staticmethod
    def _open(url: str) -> Any:
        from miner.setup import connect_storage

        return connect_storage(url)


class CopycatNoise(Copycat):
    noise = 0.01


class MultiCopy(Copycat):
    """Uploads a delta assembled from several miners' uploads for W, chunk by chunk, re-encoded.

    A copy detector that compares whole deltas sees no single source: each one shares only
    every n-th chunk with the mix. Uses every target that uploads in time; none, no upload.
    """

    needs_targets = 2

    def train_delta(self, window: int, global_state: dict[str, torch.Tensor], tokens: torch.Tensor
                    ) -> dict[str, torch.Tensor] | None:
        from protocol import codec

        taken = self.fetch_all(self.targets, window, until=self.deadline(window))
        self._stolen = None
        if not taken:
            return None
        cfg = self.compressor.cfg
        sources = [codec.decode(taken[h], cfg) for h in self.targets if h in taken]
        log.info("window %d: mixing the uploads of %s", window, ", ".join(h[:8] for h in taken))
        self._stolen = codec.encode(deal_chunks(sources, cfg.chunk), cfg)
        return {}


def deal_chunks(sources: Sequence[Mapping[str, torch.Tensor]], chunk: int) -> dict[str, torch.Tensor]:
    """Each codec chunk of the mix taken whole from one source, the sources in turn.

    Chunks are laid out as the codec does (each tensor flattened, cut into ``chunk``-sized
    pieces, the last one zero-padded); the turn runs on across tensors, in the first
    source's order, so single-chunk tensors are spread over the sources too. Every chunk
    of a top-k-sparse source keeps its support, so the mix re-encodes to the same positions.
    """
    if not sources:
        raise ValueError("no source deltas to mix")
    turn, mixed = 0, {}
    for name, first in sources[0].items():
        numel = first.numel()
        n_chunks = -(-numel // chunk)
        flat = torch.stack([s[name].reshape(-1).to(first.dtype) for s in sources])
        grid = torch.nn.functional.pad(flat, (0, n_chunks * chunk - numel)).view(len(sources), n_chunks, chunk)
        rows = torch.arange(n_chunks)
        pick = grid[(rows + turn) % len(sources), rows]
        mixed[name] = pick.reshape(-1)[:numel].reshape(first.shape).clone()
        turn += n_chunks
    return mixed


class Sybil(Copycat):
    """One hotkey of a pair uploading the same delta (localnet: B copies A, A copies an honest miner)."""


class Replay(Copycat):
    """Re-signs a delta of an earlier window for W: the target's W-1 upload, or its own first one."""

    needs_targets = 0

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


class Scaled(Miner):
    """Trains honestly, then sends ``factor`` times its pseudo-gradient (before error feedback).

    Probes whether the score rewards norm rather than direction: below 1 the miner hides
    its own work, above 1 it tries to outweigh the others in the aggregate.
    """

    factor: float = 1.0

    def encode_delta(self, window: int, delta: dict[str, torch.Tensor]) -> Any:
        return super().encode_delta(window, {n: t * self.factor for n, t in delta.items()})


class Scaled03(Scaled):
    factor = 0.3


class Scaled15(Scaled):
    factor = 1.5


class Scaled3(Scaled):
    factor = 3.0


class Scaled10(Scaled):
    factor = 10.0


class WrongPages(Miner):
    """Trains on pages assigned to a different (made-up) hotkey instead of its own."""

    def window_tokens(self, window: int) -> torch.Tensor:
        ids = assigned_pages(window, self.hotkey + "/not-mine", self.hp.data.public_seed, self.pages.num_pages,
                             self.hp.data.pages_per_window)
        return self.pages.pages(ids)


class PartialPages(Miner):
    """Trains honestly on only half of its assigned pages; the rest are somebody else's."""

    def window_tokens(self, window: int) -> torch.Tensor:
        return self.pages.pages(partial_pages(window, self.hotkey, self.hp.data.public_seed, self.pages.num_pages,
                                              self.hp.data.pages_per_window))


def partial_pages(window: int, hotkey: str, public_seed: str, num_pages: int, count: int) -> list[int]:
    """The first ``count // 2`` of ``hotkey``'s assigned pages, then pages of a made-up hotkey not among them."""
    own = assigned_pages(window, hotkey, public_seed, num_pages, count)
    kept = own[: count // 2]
    filler: list[int] = []
    for attempt in range(100):  # another draw only if a made-up hotkey's pages overlap ours too much
        for page in assigned_pages(window, f"{hotkey}/partial-{attempt}", public_seed, num_pages, count):
            if page not in own and page not in filler and len(kept) + len(filler) < count:
                filler.append(page)
        if len(kept) + len(filler) == count:
            break
    return kept + filler


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
