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


def _entries(tmp_path: Path) -> list:
    with Space.open(tmp_path / "laptop") as space:
        return space.entries(limit=None)


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
    before = len(_entries(tmp_path))
    for extra, named in refused:
        body = {"model": "echo", "messages": [{"role": "user", "content": "x"}], "stream": False} | extra
        status, kind, text = raw(api, tmp_path, "POST", "/api/chat", body)
        assert status == 400 and kind == "application/json", (extra, text)
        assert named in json.loads(text)["error"], (extra, text)
    status, _, text = raw(
        api,
        tmp_path,
        "POST",
        "/api/chat",
        {"model": "echo", "messages": [{"role": "user", "content": "x"}]},
        **{"X-Syncq-Keep-On-Disconnect": "perhaps"},
    )
    assert status == 400 and "X-Syncq-Keep-On-Disconnect".lower() in json.loads(text)["error"].lower()
    assert len(_entries(tmp_path)) == before  # nothing refused was queued
    # Options that change how a model runs but never its answer are accepted.
    harmless = {"num_thread": 4, "num_gpu": 1, "use_mmap": True, "mirostat": 0, "typical_p": 1.0}
    assert client.chat(
        model="echo", messages=[{"role": "user", "content": "fine"}], options=harmless, stream=False
    )

    stranger = ollama.Client(host=api, headers={"Authorization": "Bearer sk-wrong"})
    with pytest.raises(ollama.ResponseError) as unknown_key:
        stranger.list()
    assert unknown_key.value.status_code == 401 and "API key" in str(unknown_key.value.error)
    assert isinstance(unknown_key.value.error, str)  # Ollama's {"error": "..."}, not OpenAI's object

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


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tool_calls_come_back_as_objects_and_their_results_go_in(client: ollama.Client) -> None:
    asked = [{"role": "user", "content": "call get_weather in Paris"}]
    answer = client.chat(model="echo", messages=asked, tools=[WEATHER], stream=False)
    calls = answer.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]
    assert calls[0].function.arguments == {"text": "call get_weather in Paris"}  # an object, not text
    assert answer.done_reason == "stop"

    streamed = list(client.chat(model="echo", messages=asked, tools=[WEATHER], stream=True))
    assert [c.function.name for p in streamed for c in p.message.tool_calls or []] == ["get_weather"]
    assert streamed[-1].done

    # The round trip, as a client sends it back: the call, then its result named by the tool.
    history = [*asked, answer.message.model_dump(exclude_none=True)]
    history.append({"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"})
    history.append({"role": "user", "content": "so, sunny?"})
    follow = client.chat(model="echo", messages=history, tools=[WEATHER], stream=False)
    assert follow.message.content == "so, sunny?" and not follow.message.tool_calls


def test_format_json_a_schema_stop_num_predict_and_the_history(client: ollama.Client) -> None:
    said = client.generate(model="echo", prompt="sky colour", format="json", stream=False)
    assert json.loads(said.response) == {"echo": "sky colour"}
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}
    chat = client.chat(
        model="echo", messages=[{"role": "user", "content": "age"}], format=schema, stream=False
    )
    assert json.loads(chat.message.content or "") == {"echo": "age"}

    cut = client.generate(
        model="echo", prompt="one two STOP three", options={"stop": ["STOP", "END"]}, stream=False
    )
    assert cut.response.strip() == "one two" and cut.done_reason == "stop"
    short = client.generate(model="echo", prompt="a b c d e f", options={"num_predict": 3}, stream=False)
    assert short.response == "a b c" and short.done_reason == "length" and short.eval_count == 3

    alone = client.chat(
        model="echo", messages=[{"role": "user", "content": "why is the sky blue"}], stream=False
    )
    history = [
        {"role": "system", "content": "you answer in one short sentence"},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "hello, what would you like to know"},
        {"role": "user", "content": "why is the sky blue"},
    ]
    whole = client.chat(model="echo", messages=history, stream=False)
    assert whole.message.content == alone.message.content == "why is the sky blue"
    assert (whole.prompt_eval_count or 0) > (alone.prompt_eval_count or 0) > 0  # every turn reached it


