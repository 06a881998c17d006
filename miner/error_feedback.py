"""The miner's error-feedback buffer: what SparseLoCo did not send yet.

Only a sender keeps this state, so it lives on the miner side; ``protocol.codec`` holds what
both sides must agree on (the encoding and its checks). ``miner.compress`` wraps it with the
codec configuration and the wire format.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from protocol.codec import CodecConfig, EncodedTensor, encode_tensor_with_decoded, map_tensors

__all__ = ["ErrorFeedback"]


class ErrorFeedback:
    """Per-parameter error-feedback buffers (float32): ``e <- beta*e + delta``; send ``Q(e)``; ``e <- e - Q(e)``.

    What is not sent this window stays in the buffer and is sent later, which is what lets
    1.5% density train as well as dense communication (SparseLoCo).
    """

    def __init__(self) -> None:
        self.buffers: dict[str, Tensor] = {}

    def accumulate(self, delta: Mapping[str, Tensor], beta: float) -> None:
        for name, d in delta.items():
            buf = self.buffers.get(name)
            if buf is None:
                self.buffers[name] = d.detach().to(torch.float32, copy=True).contiguous()
            else:
                buf.mul_(beta).add_(d.detach())

    def compress(self, cfg: CodecConfig) -> dict[str, EncodedTensor]:
        """Encode every buffer and subtract exactly what the receiver will decode."""
        return map_tensors(lambda n: self._compress_one(n, cfg), self.buffers)

    def _compress_one(self, name: str, cfg: CodecConfig) -> EncodedTensor:
        buf = self.buffers[name]
        enc, sent = encode_tensor_with_decoded(buf, cfg)
        if sent is not None:
            pos, val = sent.indices.reshape(-1), sent.values.reshape(-1)
            if int(sent.indices[-1].max()) >= buf.numel():  # kept padding carries nothing
                keep = pos < buf.numel()
                pos, val = pos[keep], val[keep]
            buf.view(-1).index_add_(0, pos, -val)
        return enc

    def state_dict(self) -> dict[str, Tensor]:
        return {name: buf.clone() for name, buf in self.buffers.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.buffers = {
            name: t.detach().to(torch.float32, copy=True).contiguous() for name, t in state.items()
        }
