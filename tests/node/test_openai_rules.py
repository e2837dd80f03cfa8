"""The OpenAI API's translation rules on their own (node/openai_chat.py, node/http_common.py):
no process, no socket."""

from __future__ import annotations

import base64
import dataclasses
import json
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from syncq.node import openai_logprobs
from syncq.node.http_common import MAX_KEEP_ALIVE_S, ApiError, keep_alive_seconds
from syncq.node.openai_chat import (
    ApiRequest,
    Chunks,
    answer,
    chat_request,
    completion_request,
    embedding_request,
    embeddings,
    finish_reason,
)

from syncq.chat import LlmInput, OutputFormat, TokenLogprob, ToolCall
from syncq.client import Outcome
from syncq.errors import InvalidInput
from syncq.ids import PromptId
from syncq.lifecycle import Status

USER_HI = [{"role": "user", "content": "hi"}]
DONE = Outcome(prompt_id=PromptId("p"), status=Status.DONE, text="x")


@given(st.integers(0, 200), st.integers(0, 59), st.integers(0, 59))
def test_a_go_duration_is_its_hours_minutes_and_seconds_capped_at_the_maximum(h: int, m: int, s: int) -> None:
    total = min(h * 3600 + m * 60 + s, MAX_KEEP_ALIVE_S)
    assert keep_alive_seconds(f"{h}h{m}m{s}s") == total
    assert keep_alive_seconds(f"{h * 60 + m}m{s}s") == total
    assert keep_alive_seconds(str(h * 3600 + m * 60 + s)) == total
    assert keep_alive_seconds(h * 3600 + m * 60 + s) == total


def test_keep_alive_takes_ollama_s_forms_and_refuses_the_rest() -> None:
    assert keep_alive_seconds("5m") == 300
    assert keep_alive_seconds("1.5h") == 5400
    assert keep_alive_seconds("500ms") == 0.5
    assert keep_alive_seconds(0) == keep_alive_seconds("0") == 0
    assert keep_alive_seconds(10**400) == MAX_KEEP_ALIVE_S  # past float's range: was OverflowError
    for forever in (-1, "-1", "-1m", -0.5, 10**12, -(10**400)):
        assert keep_alive_seconds(forever) == MAX_KEEP_ALIVE_S
    for bad in ("5x", "", "m", "5m3", "1h 30m", "--1", True, None, [1], float("nan")):
        with pytest.raises(InvalidInput, match="keep_alive"):
            keep_alive_seconds(bad)


# -- requests -------------------------------------------------------------------------------

TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
ROUND_TRIP = [
    {"role": "developer", "content": "answer briefly"},
    {
        "role": "user",
        "content": [{"type": "text", "text": "weather in"}, {"type": "input_text", "text": "Oslo?"}],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
]


def chat_of(**body: Any) -> ApiRequest:
    return chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}, "m", "llama")


def refused(body: dict[str, Any], backend: str = "llama", **where: str) -> ApiError:
    with pytest.raises(ApiError) as found:
        chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}, "m", backend)
    assert found.value.status == 400
    for name, value in where.items():
        assert getattr(found.value, name) == value, found.value
    return found.value


def test_a_tool_round_trip_keeps_every_turn_and_shows_the_last_user_turn() -> None:
    asked = chat_request(
        {"model": "m", "messages": ROUND_TRIP, "tools": [TOOL], "tool_choice": "required"}, "m", "llama"
    )
    assert asked.text == "weather in\nOslo?"
    assert asked.llm is not None
    assert [m.role for m in asked.llm.messages] == ["system", "user", "assistant", "tool"]
    assert asked.llm.messages[2].tool_calls == (ToolCall(id="call_1", name="weather", arguments="{}"),)
    assert asked.llm.messages[3].tool_call_id == "call_1"
    assert asked.llm.tools[0].name == "weather" and asked.llm.tool_choice == "required"


def test_a_lone_user_turn_needs_no_llm_field_and_a_stream_goes_first() -> None:
    plain = chat_of()
    assert plain.llm is None and plain.text == "hi" and plain.priority == 0
    streamed = chat_of(stream=True, stream_options={"include_usage": True})
    assert streamed.priority == 1 and streamed.include_usage
    assert chat_of(stream=True, priority=-3).priority == -3
    assert chat_of(name=None, user="someone", metadata={"a": "b"}, store=False).llm is None


