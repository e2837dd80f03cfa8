"""The OpenAI API against a real node serving echo, driven by the official ``openai`` client:
usage in streams, Stop (a client that hangs up mid-stream), priority of streaming chats, the
fields it refuses, and JSON errors on every route."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from api_probe import Served, error, request, serving_echo
from harness import wait_until

from syncq.space import Space

pytestmark = pytest.mark.slow
USER = [{"role": "user", "content": "one two three four five six seven eight"}]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = serving_echo(tmp_path_factory.mktemp("openai") / "home")
    yield served
    served.node.stop()


def status(api: Served, prompt_id: str) -> str:
    with Space.open(api.node.home) as space:
        return space.log.status(prompt_id).value


def hang_up(api: Served, delay: float = 20, body: dict | None = None, headers: dict | None = None) -> str:
    """Start a slow streamed chat, read its first text, hang up; its prompt's id."""
    stream = api.client().chat.completions.create(
        model="echo",
        messages=USER,
        stream=True,
        extra_body={"delay": delay, **(body or {})},
        extra_headers=headers,
    )
    first = next(c for c in stream if c.choices and c.choices[0].delta.content)
    stream.close()
    return first.id.removeprefix("syncq-")


def test_include_usage_puts_usage_in_a_last_chunk_without_choices(api: Served) -> None:
    chunks = list(
        api.client().chat.completions.create(
            model="echo", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == USER[0]["content"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    # Without it, no chunk carries usage.
    plain = list(api.client().chat.completions.create(model="echo", messages=USER, stream=True))
    assert all(c.choices and c.usage is None for c in plain)


def test_a_streaming_client_that_hangs_up_cancels_its_prompt_within_a_second(api: Served) -> None:
    prompt_id = hang_up(api)
    hung_up = time.monotonic()
    wait_until(lambda: status(api, prompt_id) == "cancelled", timeout=5, what="the prompt to be cancelled")
    assert time.monotonic() - hung_up < 1.0
    api.node.wait_event("cancelled", prompt=prompt_id, timeout=10)  # the executor stopped


def test_a_streaming_client_that_asked_to_keep_its_prompt_leaves_it_running(api: Served) -> None:
    by_header = hang_up(api, 2, headers={"X-Syncq-Keep-On-Disconnect": "true"})
    by_body = hang_up(api, 2, body={"keep_on_disconnect": True})
    for prompt_id in (by_header, by_body):
        api.node.wait_event("finished", prompt=prompt_id, status="done", timeout=60)
        assert status(api, prompt_id) == "done"


def test_a_streaming_chat_goes_ahead_of_queued_background_requests(api: Served) -> None:
    client = api.client()

    def background(text: str, delay: float) -> None:
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": text}], extra_body={"delay": delay}
        )

    with Space.open(api.node.home) as space:
        before = len(space.entries(limit=None))
    busy = threading.Thread(target=background, args=("busy", 3))
    title = threading.Thread(target=background, args=("a title", 0))
    busy.start()
    wait_until(lambda: _statuses(api, before) == {"busy": "running"}, what="the slow prompt to run")
    title.start()
    # Queued, or claimed ahead by the node (it holds a prompt or more ready per model).
    wait_until(
        lambda: _statuses(api, before) in ({"busy": "running", "a title": t} for t in ("queued", "claimed")),
        what="the title request to wait behind it",
    )
    stream = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "the user's question"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "the user's question"
    busy.join(60)
    title.join(60)
    with Space.open(api.node.home) as space:
        started = {
            e.prompt.input: e.result.started_at for e in space.entries(limit=None)[before:] if e.result
        }
        priorities = {e.prompt.input: e.prompt.priority for e in space.entries(limit=None)[before:]}
    assert started["busy"] <= started["the user's question"] <= started["a title"]
    assert priorities == {"busy": 0, "a title": 0, "the user's question": 1}


def _statuses(api: Served, before: int) -> dict[str, str]:
    with Space.open(api.node.home) as space:
        found = {e.prompt.input: e.status.value for e in space.entries(limit=None)[before:]}
    return found


def test_a_streaming_chat_that_sets_its_priority_keeps_it(api: Served) -> None:
    chunks = list(
        api.client().chat.completions.create(
            model="echo", messages=USER, stream=True, extra_body={"priority": -5}
        )
    )
    prompt_id = chunks[0].id.removeprefix("syncq-")
    with Space.open(api.node.home) as space:
        assert space.show(prompt_id).prompt.priority == -5


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"extra_body": {"suffix": "end"}}, "suffix"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"extra_body": {"mirostat": 2}}, "mirostat"),
        ({"extra_body": {"keep_alive": "5 minutes"}}, "keep_alive"),
    ],
)
def test_a_field_syncq_cannot_honour_gets_a_400_naming_it(api: Served, fields: dict, named: str) -> None:
    with Space.open(api.node.home) as space:
        before = len(space.entries(limit=None))
    with pytest.raises(openai.BadRequestError) as refused:
        api.client().chat.completions.create(model="echo", messages=USER, **fields)
    assert refused.value.body["param"] == named  # type: ignore[index]
    with Space.open(api.node.home) as space:
        assert len(space.entries(limit=None)) == before  # refused before anything was queued


