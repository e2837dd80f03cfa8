"""How an llm prompt becomes a llama.cpp prompt: the conversation through the model's chat
template, tools, and the grammar that holds the output to JSON or to a tool call.

The template is the GGUF's own (``tokenizer.chat_template``, rendered by llama-cpp-python's
Jinja formatter) or, for a GGUF without one, the format of its family (``FAMILY_FORMATS``, read
from ``general.architecture``); llama-cpp-python would otherwise fall back to a generic format
the model was never trained on.

Tools. A template that mentions ``tools`` renders them itself (Qwen, Llama 3.1, Hermes...):
the model writes calls the way it was trained to, and ``parse_call`` reads them back. For any
other template (SmolLM2's ChatML, gemma's), the tools are described in the system turn and the
model is asked to answer with ``{"name": ..., "arguments": {...}}``. ``tool_choice``:

- ``required``, or a forced tool: a grammar admits only such a call object, with the name one
  of the tools' (or the forced one) and the arguments following that tool's parameters schema,
  so even a 135M model always gives a valid call.
- ``auto`` (template without tools): the first token is sampled under a grammar that admits
  either the call object or a text answer that does not start with ``{`` (``AUTO_TEXT``);
  a ``{`` makes it a call, generated under the call grammar, and anything else a text answer
  that goes on from that token with no grammar at all. This is llama-cpp-python's
  ``chatml-function-calling`` idea (decide first, then generate) without its ``message:`` /
  ``functions.NAME:`` prefixes, which a model was never trained on, and without its second
  non-streaming pass: the decision costs one token, a text answer streams, and a call is valid
  by construction. One grammar over the whole answer would do the same but checks every
  token of a text answer against it, for no gain once the first character is known.
- ``none``: the tools are not shown, as if there were none (OpenAI's meaning).

Tool calls and tool results in the history are rendered in the same shapes: OpenAI's for a
template with tools, the call object and a user turn ``Result of NAME: ...`` otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from syncq.chat import LlmInput, Message, Tool

from .base import ExecutorError

# general.architecture -> llama-cpp-python chat format, for GGUFs that carry no template
FAMILY_FORMATS = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "llama": "llama-3",
    "qwen2": "chatml",
    "qwen3": "chatml",
    "phi3": "chatml",
    "mistral": "mistral-instruct",
}
# A text answer next to a possible call: anything whose first character is neither ``{`` nor
# white space (a call starts with ``{``; a space first would let a call hide behind it).
AUTO_TEXT = r"text ::= [^{ \t\r\n] [^\x00]*"
# response_format json_object: any JSON object, within bounds (16 members an object, 32 items an
# array, three levels, keys of 64 characters and strings of 256 at most). Small models given
# llama.cpp's unbounded JSON grammar never close their object: gemma3-270m wrote "cat1": "cat2",
# "cat2": "cat3", ... to max_tokens whatever the prompt. A bounded object must end; a client that
# needs more declares it with json_schema.
JSON_OBJECT = r"""
root ::= object1
object1 ::= "{" space ( member1 ( "," space member1 ){0,15} )? "}" space
member1 ::= key ":" space ( object2 | array2 | scalar )
object2 ::= "{" space ( member2 ( "," space member2 ){0,15} )? "}" space
member2 ::= key ":" space ( object3 | array3 | scalar )
array2 ::= "[" space ( item2 ( "," space item2 ){0,31} )? "]" space
item2 ::= object3 | array3 | scalar
object3 ::= "{" space ( member3 ( "," space member3 ){0,15} )? "}" space
member3 ::= key ":" space scalar
array3 ::= "[" space ( scalar ( "," space scalar ){0,31} )? "]" space
scalar ::= string | number | ( "true" | "false" | "null" ) space
key ::= "\"" char{1,64} "\"" space
string ::= "\"" char{0,256} "\"" space
char ::= [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
number ::= "-"? ( [0-9] | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )? space
space ::= " "?
"""
_ROOT = re.compile(r"^root ::=", re.MULTILINE)
_CHAR = re.compile(r"^char ::= .*$", re.MULTILINE)
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )'

Calls = Literal["never", "maybe", "always"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Template:
    """A model's chat template: ``render(messages=..., tools=...)`` gives the formatter's
    response (prompt, stop, added_special)."""

    render: Callable[..., Any]
    family: str = ""  # the fallback format's name; "" for the GGUF's own template
    tools: bool = False  # the template renders tools itself


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What to ask llama.cpp for one chat prompt."""

    prompt: str
    added_special: bool  # the prompt already has its BOS token (do not add another)
    stop: list[str] = field(default_factory=list)  # the template's end of turn
    grammar: str | None = None  # GBNF the output must follow
    calls: Calls = "never"  # whether the output is, may be, or is never a tool call
    first: str | None = None  # auto: GBNF of the first token, which decides call or text
    call: str | None = None  # auto: GBNF of the call, when the first token began one


def template_of(metadata: Mapping[str, str], eos: str, bos: str, eos_id: int) -> Template:
    """The GGUF's own template, else its family's format (``FAMILY_FORMATS``, chatml if the
    family is unknown)."""
    from llama_cpp import llama_chat_format as formats

    own = metadata.get("tokenizer.chat_template")
    if own:
        formatter = formats.Jinja2ChatFormatter(
            template=own, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id]
        )
        return Template(render=formatter, tools="tools" in own)
    family = FAMILY_FORMATS.get(metadata.get("general.architecture", ""), "chatml")
    fallback = {
        "gemma": formats.format_gemma,
        "chatml": formats.format_chatml,
        "llama-3": formats.format_llama3,
        "mistral-instruct": formats.format_mistral_instruct,
    }[family]
    return Template(render=fallback, family=family)


