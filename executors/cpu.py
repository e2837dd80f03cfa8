"""What this CPU can really execute, for backends whose native code trusts what it lists.

llama-cpp-python compiles llama.cpp on install with ``-march=native``. On a CPU that lists AMX
(``amx_tile`` in /proc/cpuinfo) that build carries ggml's AMX matmul, used through an "extra
buffer type" whenever the kernel grants AMX permission (``arch_prctl(ARCH_REQ_XCOMP_PERM)``,
which ggml asks for itself). Some virtual machines list AMX and grant that permission, yet trap
the instructions: the first decode dies with SIGILL at a ``tilezero``. Asking the kernel is
therefore not enough, and reading the flags says nothing either: the one sure test is to run a
tile instruction, in a child process, where a SIGILL ends only the child.

The guard is a runtime one, not a build flag, because it must hold for every llama-cpp-python
wheel a user may have: pip reuses a natively built wheel from its cache whatever CMAKE_ARGS say.
When the probe says AMX traps, llama loads with ``use_extra_bufts=False`` (no AMX, no weight
repacking), which costs repacking's speed on such a VM only; every other CPU keeps both.

The probe runs only where ``amx_tile`` is listed (Intel Sapphire Rapids and later), once per
worker, in about 40 ms.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Asks for AMX permission (exit 3 if the kernel refuses), then runs ldtilecfg, tilezero and
# tilerelease from an executable page: exit 0 means AMX really runs; a SIGILL means it traps.
PROBE = r"""
import ctypes, mmap, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.syscall(158, 0x1023, 18):  # arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
    sys.exit(3)
code = bytes.fromhex("c4e2784907" "c4e27b49c0" "c4e27849c0" "c3")
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
run = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
config = bytearray(64)
config[0] = 1  # palette 1
struct.pack_into("<H", config, 16, 64)  # tile 0: 64 bytes a row
config[48] = 16  # tile 0: 16 rows
run(ctypes.addressof((ctypes.c_char * 64).from_buffer(config)))
"""
PROBE_TIMEOUT_S = 20.0
KERNEL_REFUSED = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class AmxCheck:
    """What was found about AMX on this CPU."""

    listed: bool  # the CPU lists amx_tile
    traps: bool  # listed, permitted, and yet a tile instruction does not run
    detail: str  # one line for the node log


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in /proc/cpuinfo's text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def judge(flags: frozenset[str], probe: Callable[[], int]) -> AmxCheck:
    """Whether AMX traps, given the CPU's flags and a probe that returns the probe process's
    exit code (negative: killed by that signal). ``probe`` runs only when AMX is listed."""
    if "amx_tile" not in flags:
        return AmxCheck(listed=False, traps=False, detail="the CPU lists no AMX")
    code = probe()
    if code == 0:
        return AmxCheck(listed=True, traps=False, detail="AMX is listed and runs")
    if code == KERNEL_REFUSED:
        # llama.cpp asks the same question and leaves AMX alone: nothing to turn off.
        return AmxCheck(listed=True, traps=False, detail="AMX is listed but the kernel refuses it")
    how = f"killed by {signal_name(-code)}" if code < 0 else f"exit code {code}"
    return AmxCheck(listed=True, traps=True, detail=f"AMX is listed but does not run here (probe {how})")


def run_probe() -> int:
    """Run ``PROBE`` in a child process; its exit code (negative: the signal that ended it).
    Isolated (``-I``): no module of the working directory can stand in for ctypes or mmap."""
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and our own code
            [sys.executable, "-I", "-c", PROBE], capture_output=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return -signal.SIGKILL
    return done.returncode


def check_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> AmxCheck:
    """``judge`` for this machine (no AMX listed where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    return judge(cpu_flags(text), run_probe)


def signal_name(number: int) -> str:
    """``SIGILL`` for 4, and so on; ``signal 99`` for a number without a name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def physical_cores(cpus: Path = Path("/sys/devices/system/cpu")) -> int:
    """How many physical cores this process may run on (hyperthreads of one core count once);
    the logical count where the topology cannot be read."""
    allowed = _allowed_cpus()
    cores = set()
    for cpu in allowed:
        try:
            cores.add((cpus / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip())
        except OSError:
            return len(allowed)
    return max(1, len(cores))


def default_threads(cores: int) -> int:
    """llama.cpp's thread count when models.toml sets none: the physical cores less one, at
    least 1. Its threads spin while they wait for each other, so a thread that shares its core
    with the node (or anything else) holds back every token. Measured on a 2-core VM with
    gemma3-270m (``benchmarks/exec.py cpu``): with one core busy elsewhere, 1 thread made 27.9
    tokens/s and 2 threads 17.4; idle, 2 threads made 44.9 and 1 made 31.3. The default gives
    up that idle third to never collapse; a dedicated box sets n_threads in models.toml."""
    return max(1, cores - 1)


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))