def test_an_image_part_is_refused_and_text_parts_are_joined(api: Served) -> None:
    picture = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError, match="does not take images"):
        api.client().chat.completions.create(
            model="echo", messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}, picture]}]
        )
    parts = [{"type": "text", "text": "two"}, {"type": "text", "text": "parts"}]
    answer = api.client().chat.completions.create(model="echo", messages=[{"role": "user", "content": parts}])
    assert answer.choices[0].message.content == "two\nparts"


def test_keep_alive_takes_a_duration(api: Served) -> None:
    answer = api.client().chat.completions.create(
        model="echo", messages=USER, extra_body={"keep_alive": "5m"}
    )
    with Space.open(api.node.home) as space:
        assert space.show(answer.id.removeprefix("syncq-")).prompt.params["keep_alive"] == 300


def test_a_legacy_prompt_list_of_one_works_and_of_several_is_refused(api: Served) -> None:
    assert api.client().completions.create(model="echo", prompt=["only one"]).choices[0].text == "only one"
    with pytest.raises(openai.BadRequestError, match="one text per request"):
        api.client().completions.create(model="echo", prompt=["one", "two"])
    with pytest.raises(openai.BadRequestError, match="echo"):
        api.client().completions.create(model="echo", prompt="x", echo=True)


def test_every_error_and_unknown_route_answers_openai_shaped_json(api: Served) -> None:
    assert api.client().models.retrieve("echo").id == "echo"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        api.client().models.retrieve("nobody-serves-this")
    for method, path, code in [
        ("GET", "/v1/models/nobody", 404),
        ("GET", "/v1/nothing-here", 404),
        ("GET", "/api/tags-or-anything", 404),
        ("DELETE", "/v1/models", 405),
        ("GET", "/v1/chat/completions", 405),
    ]:
        found, headers, raw = api.call(method, path)
        assert found == code and headers["content-type"] == "application/json", (path, raw)
        error(raw)
    # The guard's own refusals: no key, a foreign Host, a form body.
    for found, headers, raw in [
        request(api.port, "GET", "/v1/models"),
        request(api.port, "GET", "/v1/models", host="evil.example", headers=api.auth),
        api.call("POST", "/v1/chat/completions", headers={"Content-Type": "text/plain"}, body=b"x"),
    ]:
        assert found in (401, 403, 415) and headers["content-type"] == "application/json"
        error(raw)


def test_a_bad_message_shape_is_a_400_naming_the_message(api: Served, tmp_path: Path) -> None:
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "x"}, {"role": "robot"}]})
    found, _, raw = api.call(
        "POST", "/v1/chat/completions", headers={"Content-Type": "application/json"}, body=body.encode()
    )
    assert found == 400 and "messages[1].role" in error(raw)["message"]


