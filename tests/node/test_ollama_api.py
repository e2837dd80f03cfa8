"""Ollama's API (node/ollama.py), driven by the official ``ollama`` package unchanged but for
its host and key, against a real node whose prompts a node in another home runs with echo."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import ollama
import pytest
from harness import api_key, laptop_and_gpu, wait_until

from syncq.space import Space

pytestmark = pytest.mark.slow


@pytest.fixture
def api(tmp_path: Path, nodes) -> str:
    """A laptop node serving the API (no executors) and a gpu node running echo."""
    hub, _ = laptop_and_gpu(tmp_path, nodes, "--api", "127.0.0.1:0")
    return hub.wait_event("api-listening")["url"]


@pytest.fixture
def client(api: str, tmp_path: Path) -> ollama.Client:
    return ollama.Client(host=api, headers={"Authorization": f"Bearer {api_key(tmp_path / 'laptop')}"})


def raw(api: str, tmp_path: Path, method: str, path: str, body: object = None, **headers: str):
    """(status, content type, body text) of one request, for what the client hides."""
    host, port = api.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    data = json.dumps(body).encode() if body is not None else None
    auth = {"Authorization": f"Bearer {api_key(tmp_path / 'laptop')}", "Content-Type": "application/json"}
    conn.request(method, path, body=data, headers=auth | headers)
    response = conn.getresponse()
    found = response.status, response.getheader("content-type", ""), response.read().decode()
    conn.close()
    return found


def status_of(home: Path, prompt_id: str) -> str:
    with Space.open(home) as space:
        return space.log.status(prompt_id).value


def test_version_list_show_and_ps(client: ollama.Client, api: str, tmp_path: Path) -> None:
    status, _, text = raw(api, tmp_path, "GET", "/api/version")
    assert status == 200 and json.loads(text)["version"].count(".") == 2
    assert raw(api, tmp_path, "HEAD", "/")[0] == 200  # Ollama's CLI probes HEAD /; GET / is the page
    listed = {m.model: m for m in client.list().models}
    assert "echo:latest" in listed  # Open WebUI looks models up by name:latest
    echo = listed["echo:latest"]
    assert len(echo.digest or "") == 64 and echo.details is not None and echo.details.family == "echo"

    shown = client.show("echo")
    assert {"completion", "tools", "embedding"} <= set(shown.capabilities or ())
    assert client.show("echo:latest").capabilities == shown.capabilities

    assert client.chat(model="echo", messages=[{"role": "user", "content": "warm up"}], stream=False)
    running = wait_until(
        lambda: [m for m in client.ps().models if m.model == "echo:latest"], what="echo in ps"
    )
    assert running[0].expires_at is not None


def test_chat_streamed_and_not_and_generate(client: ollama.Client, api: str, tmp_path: Path) -> None:
    answer = client.chat(model="echo", messages=[{"role": "user", "content": "hello ollama"}], stream=False)
    assert answer.message.role == "assistant" and answer.message.content == "hello ollama"
    assert answer.done and answer.done_reason == "stop" and (answer.total_duration or 0) > 0

    pieces = list(
        client.chat(model="echo:latest", messages=[{"role": "user", "content": "one two three"}], stream=True)
    )
    assert "".join(p.message.content or "" for p in pieces) == "one two three"
    assert [p.done for p in pieces].count(True) == 1 and pieces[-1].done

    generated = client.generate(model="echo", prompt="a raw completion", raw=True, stream=False)
    assert generated.response == "a raw completion" and generated.done_reason == "stop"
    streamed = list(client.generate(model="echo", prompt="some more words", keep_alive="5m", stream=True))
    assert "".join(p.response or "" for p in streamed) == "some more words"

    # Streaming is Ollama's default: without "stream", the answer is NDJSON.
    status, kind, text = raw(
        api,
        tmp_path,
        "POST",
        "/api/chat",
        {"model": "echo", "messages": [{"role": "user", "content": "x y"}]},
    )
    assert status == 200 and kind.startswith("application/x-ndjson")
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[-1]["done"] is True and all(not line["done"] for line in lines[:-1])


def test_keep_alive_reaches_the_prompt_and_unload_queues_nothing(
    client: ollama.Client, tmp_path: Path
) -> None:
    assert client.generate(model="echo", prompt="kept", keep_alive="5m", stream=False).response == "kept"
    with Space.open(tmp_path / "laptop") as space:
        assert [e.prompt.params["keep_alive"] for e in space.entries(limit=None)] == [300.0]
        before = len(space.entries(limit=None))

    unloaded = client.generate(model="echo", keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload" and unloaded.response == ""
    loaded = client.generate(model="echo:latest")
    assert loaded.done_reason == "load"
    assert client.chat(model="echo", messages=[], keep_alive=0).done_reason == "unload"
    with Space.open(tmp_path / "laptop") as space:
        assert len(space.entries(limit=None)) == before


def test_errors_are_ollama_shaped(client: ollama.Client, api: str, tmp_path: Path) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="nobody-serves-this", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404 and missing.value.error == "model 'nobody-serves-this' not found"
    with pytest.raises(ollama.ResponseError) as shown:
        client.show("nobody:latest")
    assert shown.value.status_code == 404

    refused = [
        ({"options": {"num_ctx": 8192}}, "num_ctx"),
        ({"options": {"no_such_option": 1}}, "no_such_option"),
        ({"options": {"mirostat": 2}}, "mirostat"),
        ({"options": {"num_predict": 0}}, "num_predict"),
        ({"think": True}, "thinking"),
        ({"keep_alive": "5 minutes"}, "keep_alive"),
        ({"format": "yaml"}, "format"),
        ({"messages": [{"role": "user", "content": "x", "images": ["iVBORw0KGgo="]}]}, "images"),
    ]
    for extra, named in refused:
        body = {"model": "echo", "messages": [{"role": "user", "content": "x"}], "stream": False} | extra
        status, kind, text = raw(api, tmp_path, "POST", "/api/chat", body)
        assert status == 400 and kind == "application/json", (extra, text)
        assert named in json.loads(text)["error"], (extra, text)
    # Options that change how a model runs but never its answer are accepted.
    harmless = {"num_thread": 4, "num_gpu": 1, "use_mmap": True, "mirostat": 0, "typical_p": 1.0}
    assert client.chat(
        model="echo", messages=[{"role": "user", "content": "fine"}], options=harmless, stream=False
    )

    status, _, text = raw(api, tmp_path, "POST", "/api/pull", {"model": "llama3"})
    assert status == 501 and "models.toml" in json.loads(text)["error"]


def test_a_streaming_client_that_hangs_up_cancels_its_prompt_unless_it_asked_to_keep_it(
    client: ollama.Client, api: str, tmp_path: Path
) -> None:
    host, port = api.removeprefix("http://").rsplit(":", 1)

    def hang_up_after_first_line(**headers: str) -> str:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        body = {"model": "echo", "prompt": "a long answer " * 10, "options": {"delay": 3}}
        auth = {"Authorization": f"Bearer {api_key(tmp_path / 'laptop')}", "Content-Type": "application/json"}
        conn.request("POST", "/api/generate", body=json.dumps(body).encode(), headers=auth | headers)
        response = conn.getresponse()
        first = json.loads(response.readline())
        assert response.status == 200 and first["done"] is False, first
        conn.close()  # a chat UI's Stop
        with Space.open(tmp_path / "laptop") as space:
            return space.entries(limit=1)[0].prompt.id

    dropped = hang_up_after_first_line()
    kept = hang_up_after_first_line(**{"X-Syncq-Keep-On-Disconnect": "true"})
    laptop = tmp_path / "laptop"
    wait_until(
        lambda: status_of(laptop, dropped) == "cancelled", timeout=10, what="the dropped prompt cancelled"
    )
    wait_until(lambda: status_of(laptop, kept) == "done", timeout=30, what="the kept prompt to finish")


def test_a_non_streaming_request_runs_on_when_its_client_leaves_unless_it_asked(
    api: str, tmp_path: Path
) -> None:
    host, port = api.removeprefix("http://").rsplit(":", 1)

    def leave_early(**headers: str) -> str:
        conn = http.client.HTTPConnection(host, int(port), timeout=1)
        body = {"model": "echo", "prompt": "patience " * 5, "stream": False, "options": {"delay": 3}}
        auth = {"Authorization": f"Bearer {api_key(tmp_path / 'laptop')}", "Content-Type": "application/json"}
        conn.request("POST", "/api/generate", body=json.dumps(body).encode(), headers=auth | headers)
        with pytest.raises(TimeoutError):
            conn.getresponse()
        conn.close()
        with Space.open(tmp_path / "laptop") as space:
            return space.entries(limit=1)[0].prompt.id

    kept = leave_early()
    dropped = leave_early(**{"X-Syncq-Cancel-On-Disconnect": "true"})
    laptop = tmp_path / "laptop"
    wait_until(
        lambda: status_of(laptop, dropped) == "cancelled", timeout=10, what="the prompt asked to cancel"
    )
    wait_until(lambda: status_of(laptop, kept) == "done", timeout=30, what="the prompt whose client left")


def test_streaming_requests_are_queued_first_unless_the_body_sets_a_priority(
    client: ollama.Client, api: str, tmp_path: Path
) -> None:
    user = [{"role": "user", "content": "in order"}]
    list(client.chat(model="echo", messages=user, stream=True))
    client.chat(model="echo", messages=user, stream=False)  # a UI's title or tags request
    list(client.generate(model="echo", prompt="typed", stream=True))
    client._client.post(
        "/api/chat", json={"model": "echo", "messages": user, "priority": -5}
    ).raise_for_status()
    with Space.open(tmp_path / "laptop") as space:
        assert [e.prompt.priority for e in space.entries(limit=None)] == [1, 0, 1, -5]
