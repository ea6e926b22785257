"""Running the trainer as several processes under torchrun: torch.distributed plumbing.

torchrun starts ``nproc`` copies of the training program and tells each its place
through the environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
MASTER_PORT). Each copy joins one process group (NCCL on CUDA GPUs, gloo on the CPU),
trains its own replica on its own batches, and DistributedDataParallel averages the
gradients, so every rank takes the same optimizer step. The global batch is
``batch_size x grad_accum_steps x world_size`` sequences.

Ray Train (``jobs.ray_train``, a run ``--on ray`` with ``nodes`` or ``nproc`` above one)
starts the processes instead, sets the same variables and makes the process group itself;
it marks its workers with ``GPTDASH_RAY_TRAIN=1``, so here the group is joined as it is,
never made or destroyed a second time, and the ranks may span several machines.

Without those variables (or with a world of one) everything here is a no-op and the
trainer runs as a single process, unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from gptcore.errors import GptdashError

# Rank r draws its batches from seed + r * RANK_SEED_STRIDE: rank 0 keeps the single-process
# stream, and a large prime keeps rank 1 of seed s from replaying rank 0 of seed s + 1.
RANK_SEED_STRIDE = 1_000_003
# Set (to 1) in the environment of Ray Train's workers, which Ray started and joined already.
RAY_TRAIN_ENV = "GPTDASH_RAY_TRAIN"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (a single process by default)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    ray_train: bool = False  # Ray Train started the processes and owns their process group

    @property
    def enabled(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the one process that records (callbacks, checkpoints, samples)."""
        return self.rank == 0


def ranks_from_env(environ: Mapping[str, str] | None = None) -> Ranks:
    """The place torchrun (or Ray Train) gave this process, or a single process when
    neither was used."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return Ranks()
    world = int(env["WORLD_SIZE"])
    return Ranks(rank=int(env["RANK"]), local_rank=int(env.get("LOCAL_RANK", 0)),
                 world_size=world, local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)),
                 ray_train=env.get(RAY_TRAIN_ENV) == "1")


def check_nproc(ranks: Ranks, nproc: int, nodes: int = 1) -> None:
    """Refuse a launch whose process count differs from the config's ``nproc`` (per machine
    under torchrun; ``nodes x nproc`` in all under Ray Train, which places them)."""
    if nodes > 1 and not ranks.ray_train:
        raise GptdashError(f"nodes {nodes} spreads the run over {nodes} machines of a Ray "
                           "cluster: it needs --on ray (with GPTDASH_RAY_ADDRESS set), or set "
                           "nodes to 1")
    if ranks.ray_train:
        if ranks.world_size != nodes * nproc:
            raise GptdashError(f"Ray Train started {ranks.world_size} workers, but nodes "
                               f"{nodes} x nproc {nproc} asks for {nodes * nproc}: start it "
                               "with jobs.ray_train, which starts that many")
        return
    if nproc > 1 and not ranks.enabled:
        raise GptdashError(f"nproc {nproc} needs one process per rank: start it with "
                           f"`torchrun --nproc_per_node {nproc} ...` (gptdash's worker does "
                           "this itself), or set nproc to 1")
    if ranks.enabled and ranks.local_world_size != nproc:
        raise GptdashError(f"nproc is {nproc} but torchrun started {ranks.local_world_size} "
                           f"processes on this node: set nproc to {ranks.local_world_size} or "
                           f"launch with --nproc_per_node {nproc}")


def check_devices(nproc: int, device: torch.device) -> None:
    """Refuse ``nproc`` processes the device cannot hold: one CUDA GPU each, or the CPU.

    The launcher can call it before starting torchrun; each rank calls it again."""
    if nproc == 1 or device.type == "cpu":
        return
    if device.type != "cuda":
        raise GptdashError(f"nproc {nproc} needs CUDA GPUs or the CPU, not {device.type}: "
                           "set device to cuda or cpu, or nproc to 1")
    gpus = torch.cuda.device_count()
    if gpus < nproc:
        raise GptdashError(f"nproc {nproc} needs {nproc} GPUs, one per process, but this "
                           f"machine has {gpus}: set nproc to {gpus} or less")


def data_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s batch stream; rank 0's is ``seed`` itself."""
    return seed + rank * RANK_SEED_STRIDE


def init(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group; returns this rank's device (cuda:LOCAL_RANK on GPUs).

    Under Ray Train the group exists already and the device is the GPU Ray gave this worker
    (the current one, which ``jobs.ray_train`` sets)."""
    if ranks.ray_train:
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        return device
    check_devices(ranks.local_world_size, device)
    backend = "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=ranks.rank, world_size=ranks.world_size)
    return device


def shutdown(ranks: Ranks) -> None:
    """Leave the process group, if this process made it (Ray Train destroys its own)."""
    if ranks.enabled and not ranks.ray_train and dist.is_initialized():
        dist.destroy_process_group()


def mean(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The element-wise mean of ``tensor`` over all ranks (itself for a single process).

    A sum and a division, not ReduceOp.AVG, which gloo does not support.
    """
    if not ranks.enabled:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ranks.world_size


def mean_and_flag(tensor: torch.Tensor, flag: bool, ranks: Ranks) -> tuple[torch.Tensor, bool]:
    """``mean(tensor)`` and whether any rank raised ``flag``, in one all-reduce."""
    if not ranks.enabled:
        return tensor, flag
    packed = torch.cat([tensor.flatten().float(),
                        torch.tensor([float(flag)], device=tensor.device)])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return (packed[:-1] / ranks.world_size).view(tensor.shape), bool(packed[-1].item() > 0)


def gather(obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ranks.enabled:
        return [obj]
    out: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out
