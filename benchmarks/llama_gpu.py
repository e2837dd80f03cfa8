"""Tokens/s of syncq's llama executor, GPU offload (the default) against CPU (n_gpu_layers=0).

Needs llama-cpp-python built for CUDA and a GGUF (``benchmarks/tiny_llama.py --preset 1b`` writes
a random-weight one of TinyLlama-1.1B's shape, so no model has to be downloaded). Runs through
syncq's real ModelManager (a spawned worker process) and LlamaExecutor:

    python benchmarks/llama_gpu.py MODEL.gguf [--max-tokens 256] [--runs 3] [--configs gpu,cpu,cpu8]

Seen on a lent H100 (2026-11-25, two machines; llama.cpp of llama-cpp-python 0.3.36 built with
CMake, GGML_CUDA=ON, sm_90): gpu 504 and 514 tokens/s, every layer offloaded (23/23), the worker
holding 1.8 GiB of GPU memory; cpu (16 threads) 59 and 48 tokens/s, still holding 0.8 GiB of GPU
memory for llama.cpp's buffers.

Per config: one job that loads the model (load + warm-up + run, timed whole), then --runs timed
jobs on the warm worker. A job's tokens/s is completion tokens / wall time of the job (prompt
eval included); the decode rate is (chunks - 1) / (time of the last chunk - time of the first).
In ``complete`` mode with no stop string every token of this model's vocab is one non-empty
chunk, so chunks == tokens. While the worker is loaded, NVML's per-process GPU memory of the
worker (syncq's own memory.Gpus, the code behind gpu_memory_budget) shows whether it offloaded.
Prints one JSON object per line; the last line is a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from syncq.executors.base import Job, ModelSpec
from syncq.executors.manager import ModelManager, Settings

CONFIGS = {
    "gpu": {},  # syncq's default: n_gpu_layers=-1
    "cpu": {"n_gpu_layers": 0},  # n_threads: syncq's default, os.cpu_count()
    "cpu8": {"n_gpu_layers": 0, "n_threads": 8},
}
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def gpu_used_mib(manager: ModelManager, name: str) -> float | None:
    if manager.gpus is None:
        return None
    pid = manager.workers[name].process.pid
    return manager.gpus.used_by([pid]) / 2**20


async def job(manager: ModelManager, name: str, i: int, params: dict) -> dict:
    stamps: list[float] = []
    t0 = time.perf_counter()
    out = await manager.run(
        name,
        Job(prompt_id=f"{name}-{i}", input=PROMPT, params=params),
        lambda text: stamps.append(time.perf_counter()),
        asyncio.Event(),
    )
    wall = time.perf_counter() - t0
    n = int(out.usage["completion_tokens"])
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None
    return {
        "wall_s": round(wall, 3),
        "tokens": n,
        "chunks": len(stamps),
        "prompt_tokens": out.usage.get("prompt_tokens"),
        "tok_per_s": round(n / wall, 1),
        "decode_tok_per_s": round(decode, 1) if decode else None,
        "first_chunk_s": round(stamps[0] - t0, 3) if stamps else None,
        "text_head": out.text[:60],
    }


async def bench(path: str, config: str, options: dict, args: argparse.Namespace) -> dict:
    name = f"bench-{config}"
    spec = ModelSpec(name=name, backend="llama", path=path, options=options, size=os.path.getsize(path))
    # a budget (never reached) so that the manager opens NVML as a node with gpu_memory_budget does
    manager = ModelManager({name: spec}, Settings(max_loaded=1, gpu_memory_budget=1 << 50))
    params = {"max_tokens": args.max_tokens, "seed": 42, "mode": "complete", "temperature": 0.8}
    try:
        first = await job(manager, name, 0, params)  # includes the load and the warm-up
        gpu_mib = gpu_used_mib(manager, name)
        runs = [await job(manager, name, i + 1, params) for i in range(args.runs)]
        chat = await job(manager, name, 99, {"max_tokens": 32, "seed": 42})  # the default mode, chat
    finally:
        manager.close()
    result = {
        "config": config,
        "options": options,
        "first_job_with_load_s": first["wall_s"],
        "worker_gpu_mib_nvml": None if gpu_mib is None else round(gpu_mib, 1),
        "tok_per_s_median": statistics.median(r["tok_per_s"] for r in runs),
        "decode_tok_per_s_median": statistics.median(r["decode_tok_per_s"] for r in runs),
        "runs": runs,
        "chat_check": {k: chat[k] for k in ("tokens", "chunks", "wall_s", "text_head")},
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--configs", default="gpu,cpu")
    args = ap.parse_args()
    import llama_cpp

    info = {
        "llama_cpp": llama_cpp.__version__,
        "lib": os.environ.get("LLAMA_CPP_LIB_PATH", "(package lib/)"),
        "supports_gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "system_info": llama_cpp.llama_print_system_info().decode(),
        "model_mib": round(os.path.getsize(args.model) / 2**20, 1),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(info), flush=True)
    results = [asyncio.run(bench(args.model, c, CONFIGS[c], args)) for c in args.configs.split(",")]
    summary = {
        r["config"]: (r["tok_per_s_median"], r["decode_tok_per_s_median"], r["worker_gpu_mib_nvml"])
        for r in results
    }
    print(json.dumps({"summary (tok/s, decode tok/s, worker GPU MiB)": summary}), flush=True)


if __name__ == "__main__":
    main()