def test_fields_map_onto_syncq_params() -> None:
    asked = chat_of(
        max_completion_tokens=7,
        max_tokens=99,
        stop=["###", "END"],
        seed=3,
        temperature=0.2,
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        keep_alive="1h",
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}}},
    )
    assert asked.params == {
        "max_tokens": 7,
        "seed": 3,
        "temperature": 0.2,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "keep_alive": 3600.0,
        "mode": "chat",
    }
    assert asked.llm is not None and asked.llm.stop == ("###", "END")
    assert asked.llm.format == OutputFormat(type="json_schema", schema={"type": "object"}, name="p")
    one = chat_of(stop="###")
    assert one.params["stop"] == "###" and one.llm is None  # older nodes honour one stop string
    forced = chat_of(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "weather"}})
    assert forced.llm is not None and forced.llm.forced_tool == "weather"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"suffix": "x"}, "suffix"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"mirostat": 2}, "mirostat"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"keep_alive": "forever"}, "keep_alive"),
        ({"priority": 5000}, "priority"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, None),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_the_field(body: dict[str, Any], param: str | None) -> None:
    found = refused(body)
    if param is not None:
        assert found.param == param
    else:
        assert "does not take images" in str(found)


def test_null_fields_are_absent_and_harmless_ones_are_ignored() -> None:
    asked = chat_of(
        n=1, logprobs=False, suffix=None, logit_bias={}, service_tier="auto", parallel_tool_calls=True
    )
    assert asked.params == {"mode": "chat"}


def test_a_backend_without_the_ability_is_refused_before_queueing() -> None:
    with pytest.raises(ApiError, match="cannot make embeddings") as embed:
        embedding_request({"model": "gpt", "input": "x"}, "gpt", "openai")
    assert embed.value.status == 400 and embed.value.code == "model_unable"


def test_a_conversation_that_no_backend_could_run_is_refused() -> None:
    orphan = [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "y"}]
    assert "answers no earlier tool call" in str(refused({"messages": orphan}))
    assert "messages[1].role" in str(
        refused({"messages": [{"role": "user", "content": "x"}, {"role": "bot"}]})
    )


def test_a_completion_takes_one_prompt_and_refuses_echo_and_best_of() -> None:
    asked = completion_request({"model": "m", "prompt": ["once"], "stop": ["a", "b"]}, "m", "llama")
    assert asked.text == "once" and asked.mode == "complete"
    assert asked.llm == LlmInput(stop=("a", "b"))
    for body in (
        {"prompt": ["a", "b"]},
        {"prompt": [1, 2]},
        {"prompt": "x", "echo": True},
        {"prompt": "x", "best_of": 2},
    ):
        with pytest.raises(ApiError):
            completion_request({"model": "m", **body}, "m", "llama")


def test_embeddings_take_texts_and_refuse_tokens_and_dimensions() -> None:
    several = embedding_request(
        {"model": "m", "input": ["a", "b"], "encoding_format": "base64"}, "m", "llama"
    )
    assert several.llm == LlmInput(inputs=("a", "b")) and several.params == {"mode": "embed"}
    assert several.encoding == "base64"
    assert embedding_request({"model": "m", "input": "a"}, "m", "llama").llm is None
    for body in (
        {"input": [[1, 2]]},
        {"input": ""},
        {"input": "a", "dimensions": 8},
        {"input": "a", "top_k": 3},
    ):
        with pytest.raises(ApiError):
            embedding_request({"model": "m", **body}, "m", "llama")


def test_token_arrays_to_embed_get_a_400_that_says_how_langchain_sends_text() -> None:
    # OpenAIEmbeddings (langchain-openai 1.7) sends tiktoken ids unless told otherwise.
    for tokens in ([[9906, 1917], [15339]], [9906, 1917]):
        with pytest.raises(ApiError, match="check_embedding_ctx_length=False") as refused:
            embedding_request({"model": "m", "input": tokens}, "m", "llama")
        assert refused.value.status == 400


# -- answers --------------------------------------------------------------------------------


