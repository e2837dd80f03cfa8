"""The ``openai`` executor against a real llama_cpp.server serving the bundled gemma3-270m."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import SYNCQ, wait_until

from syncq.lifecycle import Status
from syncq.space import Space

pytestmark = [pytest.mark.model, pytest.mark.slow]
pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] (the dev extra) is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gguf(tmp: Path) -> str:
    """The bundled model's GGUF file, found and assembled as a node would."""
    from syncq.executors.llama import model_path
    from syncq.executors.models import discover

    return str(model_path(discover(tmp / "gguf")["gemma3-270m"]))


class LlamaServer:
    def __init__(self, model: str, *extra: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                model,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                "1024",
                "--n_threads",
                "2",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("llama_cpp.server did not start") from None
                time.sleep(0.2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[LlamaServer]]:
    started: list[LlamaServer] = []
    yield started
    for server in started:
        server.kill()


def syncq(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    return subprocess.run([SYNCQ, *args], env=env, capture_output=True, text=True, timeout=300, check=False)


def test_a_node_serves_a_remote_server_s_models_and_reports_its_failures(
    tmp_path: Path, nodes, servers
) -> None:
    model = gguf(tmp_path)
    good = LlamaServer(model)
    servers.append(good)
    locked = LlamaServer(model, "--api_key", "s3cret")
    servers.append(locked)
    home = tmp_path / "gpu"
    Space.init(home, name="gpu").close()
    (home / "models.toml").write_text(
        f'[servers.box]\nbase_url = "{good.url}"\nprefix = "box/"\n'
        f'[servers.keyed]\nbase_url = "{locked.url}"\napi_key = "s3cret"\nprefix = "keyed/"\n'
        f'[servers.wrong]\nbase_url = "{locked.url}"\napi_key = "guess"\nprefix = "wrong/"\n'
    )
    (home / "config.toml").write_text('[node]\nexecutors = ["openai"]\nbackoff = 0.2\n')
    node = nodes(home)
    refused = node.wait_event("server-unreachable")
    assert refused["server"] == "wrong" and "refused the API key (401)" in refused["reason"]

    served = [json.loads(line)["model"] for line in syncq(home, "models", "--json").stdout.splitlines()]
    remote = Path(model).stem
    assert sorted(served) == sorted([f"box/{remote}", f"keyed/{remote}"])  # found through /v1/models

    for name in (f"box/{remote}", f"keyed/{remote}"):  # a base model: a completion, not a chat
        answered = syncq(
            home,
            "add",
            "The sky is blue because",
            "-m",
            name,
            "--wait",
            "--json",
            "--param",
            "mode=complete",
            "--param",
            "max_tokens=24",
            "--param",
            "seed=7",
        )
        entry = json.loads(answered.stdout)
        assert entry["status"] == "done" and entry["result"]["output"].strip(), (
            entry["params"],
            entry["result"],
        )

    # The server killed mid-stream: a clear failure, retried (the server stays down: each retry
    # cannot reach it), never a hang.
    story = ["Once upon a time, by the sea,", "-m", f"box/{remote}", "--param", "mode=complete"]
    long = syncq(home, "add", *story, "--param", "max_tokens=2000", "--param", "seed=1").stdout.strip()
    wait_until(lambda: node.find("running", prompt=long), what="the long answer to start")
    time.sleep(0.5)
    good.kill()
    with Space.open(home) as space:
        done = wait_until(
            lambda: space.log.status(long) is Status.FAILED and space.log.entry(long), timeout=60
        )
    errors = [r.error or "" for r in sorted(done.results, key=lambda r: r.attempt)]
    assert any("mid-stream" in e or "closed the stream" in e for e in errors[:1]), errors
    assert len(errors) == 3 and all("cannot reach" in e or "mid-stream" in e or "closed" in e for e in errors)
