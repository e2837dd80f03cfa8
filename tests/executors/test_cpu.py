"""What the CPU can run: the AMX probe, the decision it feeds, and llama.cpp's thread count."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from syncq.executors import cpu

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile amx_int8
"""


def test_the_flags_come_from_the_first_processor() -> None:
    assert cpu.cpu_flags(CPUINFO) >= {"avx2", "amx_tile"}
    assert cpu.cpu_flags("no flags here") == frozenset()


def test_no_probe_runs_where_the_cpu_lists_no_amx() -> None:
    def probe() -> int:
        raise AssertionError("probed a CPU without AMX")

    check = cpu.judge(frozenset({"avx2"}), probe)
    assert not check.listed and not check.traps


def test_amx_that_traps_is_told_apart_from_amx_that_runs_or_that_the_kernel_refuses() -> None:
    flags = cpu.cpu_flags(CPUINFO)
    runs = cpu.judge(flags, lambda: 0)
    refused = cpu.judge(flags, lambda: cpu.KERNEL_REFUSED)
    traps = cpu.judge(flags, lambda: -signal.SIGILL)
    assert not runs.traps and not refused.traps  # llama.cpp leaves AMX alone when refused
    assert traps.traps and traps.detail == "AMX is listed but does not run here (probe killed by SIGILL)"


@given(st.integers(min_value=-64, max_value=255))
def test_only_a_probe_that_ran_or_was_refused_keeps_amx(code: int) -> None:
    check = cpu.judge(frozenset({"amx_tile"}), lambda: code)
    assert check.traps == (code not in (0, cpu.KERNEL_REFUSED))


def test_the_probe_runs_for_real_on_this_machine() -> None:
    # This CPU's own answer: where it lists AMX the probe must run it (0) or die by SIGILL (the
    # VM that traps); elsewhere the kernel refuses the permission (exit 3).
    code = cpu.run_probe()
    if "amx_tile" in cpu.cpu_flags(Path("/proc/cpuinfo").read_text()):
        assert code in (0, -signal.SIGILL)
    else:
        assert code == cpu.KERNEL_REFUSED
    assert cpu.check_amx().traps == (code == -signal.SIGILL)


def test_llama_threads_leave_a_core_free_and_never_drop_to_zero() -> None:
    assert [cpu.default_threads(n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]
    cores = cpu.physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))


def test_hyperthreads_of_one_core_count_once(tmp_path: Path) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    for n in allowed:  # a topology of two hyperthreads a core: cpu0 and cpu1 share one
        folder = tmp_path / f"cpu{n}" / "topology"
        folder.mkdir(parents=True)
        (folder / "thread_siblings_list").write_text(f"{n // 2 * 2}-{n // 2 * 2 + 1}\n")
    assert cpu.physical_cores(tmp_path) == len({n // 2 for n in allowed})
    assert cpu.physical_cores(tmp_path / "missing") == len(allowed)


def test_a_signal_without_a_name_is_still_named() -> None:
    assert cpu.signal_name(4) == "SIGILL"
    assert cpu.signal_name(99) == "signal 99"
