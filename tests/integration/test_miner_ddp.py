"""Data parallelism: 2 CPU processes on gloo train like one process on the whole batch.

Each rank receives rank 0's weights and the window's rows by broadcast (``miner.distributed``),
trains its disjoint share of the rows under DDP, and both ranks must end with identical
weights equal (to float tolerance) to a single process taking the same steps on the full
micro-batches: DDP averages the per-rank mean gradients, which for equal shards is the
full-batch mean gradient.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from miner import distributed as mdist
from miner.train import inner_train, load_state, make_optimizer, rank_slice
from protocol.hparams import InnerParams
from protocol.model import ModelConfig, build_model

pytestmark = pytest.mark.slow

CFG = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, mlp_hidden=64, max_seq_len=32)
PARAMS = InnerParams(lr=1e-2, steps=4, micro_batch=4)
STEPS = 4


def _batches(rows: torch.Tensor, per_step: int) -> list[torch.Tensor]:
    # Fixed, non-shuffled batches so the single-process reference sees exactly the union of the ranks' rows.
    return [rows[i * per_step : (i + 1) * per_step] for i in range(STEPS)]


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    info = mdist.init_from_env("cpu")
    assert (info.rank, info.world) == (rank, world)
    model = build_model(CFG, seed=rank + 100)  # deliberately different: rank 0's weights must win
    state = mdist.broadcast_tree(
        {n: p.detach().clone() for n, p in build_model(CFG, seed=7).named_parameters()} if rank == 0 else None, info)
    gen = torch.Generator().manual_seed(3)
    rows = mdist.broadcast_tree(
        {"rows": torch.randint(0, CFG.vocab_size, (STEPS * world * 2, 17), generator=gen)} if rank == 0 else None,
        info)["rows"]
    load_state(model, state)
    ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    opt = make_optimizer(model, PARAMS)
    # Interleave so that rank r's i-th batch is rows[i*4 + r::2] -> union over ranks = rows[i*4:(i+1)*4].
    mine = rank_slice(rows, rank, world)
    stats = inner_train(ddp, iter(_batches(mine, 2)), opt, STEPS, params=PARAMS)
    assert stats.steps == STEPS
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, f"{out_dir}/rank{rank}.safetensors")
    mdist.barrier(info)
    mdist.shutdown(info)


def test_two_process_gloo_matches_single_process(tmp_path: Path) -> None:
    world = 2
    mp.start_processes(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world,
                       start_method="spawn", join=True)
    r0 = load_file(tmp_path / "rank0.safetensors")
    r1 = load_file(tmp_path / "rank1.safetensors")
    for name in r0:
        assert torch.equal(r0[name], r1[name]), f"ranks diverged on {name}"

    # Reference: one process, the same rows, full micro-batches (rank interleaving undone).
    gen = torch.Generator().manual_seed(3)
    rows = torch.randint(0, CFG.vocab_size, (STEPS * world * 2, 17), generator=gen)
    full = torch.cat([rank_slice(rows, r, world) for r in range(world)])
    batches = [torch.cat([rank_slice(rows, r, world)[i * 2 : (i + 1) * 2] for r in range(world)])
               for i in range(STEPS)]
    assert full.shape == rows.shape
    model = build_model(CFG, seed=7)
    torch.set_num_threads(1)
    inner_train(model, iter(batches), make_optimizer(model, PARAMS), STEPS, params=PARAMS)
    for name, p in model.named_parameters():
        torch.testing.assert_close(r0[name], p.detach(), rtol=1e-4, atol=1e-5)
