"""Real inference on the bundled gemma3-270m, through `syncq add --wait` and a running node."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from harness import SYNCQ, wait_until
from syncq.executors.base import Job, ModelSpec
from syncq.executors.cpu import AmxCheck
from syncq.executors.llama import LlamaExecutor
from syncq.executors.models import discover

from syncq.lifecycle import Status
from syncq.space import Space

pytestmark = [pytest.mark.model, pytest.mark.slow]
pytest.importorskip("llama_cpp", reason="the llm extra is not installed")


def syncq(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    return subprocess.run([SYNCQ, *args], env=env, capture_output=True, text=True, timeout=300, check=check)


def test_gemma_answers_a_chat_prompt_and_a_raw_completion(tmp_path: Path, nodes) -> None:
    Space.init(tmp_path / "gpu", name="gpu").close()
    nodes(tmp_path / "gpu")
    for mode in ("chat", "complete"):
        out = syncq(
            tmp_path / "gpu",
            "add",
            "Why is the sky blue?",
            "-m",
            "gemma3-270m",
            "--wait",
            "--json",
            "--param",
            f"mode={mode}",
            "--param",
            "max_tokens=24",
            "--param",
            "seed=7",
        )
        entry = json.loads(out.stdout)
        assert entry["status"] == "done", entry
        assert entry["result"]["output"].strip()
        assert entry["result"]["usage"]["completion_tokens"] > 0
    models = [json.loads(line) for line in syncq(tmp_path / "gpu", "models", "--json").stdout.splitlines()]
    gemma = next(m for m in models if m["model"] == "gemma3-270m")
    assert gemma["backend"] == "llama" and gemma["nodes"][0]["loaded"] is True


def test_a_missing_or_corrupt_model_file_fails_the_job_and_the_node_stays_up(tmp_path: Path, nodes) -> None:
    home = tmp_path / "gpu"
    Space.init(home, name="gpu").close()
    (home / "models").mkdir()
    (home / "models" / "broken.gguf").write_bytes(b"GGUF" + os.urandom(4096))
    (home / "models.toml").write_text('[models.gone]\nbackend = "llama"\npath = "/nonexistent/model.gguf"\n')
    (home / "config.toml").write_text("[node]\nbackoff = 0.1\n")
    node = nodes(home)
    for model, message in (("gone", "is missing"), ("broken", "is not a GGUF model llama.cpp can read")):
        out = syncq(home, "add", "hi", "-m", model, "--max-attempts", "1", "--wait", check=False)
        assert out.returncode == 1
        assert message in out.stderr, out.stderr
    assert node.alive
    ok = syncq(home, "add", "still here", "-m", "echo", "--wait")
    assert ok.stdout.strip() == "still here"
    with Space.open(home) as space:
        assert wait_until(lambda: [e.status for e in space.entries(limit=None)][:2] == [Status.FAILED] * 2)


def test_the_openai_client_streams_gemma_through_the_local_api(tmp_path: Path, nodes) -> None:
    import openai

    Space.init(tmp_path / "gpu", name="gpu").close()
    node = nodes(tmp_path / "gpu", "--api", "127.0.0.1:0")
    client = openai.OpenAI(base_url=f"{node.api_url}/v1", api_key=node.api_key)
    stream = client.chat.completions.create(
        model="gemma3-270m",
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        max_tokens=48,
        seed=7,
        stream=True,
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2 and "".join(pieces).strip()  # it streamed, in pieces, a real answer


def _gemma(tmp_path: Path) -> ModelSpec:
    return discover(tmp_path)["gemma3-270m"]


def test_where_amx_traps_llama_loads_without_extra_buffer_types_and_still_answers(tmp_path: Path) -> None:
    # The AMX answer of the VM whose CPU lists AMX but traps it; this machine's CPU runs the rest.
    trapping = AmxCheck(
        listed=True, traps=True, detail="AMX is listed but does not run here (probe killed by SIGILL)"
    )
    executor = LlamaExecutor(amx=lambda: trapping)
    executor.load(_gemma(tmp_path))
    try:
        assert executor.llm.model_params.use_extra_bufts is False
        assert executor.notes == [
            "AMX is listed but does not run here (probe killed by SIGILL): llama.cpp loads without "
            "extra buffer types (AMX, repacking)"
        ]
        job = Job(prompt_id="p", input="The sky is", params={"mode": "complete", "max_tokens": 8})
        out = executor.run(job, lambda _: None, lambda: False)
        assert out.text.strip() and out.usage["completion_tokens"] > 0
    finally:
        executor.unload()
    import llama_cpp.llama_cpp as raw

    assert raw.llama_model_default_params().use_extra_bufts is True  # the defaults are restored


def test_elsewhere_llama_keeps_its_extra_buffer_types(tmp_path: Path) -> None:
    fine = AmxCheck(listed=False, traps=False, detail="the CPU lists no AMX")
    executor = LlamaExecutor(amx=lambda: fine)
    executor.load(_gemma(tmp_path))
    try:
        assert executor.llm.model_params.use_extra_bufts is True and executor.notes == []
    finally:
        executor.unload()


def test_smollm2_reads_the_system_turn_and_the_continued_conversation_through_a_node(
    tmp_path: Path, nodes
) -> None:
    home = tmp_path / "gpu"
    Space.init(home, name="gpu").close()
    nodes(home)
    ask = ("add", "What is the capital of France?", "-m", "smollm2-135m", "--wait", "--json")
    bare = json.loads(syncq(home, *ask, "--param", "max_tokens=8").stdout)
    system = "You are a patient geography teacher for children. Answer every question in one short sentence."
    told = json.loads(syncq(home, *ask, "--system", system, "--param", "max_tokens=8").stdout)
    assert bare["status"] == told["status"] == "done", (bare, told)
    # SmolLM2's template puts its own system turn first when none is given: the given one
    # replaces it, and is longer.
    assert told["result"]["usage"]["prompt_tokens"] > bare["result"]["usage"]["prompt_tokens"]
    more = json.loads(
        syncq(home, "add", "And of Italy?", "--continue", told["id"], "--wait", "--json").stdout
    )
    grown = told["result"]["usage"]["prompt_tokens"] + told["result"]["usage"]["completion_tokens"]
    assert more["status"] == "done" and more["result"]["usage"]["prompt_tokens"] > grown
