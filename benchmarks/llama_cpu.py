"""The ``cpu`` section of exec.py: gemma3-270m's tokens/s under each CPU option, direct calls.

Each configuration is a llama-cpp-python process of its own (``python llama_cpu.py worker``),
holding the model loaded, so that builds from other wheels can run side by side:

- ``native``: the wheel pip builds by default (``-march=native``), extra buffer types on: what
  syncq loads on a CPU that lists no AMX, or whose AMX runs (the runtime guard's answer here);
- ``native_no_extra_bufts``: the same build with ``use_extra_bufts=False``: the workaround that
  the guard applies where AMX is listed but traps;
- ``portable``: a ``GGML_NATIVE=OFF`` build (AVX2, FMA and F16C, no AVX-512 or AMX), given
  with ``--portable-site`` (a folder the wheel was unpacked into), if there is one.

Every prompt goes through every configuration in turn (a busy spell slows all alike), at each
thread count asked for, first on an idle machine and then with one core kept busy by another
process (as the node, a browser or a build keep it), which is where llama.cpp's spinning threads
collapse. Figures: median tokens/s of the whole completion (prompt included) and of the decode
alone (after the first token).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TOKENS = 32


def worker(path: str, threads: int, extra_bufts: bool) -> None:
    """Serve timings: one prompt per stdin line, one JSON line back."""
    import llama_cpp.llama_cpp as raw
    from llama_cpp import Llama

    original = raw.llama_model_default_params

    def params() -> Any:
        found = original()
        found.use_extra_bufts = extra_bufts
        return found

    raw.llama_model_default_params = params
    llm = Llama(model_path=path, n_ctx=2048, n_threads=threads, verbose=False)
    raw.llama_model_default_params = original
    llm.create_completion("Hi", max_tokens=1)
    print(json.dumps({"ready": True, "llama_cpp": str(Path(raw.__file__).parent)}), flush=True)
    for line in sys.stdin:
        start, first, tokens = time.perf_counter(), None, 0
        for _ in llm.create_completion(
            json.loads(line), stream=True, max_tokens=TOKENS, seed=42, temperature=0.0
        ):
            first = first or time.perf_counter()
            tokens += 1
        end = time.perf_counter()
        print(
            json.dumps({"ttft": (first or end) - start, "total": end - start, "tokens": tokens}), flush=True
        )


class Config:
    """One worker process."""

    def __init__(self, path: str, threads: int, extra_bufts: bool, site: Path | None) -> None:
        env = dict(os.environ)
        if site is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "worker", path, str(threads), str(int(extra_bufts))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.loaded_from = self._read()["llama_cpp"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a benchmark worker died (see its stderr above)")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def __call__(self, text: str) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(text) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _rates(runs: list[dict[str, float]]) -> dict[str, float]:
    whole = [r["tokens"] / r["total"] for r in runs]
    decode = [(r["tokens"] - 1) / (r["total"] - r["ttft"]) for r in runs if r["tokens"] > 1]
    return {
        "tokens_per_s": round(statistics.median(whole), 1),
        "decode_tokens_per_s": round(statistics.median(decode), 1),
        "total_ms": round(statistics.median(r["total"] for r in runs) * 1000, 1),
    }


def run(path: str, prompts: list[str], threads: list[int], portable_site: Path | None) -> dict[str, Any]:
    """Every configuration at every thread count, idle and with one core busy."""
    builds = [("native", True, None), ("native_no_extra_bufts", False, None)]
    if portable_site is not None:
        builds.append(("portable", True, portable_site))
    configs = {f"{name}_t{n}": Config(path, n, extra, site) for name, extra, site in builds for n in threads}
    report: dict[str, Any] = {
        "benchmark": "exec.cpu",
        "model": "gemma3-270m",
        "prompts": len(prompts),
        "max_tokens": TOKENS,
        "cpus": len(os.sched_getaffinity(0)),
        "loaded_from": {name: c.loaded_from for name, c in configs.items()},
    }
    try:
        for load in ("idle", "one_core_busy"):
            burner = None
            if load == "one_core_busy":
                burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
                for text in prompts:
                    for name, config in configs.items():
                        runs[name].append(config(text))
            finally:
                if burner is not None:
                    burner.kill()
                    burner.wait()
            report[load] = {name: _rates(got) for name, got in runs.items()}
    finally:
        for config in configs.values():
            config.close()
    return report


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
