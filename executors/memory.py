"""How much memory the workers hold, for the model manager's budgets.

RAM is read from ``/proc`` (resident set size). GPU memory is read through NVML (the
``nvidia-ml-py`` package, the ``gpu`` extra) when an NVIDIA driver is present: the bytes each
worker process holds, over every GPU. Without NVML only the RAM budget and ``max_loaded`` apply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from types import ModuleType

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: object) -> int:
    """Bytes from a number or a string like ``"512M"``, ``"8G"`` or ``"1.5GiB"``. Raises
    ``ValueError`` with a message fit for a user."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    found = _SIZE.match(str(value))
    if found is None:
        raise ValueError(f"{value!r} is not a size: write bytes, or a number with K, M, G or T (e.g. 8G)")
    return int(float(found.group(1)) * _UNITS[found.group(2).upper()])


def ram(pid: int) -> int:
    """Resident memory of a process in bytes (0 if it is gone or unknown)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


class Gpus:
    """The machine's NVIDIA GPUs, through NVML."""

    def __init__(self, nvml: ModuleType) -> None:
        self._nvml = nvml
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    @classmethod
    def find(cls) -> Gpus | None:
        """The GPUs, or None without nvidia-ml-py, an NVIDIA driver or a GPU."""
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            found = cls(pynvml)
        except pynvml.NVMLError:
            return None
        return found if found._handles else None

    def total(self) -> int:
        """Memory of every GPU together, in bytes."""
        return sum(int(self._nvml.nvmlDeviceGetMemoryInfo(h).total) for h in self._handles)

    def used_by(self, pids: Iterable[int]) -> int:
        """GPU memory held by these processes, in bytes, over every GPU."""
        wanted = set(pids)
        used = 0
        for handle in self._handles:
            for process in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid in wanted and process.usedGpuMemory:
                    used += int(process.usedGpuMemory)
        return used
