"""The miner's view of the SparseLoCo codec and wire format: error feedback, encode, sign.

One thin adapter over ``protocol.codec`` and ``protocol.wire`` so the loop, the tests and the
benchmark share a single definition of "what is sent for a pseudo-gradient":

    e <- beta*e + delta;   sent = encode(e);   e <- e - decode(sent)

``restore`` adds a sent-but-never-delivered update back into the buffer, which makes a
window that a crash kept from being uploaded lossless for error feedback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from protocol.hparams import HParams


class Compressor:
    """Error-feedback state plus the codec configuration of one miner."""

    def __init__(self, hp: HParams) -> None:
        from miner.error_feedback import ErrorFeedback
        from protocol import codec

        self.hp = hp
        self._codec = codec
        self.cfg = codec.CodecConfig.from_params(hp.codec)
        self.beta = hp.codec.ef_beta
        self._ef = ErrorFeedback()

    @property
    def ef(self) -> dict[str, torch.Tensor]:
        """The live buffers (not copies): e per parameter."""
        return self._ef.buffers

    # -- error feedback

    def step(self, delta: Mapping[str, torch.Tensor]) -> Any:
        """Accumulate delta into the buffer, encode it, and subtract what was sent; returns the encoding."""
        self._ef.accumulate({k: v.detach().float().cpu() for k, v in delta.items()}, self.beta)
        return self._ef.compress(self.cfg)

    def decode(self, encoded: Any) -> dict[str, torch.Tensor]:
        return self._codec.decode(encoded, self.cfg)

    def restore(self, encoded: Any) -> None:
        """Put an undelivered update back: e <- e + decode(sent)."""
        for name, s in self.decode(encoded).items():
            if name in self.ef:
                self.ef[name].add_(s.reshape(self.ef[name].shape))

    def load_ef(self, ef: Mapping[str, torch.Tensor]) -> None:
        self._ef.load_state_dict(ef)

    @staticmethod
    def nbytes(encoded: Any) -> int:
        """Bytes of the encoded tensors themselves (the signed file adds a small header)."""
        return sum(e.idx.numel() + e.codes.numel() + e.lut.numel() * 4 for e in encoded.values())

    # -- wire

    def pack(self, encoded: Any, *, window: int, hotkey: str, base_model_hash: str, keypair: Any) -> bytes:
        from protocol import wire

        meta = wire.DeltaMeta(window=window, hotkey=hotkey, base_model_hash=base_model_hash,
                              spec_version=self.hp.spec_version)
        return wire.pack_delta(encoded, meta, self.cfg, keypair)

    def unpack(self, data: bytes, shapes: Mapping[str, tuple[int, ...]]) -> Any:
        """The encoding inside one of this miner's own signed payloads (for ``restore``)."""
        from protocol import wire

        parsed = wire.parse_delta(data, expected_shapes=dict(shapes), cfg=self.cfg, max_bytes=self.hp.max_upload_bytes)
        return parsed.encoded