def plan(template: Template, text: str, llm: LlmInput | None) -> Plan:
    """The prompt, stop strings and grammar for a chat prompt whose text is ``text`` (one user
    turn when ``llm`` carries no messages). Raises ``ExecutorError`` for a schema llama.cpp's
    grammar converter cannot read."""
    llm = llm or LlmInput()
    messages = list(llm.messages) or [Message(role="user", content=text)]
    tools = llm.tools if llm.wants_tools else ()
    calls: Calls = "never"
    grammar = first = call = None
    if tools:
        forced = llm.forced_tool or llm.tool_choice == "required"
        if llm.format is not None and not forced:
            # The answer may be a call or a text: one grammar cannot hold the text to the format
            # and leave the call free (both start with "{"). A forced call needs no format.
            raise ExecutorError(
                "the llama backend cannot apply a response_format to a text answer when tools are "
                "offered with tool_choice auto: use one or the other, or require a tool"
            )
        calls = "always" if forced else "maybe"
        if forced:
            grammar = call_grammar(tools, llm.forced_tool)
        elif not template.tools:
            first, call = call_grammar(tools, either=True), call_grammar(tools)
    elif llm.format is not None:
        grammar = schema_grammar(llm.format.schema) if llm.format.type == "json_schema" else JSON_OBJECT
    if template.tools:
        wire = [_openai_message(m) for m in messages]
        result = template.render(messages=wire, tools=[_openai_tool(t) for t in tools] or None)
    else:
        wire = _plain_messages(messages, template.family)
        if tools:
            wire = _with_tools_described(wire, tools, llm.forced_tool, calls == "always", template.family)
        result = template.render(messages=wire)
    stops = result.stop if isinstance(result.stop, list) else [result.stop]
    stop = [s for s in stops if s]
    return Plan(
        prompt=result.prompt,
        added_special=bool(getattr(result, "added_special", False)),
        stop=stop,
        grammar=grammar,
        calls=calls,
        first=first,
        call=call,
    )


