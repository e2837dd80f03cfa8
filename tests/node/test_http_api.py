"""The OpenAI-compatible HTTP API, driven by the official ``openai`` client (unchanged but for
``base_url``), answered by a node in another home."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
from pathlib import Path

import openai
import pytest
from harness import SYNCQ, api_key, laptop_and_gpu, wait_until

from syncq.space import Space

pytestmark = pytest.mark.slow


@pytest.fixture
def api(tmp_path: Path, nodes) -> str:
    """A laptop node serving the API (no executors) and a gpu node running echo."""
    hub, _ = laptop_and_gpu(tmp_path, nodes, "--api", "127.0.0.1:0")
    return hub.wait_event("api-listening")["url"]


def test_models_chat_completion_streaming_and_errors(api: str, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=f"{api}/v1", api_key=api_key(tmp_path / "laptop"), max_retries=0)
    assert "echo" in [m.id for m in client.models.list().data]

    chat = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hello over http"}]
    )
    assert chat.choices[0].message.content == "hello over http"
    assert chat.choices[0].finish_reason == "stop"

    stream = client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "one two three four five six"}],
        stream=True,
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "one two three four five six"

    completion = client.completions.create(model="echo", prompt="a raw completion")
    assert completion.choices[0].text == "a raw completion"

    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(
            model="nobody-serves-this", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x"}], max_tokens=-3
        )


def test_bad_bodies_get_openai_style_errors_and_the_log_is_readable(api: str, tmp_path: Path) -> None:
    host, port = api.removeprefix("http://").rsplit(":", 1)
    auth = {"Authorization": f"Bearer {api_key(tmp_path / 'laptop')}"}

    def call(method: str, path: str, data: bytes | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **auth})
        response = conn.getresponse()
        found = response.status, json.loads(response.read())
        conn.close()
        return found

    def post(path: str, data: bytes) -> tuple[int, dict]:
        return call("POST", path, data)

    status, body = post("/v1/chat/completions", b'{"model": "echo", ')
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = post("/v1/chat/completions", json.dumps({"model": "echo", "messages": "hi"}).encode())
    assert status == 400 and "messages" in body["error"]["message"]
    # A 10 GB body is refused from its Content-Length, before a byte of it is read.
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Authorization", auth["Authorization"])
    conn.putheader("Content-Length", str(10 << 30))
    conn.endheaders()
    refused = conn.getresponse()
    assert refused.status == 413 and json.loads(refused.read())["error"]["code"] == "too_large"
    conn.close()
    status, body = post("/v1/completions", json.dumps({"model": "echo", "prompt": "logged"}).encode())
    assert status == 200
    listed = call("GET", "/api/prompts")[1]["data"]
    assert [(p["input"], p["status"], p["node"]) for p in listed] == [("logged", "done", "gpu")]
    assert call("GET", f"/api/prompts/{listed[0]['id']}")[1]["output"] == "logged"
    assert call("GET", "/api/prompts/0000")[0] == 404
    assert {n["name"] for n in call("GET", "/api/nodes")[1]["data"]} >= {"gpu", "laptop"}


def test_a_streaming_client_that_hangs_up_cancels_its_prompt_unless_it_asked_to_keep_it(
    api: str, tmp_path: Path
) -> None:
    def hang_up_after_first_chunk(keep: bool) -> str:
        client = openai.OpenAI(
            base_url=f"{api}/v1",
            api_key=api_key(tmp_path / "laptop"),
            max_retries=0,
            default_headers={"X-Syncq-Keep-On-Disconnect": "true"} if keep else None,
        )
        stream = client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "a long answer " * 10}],
            stream=True,
            extra_body={"delay": 3},
        )
        first = next(c for c in stream if c.choices and c.choices[0].delta.content)
        stream.close()
        return first.id.removeprefix("syncq-")

    kept, dropped = hang_up_after_first_chunk(keep=True), hang_up_after_first_chunk(keep=False)

    def status(prompt_id: str) -> str:
        with Space.open(tmp_path / "laptop") as space:
            return space.log.status(prompt_id).value

    wait_until(lambda: status(dropped) == "cancelled", what="the prompt whose client hung up (Stop)")
    wait_until(lambda: status(kept) == "done", timeout=30, what="the prompt whose client asked to keep it")


def test_a_non_streaming_client_that_gives_up_leaves_its_prompt_running_unless_it_asked(
    api: str, tmp_path: Path
) -> None:
    def give_up(cancel: bool) -> str:
        client = openai.OpenAI(
            base_url=f"{api}/v1",
            api_key=api_key(tmp_path / "laptop"),
            max_retries=0,
            timeout=0.5,
            default_headers={"X-Syncq-Cancel-On-Disconnect": "true"} if cancel else None,
        )
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(
                model="echo",
                messages=[{"role": "user", "content": f"slow {cancel}"}],
                extra_body={"delay": 3},
            )
        with Space.open(tmp_path / "laptop") as space:
            return next(e.prompt.id for e in space.entries(limit=None) if e.prompt.input == f"slow {cancel}")

    kept, dropped = give_up(cancel=False), give_up(cancel=True)

    def status(prompt_id: str) -> str:
        with Space.open(tmp_path / "laptop") as space:
            return space.log.status(prompt_id).value

    wait_until(lambda: status(dropped) == "cancelled", what="the prompt whose client asked to be cancelled")
    wait_until(lambda: status(kept) == "done", timeout=30, what="the prompt whose client just left")


def test_beyond_loopback_the_api_refuses_to_run_without_a_key(tmp_path: Path) -> None:
    Space.init(tmp_path / "a", name="a").close()
    (tmp_path / "a" / "config.toml").write_text('[node]\napi_key = ""\n')
    env = {k: v for k, v in os.environ.items() if k not in ("SYNCQ_API_TOKEN", "SYNCQ_API_KEY")} | {
        "SYNCQ_HOME": str(tmp_path / "a")
    }
    refused = subprocess.run(
        [SYNCQ, "node", "--listen", "127.0.0.1:0", "--no-discovery", "--api", "0.0.0.0:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and 'api_key = ""' in refused.stderr + refused.stdout
