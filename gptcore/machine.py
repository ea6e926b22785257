"""The memory this machine's devices offer, found without importing torch.

``gptdash submit``, ``gptdash sweep`` and the pages queue runs in processes that must
answer at once and never load torch; they refuse a config that fits no device here.
The worker that claims a run checks its own device's free memory again (``gptcore.device``).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

from gptcore.config import TrainConfig
from gptcore.estimate import fit_problem

NVIDIA_SMI_TIMEOUT_S = 10


def host_memory_mb() -> float | None:
    """Physical RAM in MB, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


@functools.lru_cache(maxsize=1)
def gpu_memory_mb() -> float | None:
    """The largest CUDA GPU's total memory in MB, or None when none is known.

    From torch only when this process has already imported it; else from ``nvidia-smi``
    when it is installed (GPUs do not come and go while a process lives, hence the cache).
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return max(torch.cuda.get_device_properties(i).total_memory
                   for i in range(torch.cuda.device_count())) / 2**20
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
        sizes = [float(line) for line in done.stdout.split() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return max(sizes) if done.returncode == 0 and sizes else None


def largest_memory_mb(device: str) -> float | None:
    """The most memory a run whose config says ``device`` could get on this machine (an
    upper bound: total, not free), or None when it cannot be known without torch."""
    host, gpu = host_memory_mb(), gpu_memory_mb()
    if device == "cuda":
        return gpu
    if device in ("cpu", "mps"):  # mps shares the host's memory
        return host
    known = [m for m in (host, gpu) if m is not None]  # auto: whichever device is larger
    return max(known) if known else None


def machine_fit_problem(cfg: TrainConfig) -> str | None:
    """A message when ``cfg`` fits no device this machine has, else None."""
    return fit_problem(cfg, largest_memory_mb(cfg.device),
                       where="the largest device on this machine")