def schema_grammar(schema: Mapping[str, Any], prop_order: Sequence[str] = ()) -> str:
    """llama.cpp's GBNF for JSON that follows ``schema``. Raises ``ExecutorError``."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = str(json_schema_to_gbnf(json.dumps(schema), prop_order=list(prop_order)))
    except Exception as exc:  # the converter raises bare exceptions of many kinds
        raise ExecutorError(f"llama.cpp cannot turn this JSON schema into a grammar: {exc}") from exc
    # Its strings take any character but `"` and `\`, raw newlines and other control characters
    # too, which JSON forbids (smollm2 wrote them, and clients' parsers refused the answer):
    # JSON's own rule, as llama.cpp's C++ converter has it.
    return _CHAR.sub(lambda _: _JSON_CHAR, gbnf)


def call_grammar(tools: Sequence[Tool], forced: str = "", *, either: bool = False) -> str:
    """A grammar for one call object ``{"name": N, "arguments": A}``: N one of the tools'
    names (``forced``: that one), A following that tool's parameters. ``either``: a text
    answer (``AUTO_TEXT``) is allowed instead."""
    chosen = [t for t in tools if not forced or t.name == forced]
    try:
        gbnf = _calls_gbnf([(t.name, _arguments_schema(t)) for t in chosen])
    except ExecutorError:
        # A parameters schema the converter cannot read (a remote $ref, say): the arguments are
        # then any object, as llama-cpp-python's own function calling falls back to; the name
        # is still one of the tools'.
        gbnf = _calls_gbnf([(t.name, {"type": "object"}) for t in chosen])
    if not either:
        return gbnf
    return _ROOT.sub("call ::=", gbnf, count=1) + "\nroot ::= call | text\n" + AUTO_TEXT + "\n"


def _calls_gbnf(calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": arguments},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, arguments in calls
    ]
    schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
    return schema_grammar(schema, prop_order=("name", "arguments"))


def _arguments_schema(tool: Tool) -> Mapping[str, Any]:
    # A tool without parameters still takes an object ({}): OpenAI's arguments are an object.
    return (
        tool.parameters
        if tool.parameters.get("properties") or tool.parameters.get("type")
        else {"type": "object"}
    )


def parse_call(text: str, tools: Sequence[Tool]) -> tuple[str, str] | None:
    """The (name, arguments JSON text) of the one tool call ``text`` is, or None if it is not a
    call to one of ``tools``: a bare ``{"name", "arguments"}`` object (ours, Llama 3.1's with
    ``parameters``) or one inside ``<tool_call>`` tags (Qwen, Hermes)."""
    body = text.strip()
    # Found with str.find, not a regex: r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)" backtracked
    # quadratically over white space with no closing tag (20,000 spaces: 5 s; a model looping on
    # a 16-space token to max_tokens: hours), in the worker, holding the model.
    start = body.find("<tool_call>")
    if start >= 0:
        body = body[start + len("<tool_call>") :]
        end = body.find("</tool_call>")
        body = (body if end < 0 else body[:end]).strip()
    try:
        call = json.loads(body)
    except ValueError:
        return None
    if not isinstance(call, dict) or call.get("name") not in {t.name for t in tools}:
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        return call["name"], arguments
    return call["name"], json.dumps(arguments, ensure_ascii=False)


def may_be_call(text: str, template_tools: bool) -> bool:
    """Whether an answer that begins with ``text`` may still turn out to be a tool call (so
    its text is held back, not streamed)."""
    head = text.lstrip()
    if not head:
        return True
    if head.startswith("{"):
        return True
    return template_tools and ("<tool_call>".startswith(head) or head.startswith("<tool_call>"))


def _openai_message(m: Message) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        wire["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.role == "tool":
        wire["tool_call_id"] = m.tool_call_id
    if m.name:
        wire["name"] = m.name
    return wire


def _openai_tool(t: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": t.name, "description": t.description, "parameters": dict(_arguments_schema(t))},
    }


def _call_text(name: str, arguments: str) -> str:
    # The arguments are the JSON text the model once wrote: kept as written, even if invalid.
    return f'{{"name": {json.dumps(name)}, "arguments": {arguments or "{}"}}}'


def _plain_messages(messages: Sequence[Message], family: str) -> list[dict[str, str]]:
    """Role and content turns for a template that knows no tools: a call becomes its call
    object in the assistant's text, a tool result a user turn that names the tool."""
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    wire = []
    for m in messages:
        content = m.content
        if m.tool_calls:
            calls = "\n".join(_call_text(c.name, c.arguments) for c in m.tool_calls)
            content = f"{content}\n{calls}" if content else calls
        if m.role == "tool":
            wire.append(
                {
                    "role": "user",
                    "content": f"Result of {m.name or names.get(m.tool_call_id, 'the tool')}: {content}",
                }
            )
        else:
            wire.append({"role": m.role, "content": content})
    if family == "gemma":
        wire = _system_into_first_user(wire)
    return wire


def _system_into_first_user(wire: list[dict[str, str]]) -> list[dict[str, str]]:
    # Gemma has no system role: its own template puts the system text at the head of the first
    # user turn. llama-cpp-python's "gemma" format drops it, so it is moved here first.
    system = "\n\n".join(m["content"] for m in wire if m["role"] == "system")
    rest = [m for m in wire if m["role"] != "system"]
    if not system:
        return rest
    for i, m in enumerate(rest):
        if m["role"] == "user":
            rest[i] = {"role": "user", "content": f"{system}\n\n{m['content']}"}
            return rest
    return [{"role": "user", "content": system}, *rest]


def _with_tools_described(
    wire: list[dict[str, str]], tools: Sequence[Tool], forced: str, must: bool, family: str
) -> list[dict[str, str]]:
    listed = "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": _arguments_schema(t)})
        for t in tools
    )
    how = "To call a function, answer with only a JSON object: "
    how += '{"name": <function name>, "arguments": {<arguments>}}.'
    if forced:
        ask = f"Call the function {forced}."
    elif must:
        ask = "Call one of these functions."
    else:
        ask = "Call a function when it helps answer; otherwise answer in text."
    text = f"You can call these functions:\n{listed}\n\n{how} {ask}"
    if wire and wire[0]["role"] == "system":
        head = {"role": "system", "content": f"{wire[0]['content']}\n\n{text}"}
        wire = [head, *wire[1:]]
    else:
        wire = [{"role": "system", "content": text}, *wire]
    return _system_into_first_user(wire) if family == "gemma" else wire