# -- with echo honouring the llm field (its conversation, stops, max_tokens, json, tools, embed)

WEATHER = {
    "type": "function",
    "function": {"name": "weather", "description": "the weather", "parameters": {"type": "object"}},
}


def test_a_whole_conversation_is_stored_and_its_last_user_turn_answered(api: Served) -> None:
    history = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "question"}],
        },
    ]
    answer = api.client().chat.completions.create(model="echo", messages=history)
    assert answer.choices[0].message.content == "second\nquestion"
    with Space.open(api.node.home) as space:
        prompt = space.show(answer.id.removeprefix("syncq-")).prompt
    assert prompt.input == "second\nquestion" and prompt.llm is not None
    assert [(m.role, m.content) for m in prompt.llm.messages] == [
        ("system", "be brief"),
        ("user", "first question"),
        ("assistant", "first answer"),
        ("user", "second\nquestion"),
    ]
    alone = api.client().chat.completions.create(model="echo", messages=history[-1:])
    assert answer.usage is not None and alone.usage is not None
    assert (alone.usage.prompt_tokens, answer.usage.prompt_tokens) == (2, 8)  # echo counts words


def test_max_completion_tokens_ends_the_answer_with_finish_length(api: Served) -> None:
    answer = api.client().chat.completions.create(model="echo", messages=USER, max_completion_tokens=3)
    assert answer.choices[0].message.content == "one two three"
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    streamed = list(
        api.client().chat.completions.create(model="echo", messages=USER, max_tokens=2, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == "one two"
    assert streamed[-1].choices[0].finish_reason == "length"


def test_every_stop_string_is_honoured(api: Served) -> None:
    answer = api.client().chat.completions.create(model="echo", messages=USER, stop=["six", " four"])
    assert answer.choices[0].message.content == "one two three"
    assert answer.choices[0].finish_reason == "stop"


def test_json_mode_and_a_schema_give_json(api: Served) -> None:
    for response_format in (
        {"type": "json_object"},
        {
            "type": "json_schema",
            "json_schema": {"name": "echo", "schema": {"type": "object"}, "strict": True},
        },
    ):
        answer = api.client().chat.completions.create(
            model="echo",
            messages=USER,
            response_format=response_format,  # type: ignore[arg-type]
        )
        assert json.loads(answer.choices[0].message.content or "") == {"echo": USER[0]["content"]}


def test_tool_calls_come_back_whole_and_streamed(api: Served) -> None:
    client = api.client()
    answer = client.chat.completions.create(
        model="echo", messages=USER, tools=[WEATHER], tool_choice="required"
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "weather"
    assert json.loads(call.function.arguments) == {"text": USER[0]["content"]}

    chunks = list(
        client.chat.completions.create(
            model="echo",
            messages=USER,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "weather"}},
            stream=True,
        )
    )
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert [(d.index, d.type, d.function.name) for d in deltas] == [(0, "function", "weather")]  # type: ignore[union-attr]
    assert deltas[0].id and json.loads(deltas[0].function.arguments or "") == {"text": USER[0]["content"]}  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # The round trip: the assistant's call (content null) and the tool's result go back.
    followed = client.chat.completions.create(
        model="echo",
        messages=[
            *USER,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "rain"},
        ],
        tools=[WEATHER],
    )
    assert followed.choices[0].finish_reason == "stop" and followed.choices[0].message.content


def test_embeddings_come_back_as_floats_and_base64(api: Served) -> None:
    client = api.client()
    found = client.embeddings.create(model="echo", input=["first text", "second text"])  # base64 by default
    assert [d.index for d in found.data] == [0, 1] and all(len(d.embedding) == 8 for d in found.data)
    assert found.usage.prompt_tokens == 4
    floats = client.embeddings.create(model="echo", input="first text", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(found.data[0].embedding, abs=1e-6)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model="echo", input="x", dimensions=4)
    with pytest.raises(openai.BadRequestError, match="token arrays"):
        client.embeddings.create(model="echo", input=[[1, 2, 3]])
