"""Stage 2 on other devices and precisions: ``--device`` / ``--dtype`` (``validator.evaluate.Compute``).

bf16 autocast must rank peers as fp32 does (on the tiny preset, on the CPU), fp32 on the CPU must
stay what it was, and a CUDA evaluation must match the CPU's losses within bf16 tolerance (skipped
without a GPU). Run: ``pytest tests/unit/test_validator_precision.py -q``
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from protocol.model import build_model, model_from_state, preset
from validator.evaluate import Compute, EvalJob, WindowEvaluator

CFG = preset("tiny")


class Pages:
    def pages(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.cat([torch.randint(0, CFG.vocab_size, (2, 65), generator=torch.Generator().manual_seed(500 + i))
                          for i in ids])


def _peers(model: torch.nn.Module, pages: Pages) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Five deltas from pure noise to the true loss gradient, 2 % of each tensor's coordinates."""
    model.zero_grad(set_to_none=True)
    model.loss(pages.pages([1, 2, 3, 4])).backward()
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, share in enumerate((0.0, 0.25, 0.5, 0.75, 1.0)):
        delta = {}
        for name, p in model.named_parameters():
            grad = p.grad.reshape(-1)
            idx = grad.abs().topk(max(1, p.numel() // 50)).indices.sort().values
            noise = torch.randn(idx.numel(), generator=g) * grad[idx].std()
            delta[name] = (idx, share * grad[idx] + (1 - share) * noise)
        out[f"peer-{k}"] = delta
    model.zero_grad(set_to_none=True)
    return out


def _contributions(compute: Compute) -> dict[str, float]:
    model = build_model(CFG, seed=7)
    pages = Pages()
    peers = _peers(model, pages)
    ev = WindowEvaluator(model_from_state(CFG, model.state_dict(), compute.torch_device), pages, [1, 2], compute)
    out = {}
    for hk, delta in peers.items():
        r = ev.evaluate(EvalJob(hk, delta, 0.5, (3, 4)))
        assert (r.device, r.dtype) == (compute.torch_device.type, {"fp32": "float32", "bf16": "bfloat16"}[compute.dtype])
        out[hk] = r.loss_before_random - r.loss_after_random
    return out


def test_bf16_ranks_peers_as_fp32_does() -> None:
    fp32, bf16 = _contributions(Compute("cpu", "fp32")), _contributions(Compute("cpu", "bf16"))
    assert sorted(fp32, key=fp32.get) == sorted(bf16, key=bf16.get) == [f"peer-{k}" for k in range(5)]
    for hk in fp32:
        assert bf16[hk] == pytest.approx(fp32[hk], rel=0.1, abs=2e-3), hk


def test_fp32_on_the_cpu_is_unchanged_by_an_explicit_compute() -> None:
    assert _contributions(Compute()) == _contributions(Compute("cpu", "fp32"))


def test_bad_device_and_dtype_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        Compute("cpu", "fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device must be"):
        Compute("mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            Compute("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_the_cpu_within_bf16_tolerance() -> None:
    cpu = _contributions(Compute("cpu", "fp32"))
    for dtype, rel in (("fp32", 1e-3), ("bf16", 0.1)):
        gpu = _contributions(Compute("cuda", dtype))  # type: ignore[arg-type]
        assert sorted(gpu, key=gpu.get) == sorted(cpu, key=cpu.get), dtype
        for hk in cpu:
            assert gpu[hk] == pytest.approx(cpu[hk], rel=rel, abs=2e-3), (dtype, hk)
