"""The device a run trains on: picking it, naming it, and what it offers."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gptcore.config import TrainConfig
from gptcore.errors import GptdashError
from gptcore.machine import host_memory_mb


def resolve_device(name: str) -> torch.device:
    """The torch device for a config's ``device`` (auto picks cuda, then mps, then cpu)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GptdashError("device cuda was asked for, but no CUDA GPU is visible: "
                           "use device=auto or device=cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise GptdashError("device mps was asked for, but it is not available: use device=auto")
    return torch.device(name)


def available_memory_mb(device: torch.device) -> float | None:
    """Memory a run could use on ``device``: free GPU memory, or physical RAM on the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free / 2**20
    if device.type == "cpu":
        return host_memory_mb()
    return None


def device_label(device: torch.device) -> str:
    """A short name for people: ``cpu`` or ``cuda (NVIDIA H100 ...)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def usable_cores() -> int:
    """The physical cores among the CPUs this process may run on (its affinity: taskset, a
    container's cpuset): a second thread on a hyper-threaded core gains a run nothing."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # macOS has no affinity
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(),
                       (topology / "core_id").read_text()))
        except OSError:  # no topology (some containers): each CPU a core
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def cpu_threads(cores: int, sharing: int, limit: int | None = None) -> int:
    """Torch threads for one of ``sharing`` processes that train or sample on ``cores`` cores
    at once: an even share, at least one, and no more than ``limit`` (OMP_NUM_THREADS).

    torch gives every process one thread per core: two processes side by side spin twice as
    many threads as there are cores and slow each other several times over.
    """
    share = max(1, cores // max(1, sharing))
    return min(share, limit) if limit else share


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``cfg.precision`` on ``device``, or None for plain float32."""
    if cfg.precision == "float32":
        return None
    if cfg.precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
