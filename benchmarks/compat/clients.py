"""Real clients against a running syncq node: each check is one call a client makes, run in
the interpreter that has the clients installed (not the project's venv).

Prints one JSON list: ``{"client", "version", "call", "works", "detail"}`` per check. A client
that is not installed is listed once with works "skipped".
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import Any

BASE = os.environ["SYNCQ_COMPAT_BASE"]  # http://127.0.0.1:PORT
KEY = os.environ["SYNCQ_COMPAT_KEY"]
CHAT = os.environ.get("SYNCQ_COMPAT_CHAT", "smollm2-135m")
EMBED = os.environ.get("SYNCQ_COMPAT_EMBED", "gemma3-270m")
V1 = f"{BASE}/v1"
TOOL = {
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
ROWS: list[dict[str, Any]] = []


def version(package: str) -> str:
    if package == "curl":
        return subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()[1]
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def check(client: str, package: str, call: str, run: Callable[[], object]) -> None:
    """Run one call; a returned value is its detail, an exception its failure."""
    row: dict[str, Any] = {"client": client, "version": version(package), "call": call}
    try:
        detail = run()
        row |= {"works": "yes", "detail": str(detail)[:200]}
    except Exception as exc:  # every failure is a finding, reported, never raised
        last = traceback.format_exception_only(exc)[-1].strip()
        row |= {"works": "no", "detail": last[:400]}
    ROWS.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def skipped(client: str, package: str) -> None:
    ROWS.append({"client": client, "version": "", "call": "*", "works": "skipped", "detail": package})


# -- the official openai SDK ------------------------------------------------------------------


def openai_checks() -> None:
    import openai
    from pydantic import BaseModel

    client = openai.OpenAI(base_url=V1, api_key=KEY, max_retries=0, timeout=120)
    name, pkg = "openai", "openai"
    history = [
        {"role": "system", "content": "You are a helpful assistant. Answer in one sentence."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]

    def chat() -> object:
        r = client.chat.completions.create(model=CHAT, messages=history, max_completion_tokens=16)
        assert r.choices[0].message.content, r
        return f"{r.choices[0].finish_reason} {r.usage}"

    def stream() -> object:
        chunks = list(
            client.chat.completions.create(
                model=CHAT,
                messages=history,
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage is not None, chunks[-1]
        assert chunks[-1].usage.completion_tokens > 0, chunks[-1]
        return f"{text!r} {chunks[-1].usage}"

    def tools() -> object:
        ask = [{"role": "user", "content": "What is the weather in Paris?"}]
        r = client.chat.completions.create(
            model=CHAT, messages=ask, tools=[TOOL], tool_choice="required", max_tokens=64
        )
        call = r.choices[0].message.tool_calls[0]
        assert r.choices[0].finish_reason == "tool_calls", r
        json.loads(call.function.arguments)
        back = [
            *ask,
            r.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
        ]
        r2 = client.chat.completions.create(model=CHAT, messages=back, tools=[TOOL], max_tokens=24)
        again = r2.choices[0]
        return f"{call.function.name}({call.function.arguments}) -> {again.finish_reason}: {again.message}"

    def forced_stream() -> object:
        ask = [{"role": "user", "content": "What is the weather in Rome?"}]
        chunks = list(
            client.chat.completions.create(
                model=CHAT,
                messages=ask,
                tools=[TOOL],
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                max_tokens=64,
                stream=True,
            )
        )
        calls = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
        assert calls, chunks
        assert calls[0].function.name == "get_weather", calls
        return calls[0].function.arguments

    class City(BaseModel):
        name: str
        country: str

    def parse() -> object:
        r = client.beta.chat.completions.parse(
            model=CHAT,
            messages=[{"role": "user", "content": "Name a city in France."}],
            response_format=City,
            max_tokens=96,
        )
        assert r.choices[0].message.parsed is not None, r
        return r.choices[0].message.parsed

    def parse_new() -> object:
        r = client.chat.completions.parse(
            model=CHAT,
            messages=[{"role": "user", "content": "Name a city in Spain."}],
            response_format=City,
            max_tokens=96,
        )
        assert r.choices[0].message.parsed is not None, r
        return r.choices[0].message.parsed

    def json_object() -> object:
        r = client.chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": "Give a JSON object with a key city."}],
            response_format={"type": "json_object"},
            max_tokens=32,
        )
        return json.loads(r.choices[0].message.content or "")

    def embeddings() -> object:
        r = client.embeddings.create(model=EMBED, input=["hello", "world"])
        return f"{len(r.data)} x {len(r.data[0].embedding)}"

    def retrieve() -> object:
        return client.models.retrieve(CHAT)

    def models() -> object:
        return [m.id for m in client.models.list()]

    def completion() -> object:
        r = client.completions.create(model="echo", prompt="hello", max_tokens=8)
        return r.choices[0].text

    def n_two() -> object:
        try:
            client.chat.completions.create(model="echo", messages=history, n=2)
        except openai.BadRequestError as exc:
            return exc.message
        raise AssertionError("n=2 was answered")

    def unknown_model() -> object:
        try:
            client.chat.completions.create(model="nope", messages=history)
        except openai.NotFoundError as exc:
            return exc.message
        raise AssertionError("no error")

    def responses() -> object:
        return client.responses.create(model=CHAT, input="Say hi.", max_output_tokens=8).output_text

    def logprobs() -> object:
        r = client.chat.completions.create(
            model=CHAT, messages=history, max_tokens=4, logprobs=True, top_logprobs=2
        )
        return r.choices[0].logprobs

    for call, run in [
        ("chat (system + history, max_completion_tokens)", chat),
        ("stream + include_usage", stream),
        ("tools round trip (required)", tools),
        ("tool_choice named, streamed", forced_stream),
        ("beta.chat.completions.parse (json_schema)", parse),
        ("chat.completions.parse (json_schema)", parse_new),
        ("response_format json_object", json_object),
        ("embeddings (base64 default)", embeddings),
        ("models.retrieve", retrieve),
        ("models.list", models),
        ("completions (echo)", completion),
        ("unknown model -> NotFoundError", unknown_model),
        ("n=2 -> a clear 400", n_two),
        ("logprobs (smollm2 without logits_all)", logprobs),
        ("responses.create (Responses API)", responses),
    ]:
        check(name, pkg, call, run)


# -- LangChain --------------------------------------------------------------------------------


def langchain_checks() -> None:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings
    from pydantic import BaseModel, Field

    name, pkg = "langchain-openai", "langchain-openai"
    llm = ChatOpenAI(model=CHAT, base_url=V1, api_key=KEY, max_tokens=24, max_retries=0, timeout=120)

    class City(BaseModel):
        """A city."""

        name: str = Field(description="the city's name")
        country: str

    def invoke() -> object:
        r = llm.invoke(
            [
                SystemMessage("Answer in one sentence."),
                HumanMessage("What is the capital of France?"),
                AIMessage("Paris."),
                HumanMessage("And of Italy?"),
            ]
        )
        return f"{r.content!r} {r.usage_metadata}"

    def stream() -> object:
        return "".join(str(c.content) for c in llm.stream("Say hi."))

    def stream_usage() -> object:
        s = ChatOpenAI(model=CHAT, base_url=V1, api_key=KEY, max_tokens=8, stream_usage=True)
        last = None
        for c in s.stream("Say hi."):
            last = c if last is None else last + c
        assert last is not None, "no chunks"
        assert last.usage_metadata, last
        return last.usage_metadata

    def bind_tools() -> object:
        from langchain_core.tools import tool

        @tool
        def get_weather(city: str) -> str:
            """The weather in a city."""
            return "Sunny"

        r = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
        assert r.tool_calls, r
        return r.tool_calls

    def bind_tools_any() -> object:
        from langchain_core.tools import tool

        @tool
        def get_weather(city: str) -> str:
            """The weather in a city."""
            return "Sunny"

        r = llm.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris?")
        assert r.tool_calls, r
        return r.tool_calls

    def tool_round_trip() -> object:
        from langchain_core.messages import ToolMessage

        call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1", "type": "tool_call"}
        r = llm.invoke(
            [
                HumanMessage("Weather in Paris?"),
                AIMessage("", tool_calls=[call]),
                ToolMessage("Sunny, 21 C", tool_call_id="call_1"),
            ]
        )
        return r.content

    def structured(method: str) -> Callable[[], object]:
        def run() -> object:
            s = ChatOpenAI(model=CHAT, base_url=V1, api_key=KEY, max_tokens=64, max_retries=0)
            return s.with_structured_output(City, method=method).invoke("Name a city in France.")

        return run

    def embeddings(ctx: bool) -> Callable[[], object]:
        def run() -> object:
            e = OpenAIEmbeddings(model=EMBED, base_url=V1, api_key=KEY, check_embedding_ctx_length=ctx)
            v = e.embed_documents(["hello", "world"])
            return f"{len(v)} x {len(v[0])}"

        return run

    for call, run in [
        ("invoke (system + history)", invoke),
        ("stream", stream),
        ("stream (stream_usage=True)", stream_usage),
        ("bind_tools, tool_choice=name", bind_tools),
        ("bind_tools, tool_choice=any", bind_tools_any),
        ("invoke with an AIMessage tool_calls + ToolMessage", tool_round_trip),
        ("with_structured_output json_schema", structured("json_schema")),
        ("with_structured_output function_calling", structured("function_calling")),
        ("with_structured_output json_mode", structured("json_mode")),
        ("OpenAIEmbeddings (default: token arrays)", embeddings(True)),
        ("OpenAIEmbeddings check_embedding_ctx_length=False", embeddings(False)),
    ]:
        check(name, pkg, call, run)


def langchain_ollama_checks() -> None:
    from langchain_ollama import ChatOllama, OllamaEmbeddings

    name, pkg = "langchain-ollama", "langchain-ollama"
    headers = {"Authorization": f"Bearer {KEY}"}
    llm = ChatOllama(model=CHAT, base_url=BASE, num_predict=16, client_kwargs={"headers": headers})

    def invoke() -> object:
        return llm.invoke("Say hi.").content

    def stream() -> object:
        return "".join(str(c.content) for c in llm.stream("Say hi."))

    def embed() -> object:
        e = OllamaEmbeddings(model=EMBED, base_url=BASE, client_kwargs={"headers": headers})
        return len(e.embed_query("hello"))

    def tools() -> object:
        from langchain_core.tools import tool

        @tool
        def get_weather(city: str) -> str:
            """The weather in a city."""
            return "Sunny"

        r = llm.bind_tools([get_weather]).invoke("What is the weather in Paris?")
        return r.tool_calls or f"text: {r.content!r}"

    def structured() -> object:
        from pydantic import BaseModel

        class City(BaseModel):
            name: str
            country: str

        s = ChatOllama(model=CHAT, base_url=BASE, num_predict=48, client_kwargs={"headers": headers})
        return s.with_structured_output(City).invoke("Name a city in France.")

    for call, run in [
        ("invoke", invoke),
        ("stream", stream),
        ("bind_tools (no tool_choice in Ollama: auto)", tools),
        ("with_structured_output (format=schema)", structured),
        ("OllamaEmbeddings", embed),
    ]:
        check(name, pkg, call, run)


# -- LiteLLM ----------------------------------------------------------------------------------


def litellm_checks() -> None:
    import litellm

    name, pkg = "litellm", "litellm"
    messages = [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    headers = {"Authorization": f"Bearer {KEY}"}

    def openai_completion() -> object:
        r = litellm.completion(
            model=f"openai/{CHAT}", api_base=V1, api_key=KEY, messages=messages, max_tokens=16
        )
        return f"{r.choices[0].message.content!r} {r.usage}"

    def openai_stream() -> object:
        chunks = litellm.completion(
            model=f"openai/{CHAT}",
            api_base=V1,
            api_key=KEY,
            messages=messages,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    def openai_tools() -> object:
        r = litellm.completion(
            model=f"openai/{CHAT}",
            api_base=V1,
            api_key=KEY,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[TOOL],
            tool_choice="required",
            max_tokens=64,
        )
        assert r.choices[0].message.tool_calls, r
        return r.choices[0].message.tool_calls[0].function

    def openai_round_trip() -> object:
        ask = [{"role": "user", "content": "Weather in Paris?"}]
        kw = {"model": f"openai/{CHAT}", "api_base": V1, "api_key": KEY, "tools": [TOOL]}
        r = litellm.completion(messages=ask, tool_choice="required", max_tokens=64, **kw)
        m = r.choices[0].message  # appended as is, LiteLLM's own Message object
        back = [*ask, m, {"role": "tool", "tool_call_id": m.tool_calls[0].id, "content": "Sunny"}]
        again = litellm.completion(messages=back, max_tokens=16, **kw).choices[0]
        return f"{again.finish_reason}: {again.message.content or again.message.tool_calls}"

    def openai_embedding() -> object:
        r = litellm.embedding(model=f"openai/{EMBED}", api_base=V1, api_key=KEY, input=["hello"])
        return len(r.data[0]["embedding"])

    def ollama_chat(stream: bool) -> Callable[[], object]:
        def run() -> object:
            r = litellm.completion(
                model=f"ollama_chat/{CHAT}",
                api_base=BASE,
                messages=messages,
                max_tokens=16,
                stream=stream,
                headers=headers,
            )
            if stream:
                return "".join(c.choices[0].delta.content or "" for c in r if c.choices)
            return f"{r.choices[0].message.content!r} {r.usage}"

        return run

    def ollama_chat_tools() -> object:
        r = litellm.completion(
            model=f"ollama_chat/{CHAT}",
            api_base=BASE,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[TOOL],
            max_tokens=64,
            headers=headers,
        )
        return r.choices[0].message

    def ollama_generate() -> object:
        r = litellm.completion(
            model=f"ollama/{CHAT}", api_base=BASE, messages=messages, max_tokens=16, headers=headers
        )
        return f"{r.choices[0].message.content!r} {r.usage}"

    def ollama_json() -> object:
        r = litellm.completion(
            model=f"ollama_chat/{CHAT}",
            api_base=BASE,
            messages=[{"role": "user", "content": "A JSON object with a key city."}],
            response_format={"type": "json_object"},
            max_tokens=32,
            headers=headers,
        )
        return json.loads(r.choices[0].message.content)

    def ollama_schema() -> object:
        r = litellm.completion(
            model=f"ollama_chat/{CHAT}",
            api_base=BASE,
            messages=[{"role": "user", "content": "Name a city in France."}],
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "City",
                    "schema": {
                        "type": "object",
                        "properties": {"name": {"type": "string", "maxLength": 40}},
                        "required": ["name"],
                    },
                },
            },
            max_tokens=32,
            headers=headers,
        )
        return json.loads(r.choices[0].message.content)

    def ollama_embedding() -> object:
        r = litellm.embedding(model=f"ollama/{EMBED}", api_base=BASE, input=["hello"], headers=headers)
        return len(r.data[0]["embedding"])

    for call, run in [
        ("completion openai/ + api_base", openai_completion),
        ("completion openai/ stream", openai_stream),
        ("completion openai/ tools required", openai_tools),
        ("tool round trip openai/ (Message appended as is)", openai_round_trip),
        ("embedding openai/", openai_embedding),
        ("completion ollama_chat/", ollama_chat(False)),
        ("completion ollama_chat/ stream", ollama_chat(True)),
        ("completion ollama_chat/ tools", ollama_chat_tools),
        ("completion ollama_chat/ json_object", ollama_json),
        ("completion ollama_chat/ json_schema", ollama_schema),
        ("completion ollama/ (generate)", ollama_generate),
        ("embedding ollama/", ollama_embedding),
    ]:
        check(name, pkg, call, run)


# -- instructor -------------------------------------------------------------------------------


def instructor_checks() -> None:
    import instructor
    import openai
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str

    def run(mode: Any) -> Callable[[], object]:
        def call() -> object:
            client = instructor.from_openai(openai.OpenAI(base_url=V1, api_key=KEY, max_retries=0), mode=mode)
            return client.chat.completions.create(
                model=CHAT,
                response_model=City,
                messages=[{"role": "user", "content": "Name a city in France."}],
                max_tokens=64,
                max_retries=1,
            )

        return call

    for call, mode in [
        ("TOOLS mode", instructor.Mode.TOOLS),
        ("JSON mode", instructor.Mode.JSON),
        ("JSON_SCHEMA mode", instructor.Mode.JSON_SCHEMA),
        ("MD_JSON mode", instructor.Mode.MD_JSON),
    ]:
        check("instructor", "instructor", call, run(mode))


# -- pydantic-ai ------------------------------------------------------------------------------


def pydantic_ai_checks() -> None:
    from pydantic import BaseModel
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider
    from pydantic_ai.settings import ModelSettings

    class City(BaseModel):
        name: str
        country: str

    model = OpenAIChatModel(CHAT, provider=OpenAIProvider(base_url=V1, api_key=KEY))
    settings = ModelSettings(max_tokens=64)
    pkg = "pydantic-ai-slim"

    def text() -> object:
        agent = Agent(model, instructions="Answer in one sentence.", model_settings=settings)
        r = agent.run_sync("What is the capital of France?")
        return f"{r.output!r} {r.usage}"

    def typed() -> object:
        agent = Agent(model, output_type=City, model_settings=settings, retries=2)
        return agent.run_sync("Name a city in France.").output

    def tool() -> object:
        agent = Agent(model, model_settings=settings)

        @agent.tool_plain
        def get_weather(city: str) -> str:
            """The weather in a city."""
            return f"Sunny in {city}"

        r = agent.run_sync("What is the weather in Paris? Use the tool.")
        return r.output

    def stream() -> object:
        agent = Agent(model, model_settings=settings)

        async def go() -> str:
            async with agent.run_stream("Say hi.") as r:
                return "".join([t async for t in r.stream_text(delta=True)])

        import asyncio

        return asyncio.run(go())

    for call, run in [
        ("Agent text (instructions)", text),
        ("Agent output_type=pydantic model", typed),
        ("Agent with a tool (auto)", tool),
        ("Agent run_stream", stream),
    ]:
        check("pydantic-ai", pkg, call, run)


# -- the ollama package -----------------------------------------------------------------------


def ollama_checks() -> None:
    import ollama

    client = ollama.Client(host=BASE, headers={"Authorization": f"Bearer {KEY}"})
    messages = [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    tool = {
        "type": "function",
        "function": {**TOOL["function"]},
    }

    def tools() -> object:
        r = client.chat(
            model=CHAT,
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[tool],
            options={"num_predict": 64},
        )
        return r.message.tool_calls or f"text: {r.message.content!r}"

    def tools_fn() -> object:
        def get_weather(city: str) -> str:
            """The weather in a city.

            Args:
              city: the city
            """
            return "Sunny"

        r = client.chat(
            model=CHAT,
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[get_weather],
            options={"num_predict": 64},
        )
        return r.message.tool_calls or f"text: {r.message.content!r}"

    for call, run in [
        ("list", lambda: [m.model for m in client.list().models]),
        ("show", lambda: client.show(CHAT).details),
        ("ps", lambda: client.ps()),
        ("version (GET /api/version)", lambda: client._request_raw("GET", "/api/version").json()),
        (
            "chat",
            lambda: client.chat(model=CHAT, messages=messages, options={"num_predict": 16}).message.content,
        ),
        (
            "chat stream",
            lambda: "".join(
                c.message.content or ""
                for c in client.chat(model=CHAT, messages=messages, stream=True, options={"num_predict": 16})
            ),
        ),
        (
            "chat format=schema",
            lambda: json.loads(
                client.chat(
                    model=CHAT,
                    messages=[{"role": "user", "content": "Name a city in France."}],
                    format={
                        "type": "object",
                        "properties": {"name": {"type": "string"}},
                        "required": ["name"],
                    },
                    options={"num_predict": 32},
                ).message.content
            ),
        ),
        ("chat tools (auto)", tools),
        ("chat tools (python function)", tools_fn),
        (
            "generate",
            lambda: client.generate(model="gemma3-270m", prompt="The sky is", options={"num_predict": 8}),
        ),
        (
            "generate stream, keep_alive 5m",
            lambda: "".join(
                c.response
                for c in client.generate(model="echo:latest", prompt="hello", stream=True, keep_alive="5m")
            ),
        ),
        ("embed", lambda: len(client.embed(model=EMBED, input=["hello", "world"]).embeddings)),
        ("embeddings (legacy)", lambda: len(client.embeddings(model=EMBED, prompt="hello").embedding)),
    ]:
        check("ollama", "ollama", call, run)


# -- curl -------------------------------------------------------------------------------------


def curl_checks() -> None:
    def stream() -> object:
        body = json.dumps(
            {
                "model": CHAT,
                "stream": True,
                "max_tokens": 8,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "Say hi."}],
            }
        )
        out = subprocess.run(
            [
                "curl", "-sSN", "--fail-with-body", f"{V1}/chat/completions",
                "-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json",
                "-d", body,
            ],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        assert out.rstrip().endswith("data: [DONE]"), out
        return f"{out.count('data: ')} events"

    def ollama_stream() -> object:
        body = json.dumps({"model": CHAT, "messages": [{"role": "user", "content": "Say hi."}]})
        out = subprocess.run(
            [
                "curl", "-sSN", "--fail-with-body", f"{BASE}/api/chat",
                "-H", f"Authorization: Bearer {KEY}", "-d", body,
            ],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        lines = [json.loads(line) for line in out.splitlines() if line]
        assert lines[-1]["done"], lines[-1]
        return f"{len(lines)} lines"

    for call, run in [("streamed chat (SSE)", stream), ("Ollama /api/chat (NDJSON)", ollama_stream)]:
        check("curl", "curl", call, run)


SUITES = [
    ("openai", "openai", openai_checks),
    ("langchain_openai", "langchain-openai", langchain_checks),
    ("langchain_ollama", "langchain-ollama", langchain_ollama_checks),
    ("litellm", "litellm", litellm_checks),
    ("instructor", "instructor", instructor_checks),
    ("pydantic_ai", "pydantic-ai-slim", pydantic_ai_checks),
    ("ollama", "ollama", ollama_checks),
]


def main() -> None:
    only = set(sys.argv[1:])
    for module, package, suite in SUITES:
        if only and module not in only:
            continue
        if installed(module):
            suite()
        else:
            skipped(module, package)
    if not only or "curl" in only:
        curl_checks()
    print(json.dumps(ROWS, indent=1))


if __name__ == "__main__":
    main()