def test_an_answer_with_only_calls_has_null_content_and_finish_tool_calls() -> None:
    calls = (ToolCall(id="c1", name="weather", arguments='{"city":"Oslo"}'),)
    done = Outcome(
        prompt_id=PromptId("p"),
        status=Status.DONE,
        tool_calls=calls,
        finish="tool_calls",
        usage={"prompt_tokens": 3, "completion_tokens": 4},
    )
    found = answer("p", "m", True, done, {})
    choice = found["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
        ],
    }
    assert found["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert finish_reason("length", ()) == "length"
    assert finish_reason("", ()) == "stop"  # an older node's run says nothing
    assert answer("p", "m", False, Outcome(prompt_id=PromptId("p"), status=Status.DONE, text="x"), {})[
        "choices"
    ][0] == {"index": 0, "finish_reason": "stop", "logprobs": None, "text": "x"}


def test_a_stream_s_chunks_have_openai_s_shapes() -> None:
    chunks = Chunks("p", "m", True)

    def data(raw: bytes) -> dict[str, Any]:
        assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
        return json.loads(raw[6:])

    assert data(chunks.start())["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    called = data(chunks.calls([ToolCall(id="c1", name="f", arguments="{}")]))["choices"][0]["delta"]
    assert called == {
        "tool_calls": [
            {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ]
    }
    assert data(chunks.finish("length"))["choices"][0] == {
        "index": 0,
        "finish_reason": "length",
        "logprobs": None,
        "delta": {},
    }
    last = data(chunks.usage({"prompt_tokens": 2, "completion_tokens": 5}))
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 7
    assert (
        Chunks("p", "m", False).start() == b""
        and data(Chunks("p", "m", False).text("x"))["choices"][0]["text"] == "x"
    )


def test_embeddings_answer_as_floats_or_base64_float32() -> None:
    found = embeddings("m", "[[0.5,-1.0],[2,0]]", {"prompt_tokens": 4}, "float")
    assert [d["embedding"] for d in found["data"]] == [[0.5, -1.0], [2, 0]]
    assert [d["index"] for d in found["data"]] == [0, 1] and found["usage"]["total_tokens"] == 4
    packed = embeddings("m", "[[0.5,-1.0]]", {}, "base64")["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(packed)) == (0.5, -1.0)
    with pytest.raises(ApiError, match="no embeddings"):
        embeddings("m", "not vectors", {}, "float")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "refusal", "x"])}, optional={"text": json_values}
)
turns = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "bot"])},
    optional={
        "content": st.none() | st.text(max_size=10) | st.lists(parts, max_size=3) | json_values,
        "tool_calls": json_values,
        "tool_call_id": json_values,
        "name": json_values,
    },
)
bodies = st.fixed_dictionaries(
    {"messages": st.lists(turns, max_size=4) | json_values},
    optional={
        name: json_values
        for name in (
            "stop",
            "tools",
            "tool_choice",
            "response_format",
            "n",
            "stream",
            "stream_options",
            "priority",
        )
    },
)


@given(bodies)
def test_any_body_is_translated_or_refused_with_a_400(body: dict[str, Any]) -> None:
    for backend in ("llama", "echo", "openai", None):
        try:
            asked = chat_request({"model": "m", **body}, "m", backend)
        except ApiError as exc:
            refusal = exc
        else:
            assert asked.mode == "chat" and isinstance(asked.text, str)
            continue
        assert refusal.status == 400 and str(refusal)


@given(
    st.dictionaries(
        st.sampled_from(
            ["prompt", "input", "stop", "best_of", "echo", "encoding_format", "dimensions", "keep_alive"]
        ),
        json_values,
    )
)
def test_any_completion_or_embedding_body_is_translated_or_refused_with_a_400(body: dict[str, Any]) -> None:
    for translate in (completion_request, embedding_request):
        try:
            translate({"model": "m", **body}, "m", "llama")
        except ApiError as exc:
            assert exc.status == 400  # noqa: PT017 (every refusal, not one expected)


def test_logprobs_map_onto_params_for_llama_and_are_refused_elsewhere() -> None:
    asked = chat_request(
        {"model": "m", "messages": USER_HI, "logprobs": True, "top_logprobs": 3}, "m", "llama"
    )
    assert (asked.params["logprobs"], asked.params["top_logprobs"]) == (True, 3)
    plain = completion_request({"model": "m", "prompt": "hi", "logprobs": 0}, "m", "llama")
    assert (plain.params["logprobs"], plain.params["top_logprobs"]) == (True, 0)  # chosen tokens only
    assert "logprobs" not in chat_request({"model": "m", "messages": USER_HI}, "m", "llama").params
    refused({"logprobs": True}, backend="echo", param="logprobs", code="model_unable")


def test_logprobs_answer_in_openai_s_chat_and_completion_shapes() -> None:
    outcome = dataclasses.replace(
        DONE,
        text="Hi there",
        logprobs=(
            TokenLogprob(token="Hi", logprob=-0.5, top=(("Hi", -0.5), ("Hey", -1.5))),  # noqa: S106
            TokenLogprob(token=" there", logprob=-0.25),  # noqa: S106
        ),
    )
    chat_found = openai_logprobs.shaped(outcome, chat_mode=True)
    assert chat_found == {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.5,
                "bytes": [72, 105],
                "top_logprobs": [
                    {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
                    {"token": "Hey", "logprob": -1.5, "bytes": [72, 101, 121]},
                ],
            },
            {"token": " there", "logprob": -0.25, "bytes": list(b" there"), "top_logprobs": []},
        ],
        "refusal": None,
    }
    assert openai_logprobs.shaped(outcome, chat_mode=False) == {
        "tokens": ["Hi", " there"],
        "token_logprobs": [-0.5, -0.25],
        "top_logprobs": [{"Hi": -0.5, "Hey": -1.5}, {}],
        "text_offset": [0, 2],
    }
    assert openai_logprobs.shaped(DONE, chat_mode=True) is None