def test_embed_and_the_older_embeddings(client: ollama.Client) -> None:
    one = client.embed(model="echo", input="the sky")
    assert len(one.embeddings) == 1 and len(one.embeddings[0]) == 8
    two = client.embed(model="echo:latest", input=["the sky", "the sea"])
    assert len(two.embeddings) == 2 and two.embeddings[0] == one.embeddings[0] != two.embeddings[1]
    assert (two.prompt_eval_count or 0) == 4
    legacy = client.embeddings(model="echo", prompt="the sky")
    assert list(legacy.embedding) == one.embeddings[0]


@pytest.mark.model
def test_a_real_model_answers_through_the_ollama_api(tmp_path: Path, nodes) -> None:
    Space.init(tmp_path / "gpu", name="gpu").close()
    node = nodes(tmp_path / "gpu", "--api", "127.0.0.1:0")
    client = ollama.Client(host=node.api_url, headers={"Authorization": f"Bearer {node.api_key}"})
    pieces = list(
        client.generate(
            model="gemma3-270m",
            prompt="The sky is blue because",
            raw=True,
            options={"num_predict": 12, "seed": 7},
            stream=True,
        )
    )
    assert "".join(p.response or "" for p in pieces).strip()
    last = pieces[-1]
    assert last.done and (last.eval_count or 0) > 0 and (last.prompt_eval_count or 0) > 0
    assert last.done_reason in ("stop", "length") and (last.eval_duration or 0) > 0


@pytest.mark.model
def test_smollm2_chats_through_the_ollama_api(tmp_path: Path, nodes) -> None:
    Space.init(tmp_path / "gpu", name="gpu").close()
    node = nodes(tmp_path / "gpu", "--api", "127.0.0.1:0")
    client = ollama.Client(host=node.api_url, headers={"Authorization": f"Bearer {node.api_key}"})
    assert "smollm2-135m:latest" in [m.model for m in client.list().models]
    asked = [
        {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    options = {"num_predict": 40, "temperature": 0, "seed": 7}
    pieces = list(client.chat(model="smollm2-135m:latest", messages=asked, options=options, stream=True))
    said = "".join(p.message.content or "" for p in pieces)
    assert "Paris" in said, said
    last = pieces[-1]
    assert last.done and last.done_reason in ("stop", "length") and (last.eval_count or 0) > 0
    # The history reaches the model: its prompt grows by the earlier turns.
    history = [*asked, {"role": "assistant", "content": said}, {"role": "user", "content": "And of Italy?"}]
    later = client.chat(model="smollm2-135m", messages=history, options=options, stream=False)
    assert (later.prompt_eval_count or 0) > (last.prompt_eval_count or 0) + 5 > 5
    # format "json" holds the model to JSON (llama.cpp's grammar), and gemma embeds.
    capital = [{"role": "user", "content": "Give the capital of France as JSON with the key capital."}]
    shaped = client.chat(model="smollm2-135m", messages=capital, format="json", options=options, stream=False)
    assert isinstance(json.loads(shaped.message.content or ""), dict)
    vectors = client.embed(model="gemma3-270m", input=["the sky", "the sea"]).embeddings
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 100 and vectors[0] != vectors[1]


def test_a_keyed_body_of_any_content_type_is_read_as_json(api: str, tmp_path: Path) -> None:
    # LiteLLM's ollama_chat/ and ollama/ send their JSON with no content type, and Ollama's own
    # docs post it with curl's -d (a form type): Ollama reads any body as JSON.
    body = json.dumps({"model": "echo", "prompt": "typed anyhow", "stream": False}).encode()
    host, port = api.removeprefix("http://").rsplit(":", 1)
    key = {"Authorization": f"Bearer {api_key(tmp_path / 'laptop')}"}
    for kind in (None, "application/x-www-form-urlencoded", "text/plain"):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.putrequest("POST", "/api/generate", skip_accept_encoding=True)
        for name, value in {**key, **({"Content-Type": kind} if kind else {})}.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        found = response.status, json.loads(response.read())
        conn.close()
        assert found[0] == 200 and found[1]["response"] == "typed anyhow", (kind, found)
    # Without the key (a browser's cookie at best) the body type still counts, on OpenAI's
    # routes always (test_api_security.py).
    status, _, text = raw(
        api, tmp_path, "POST", "/v1/chat/completions", {"model": "echo"}, **{"Content-Type": "text/plain"}
    )
    assert status == 415 and "JSON" in text
