"""How a run spreads over processes: one ``Strategy`` object per process.

The loop asks the strategy, never ``if ddp / if fsdp``, for the five things that differ
(after litgpt's ``Strategy``/Fabric split):

* ``wrap(model)``: DDP wrapper, FSDP2 ``fully_shard`` of every block (as the loop's
  ``train.model.find_blocks`` names them) and the root, or nothing;
* ``grad_sync(model, sync)``: a context for one micro-step; gradients are only
  reduced on the last micro-step of an optimizer step (DDP ``no_sync``, FSDP
  ``set_requires_gradient_sync``);
* ``unwrap(model)``: the module to evaluate;
* ``full_state(model, optimizer)``: the unsharded model and optimizer state dicts a
  checkpoint stores (None for the model when the plain module already holds it);
* ``load_optimizer_state(model, optimizer, state)``: the inverse for the optimizer.

Plus the collectives the loop needs (barrier, all-reduce of a CPU tensor, agreement on
failure). ``make_strategy(config)`` reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from babeltower.errors import BabelError


class Strategy:
    """One process, one device (also the base: rank, world, device and collectives)."""

    name = "single"

    def __init__(self, device: torch.device, rank: int = 0, world: int = 1,
                 initialized_here: bool = False):
        self.device, self.rank, self.world = device, rank, world
        self.initialized_here = initialized_here

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.name != "single"

    @property
    def fused_optimizer(self) -> bool:
        """Fused AdamW where torch has the kernel (not on FSDP's sharded DTensors)."""
        return self.device.type in ("cpu", "cuda")

    # ---- the model ----
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def grad_sync(self, model: torch.nn.Module, sync: bool):
        return contextlib.nullcontext()

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def full_state(self, model, optimizer) -> tuple[dict | None, dict]:
        return None, optimizer.state_dict()

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    # ---- collectives ----
    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce of a CPU tensor (moved to the GPU and back under NCCL)."""
        if self.distributed and self.world > 1:
            red = dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX
            if self.device.type == "cuda":
                moved = t.to(self.device)
                dist.all_reduce(moved, op=red)
                t.copy_(moved.cpu())
            else:
                dist.all_reduce(t, op=red)
        return t

    def agree(self, ok: bool) -> bool:
        """True on every rank iff ``ok`` on every rank (so all ranks fail together)."""
        if not (self.distributed and self.world > 1):
            return ok
        t = torch.tensor([0.0 if ok else 1.0])
        return self.all_reduce_(t, "max").item() == 0.0

    def close(self) -> None:
        if self.initialized_here:
            dist.destroy_process_group()


class DDPStrategy(Strategy):
    """Replicated weights, gradients all-reduced on the last micro-step."""

    name = "ddp"

    def wrap(self, model):
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def grad_sync(self, model, sync: bool):
        return contextlib.nullcontext() if sync else model.no_sync()

    def unwrap(self, model):
        return model.module


class FSDPStrategy(Strategy):
    """FSDP2: every transformer block and the root sharded; full state dicts on save."""

    name = "fsdp"

    def __init__(self, device: torch.device, rank: int, world: int, initialized_here: bool,
                 find_blocks: Callable[[torch.nn.Module], list[torch.nn.Module]]):
        super().__init__(device, rank, world, initialized_here)
        self.find_blocks = find_blocks   # the architecture's blocks: the sharding unit

    @property
    def fused_optimizer(self) -> bool:
        return False

    def wrap(self, model):
        for block in self.find_blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model

    def grad_sync(self, model, sync: bool):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def full_state(self, model, optimizer):
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(model, options=opts),
                get_optimizer_state_dict(model, optimizer, options=opts))

    def load_optimizer_state(self, model, optimizer, state):
        set_optimizer_state_dict(model, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True))


def resolve_device(want: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> this process's device (cuda:LOCAL_RANK)."""
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise BabelError("device: cuda requested but CUDA is not available")
    return torch.device(f"cuda:{local_rank}" if want == "cuda" else "cpu")


def make_strategy(strategy: str, device: str,
                  find_blocks: Callable[[torch.nn.Module], list[torch.nn.Module]]) -> Strategy:
    """The strategy for this process (``auto``: DDP under torchrun, else one process);
    initialises the process group (NCCL on GPUs, gloo on CPUs) if nobody has.
    ``find_blocks(model)`` names the FSDP sharding units (the transformer blocks)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if strategy == "auto":
        strategy = "ddp" if world > 1 else "single"
    if strategy == "single" and world > 1:
        raise BabelError("strategy: single cannot run under torchrun with WORLD_SIZE > 1")
    dev = resolve_device(device, local_rank)
    if strategy == "single":
        return Strategy(dev)
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if "MASTER_ADDR" not in os.environ:   # a lone process (no torchrun)
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend, rank=rank, world_size=world)
        initialized_here = True
    if strategy == "ddp":
        return DDPStrategy(dev, rank, world, initialized_here)
    return FSDPStrategy(dev, rank, world, initialized_here, find_blocks)
