"""The typed records kept in the CRDT log, and their wire form (DESIGN.md section 5).

Each record is stored as one immutable value under one key of a root map: a compact JSON text
(``encode``) rather than the plain dict DESIGN.md names. Measured with 100k prompts: the Doc
takes 113 MB instead of 222 MB, loads in 0.21 s instead of 0.35 s, and numbers keep their type
(pycrdt hands every number in a dict back as a float). Reading goes through ``decode`` and
``from_wire``, which check every field: the log is written by other devices, perhaps newer or
broken ones.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from syncq.blobs import MAX_FILES, BlobRef
from syncq.chat import MAX_LOGPROBS, LlmInput, TokenLogprob, ToolCall
from syncq.errors import InvalidInput, MalformedRecord
from syncq.ids import DeviceId, PromptId, is_prompt_id

ParamValue: TypeAlias = str | int | float | bool | None
Wire: TypeAlias = dict[str, Any]

MAX_INPUT_BYTES = 256 * 1024  # longer inputs belong in attachments
MAX_PARAMS = 64
MAX_TEXT_BYTES = 4 * 1024 * 1024  # outputs and errors
MAX_CALLS = 128  # tool calls kept of one run
FINISHES = ("stop", "length", "tool_calls")
PRIORITY_RANGE = range(-1000, 1001)
ATTEMPTS_RANGE = range(1, 101)
_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
_PARAM_RE = re.compile(r"[a-z_][a-z0-9_]{0,63}")


class PromptKind(enum.StrEnum):
    """What kind of model a prompt is for."""

    LLM = "llm"
    ASR = "asr"
    IMAGE = "image"


class RunStatus(enum.StrEnum):
    """How one run of a prompt ended."""

    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Prompt:
    """A prompt as queued by a user: immutable once written."""

    id: PromptId
    model: str
    kind: PromptKind
    input: str
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    created_at: int  # milliseconds since the epoch, on the author's clock
    author: DeviceId
    priority: int = 0
    max_attempts: int = 3
    files: tuple[BlobRef, ...] = ()  # attachments (input audio, images...)
    # A conversation, tools, an output format, stop strings, texts to embed (``syncq.chat``).
    llm: LlmInput | None = None

    def to_wire(self) -> Wire:
        """The dict stored under ``prompts[id]``."""
        wire: Wire = {
            "model": self.model,
            "kind": self.kind.value,
            "input": self.input,
            "params": dict(self.params),
            "created_at": self.created_at,
            "author": self.author,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
        }
        if self.files:  # absent rather than empty: prompts without files stay as they were
            wire["files"] = [f.to_wire() for f in self.files]
        if self.llm is not None:  # absent too: older nodes read the prompt's text alone
            wire["llm"] = self.llm.to_wire()
        return wire

    @classmethod
    def from_wire(cls, key: str, wire: object) -> Prompt:
        """Check and convert a stored dict. Raises ``MalformedRecord``."""
        w = _mapping(wire)
        if not is_prompt_id(key):
            raise MalformedRecord(f"bad prompt id {key!r}")
        try:
            kind = PromptKind(_str(w, "kind"))
        except ValueError as exc:
            raise MalformedRecord(f"unknown prompt kind in {key}") from exc
        return cls(
            id=PromptId(key),
            model=_str(w, "model"),
            kind=kind,
            input=_str(w, "input"),
            params=_object(w, "params"),
            created_at=_int(w, "created_at"),
            author=DeviceId(_str(w, "author")),
            priority=_int(w, "priority"),
            max_attempts=_int(w, "max_attempts"),
            files=_files(w),
            llm=LlmInput.from_wire(w["llm"]) if "llm" in w else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    """A request to cancel a prompt (``cancels[prompt_id]``)."""

    prompt_id: PromptId
    by: DeviceId
    at: int

    def to_wire(self) -> Wire:
        """The dict stored under ``cancels[prompt_id]``."""
        return {"by": self.by, "at": self.at}

    @classmethod
    def from_wire(cls, key: str, wire: object) -> Cancel:
        """Check and convert a stored dict. Raises ``MalformedRecord``."""
        w = _mapping(wire)
        return cls(prompt_id=PromptId(key), by=DeviceId(_str(w, "by")), at=_int(w, "at"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """A request to run a failed prompt again (``retries[prompt_id]``), up to ``max_attempts``
    runs in all."""

    prompt_id: PromptId
    by: DeviceId
    at: int
    max_attempts: int

    def to_wire(self) -> Wire:
        """The record stored under ``retries[prompt_id]``."""
        return {"by": self.by, "at": self.at, "max_attempts": self.max_attempts}

    @classmethod
    def from_wire(cls, key: str, wire: object) -> Retry:
        """Check and convert a stored record. Raises ``MalformedRecord``."""
        w = _mapping(wire)
        return cls(
            prompt_id=PromptId(key),
            by=DeviceId(_str(w, "by")),
            at=_int(w, "at"),
            max_attempts=_int(w, "max_attempts"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """One node's claim on a prompt (``claims[prompt_id/node]``); rewritten on each heartbeat."""

    prompt_id: PromptId
    node: DeviceId
    attempt: int
    heartbeat: int  # a counter: observers judge staleness by when they last saw it change
    running: bool = False

    @property
    def key(self) -> str:
        """The key under ``claims``."""
        return f"{self.prompt_id}/{self.node}"

    def to_wire(self) -> Wire:
        """The dict stored under ``claims[key]``."""
        return {
            "node": self.node,
            "attempt": self.attempt,
            "heartbeat": self.heartbeat,
            "running": self.running,
        }

    @classmethod
    def from_wire(cls, key: str, wire: object) -> Claim:
        """Check and convert a stored dict. Raises ``MalformedRecord``."""
        w = _mapping(wire)
        claim = cls(
            prompt_id=PromptId(key.split("/", 1)[0]),
            node=DeviceId(_str(w, "node")),
            attempt=_int(w, "attempt"),
            heartbeat=_int(w, "heartbeat"),
            running=_bool(w, "running"),
        )
        return _keyed(claim, key)


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """The outcome of one run (``results[prompt_id/node/attempt]``): duplicates sit side by side."""

    prompt_id: PromptId
    node: DeviceId
    node_name: str
    attempt: int
    status: RunStatus
    output: str = ""
    error: str | None = None
    started_at: int
    finished_at: int
    usage: Mapping[str, ParamValue] = field(default_factory=dict)
    observer: DeviceId | None = None  # set when another node recorded this run's lease expiry
    files: tuple[BlobRef, ...] = ()  # output attachments (images, transcripts)
    # False for a run that showed its node can never run the model (the worker died by
    # SIGILL): it is not one of ``max_attempts``, so another node may still take the prompt.
    # Stored only when False; a node of an older version reads it as an ordinary failure.
    counts: bool = True
    # Why generation ended: "stop", "length" (max_tokens) or "tool_calls"; "" where the backend
    # does not say (older nodes, non-llm models). Stored only when set.
    finish: str = ""
    tool_calls: tuple[ToolCall, ...] = ()  # the model's calls, in order; stored only when made
    logprobs: tuple[TokenLogprob, ...] = ()  # per token, when the prompt asked; stored only then

    @property
    def key(self) -> str:
        """The key under ``results``; an observer's record has its own key, so it never
        overwrites what the run's own node writes."""
        base = f"{self.prompt_id}/{self.node}/{self.attempt}"
        return f"{base}/lease-{self.observer}" if self.observer else base

    def to_wire(self) -> Wire:
        """The dict stored under ``results[key]``."""
        wire: Wire = {
            "node": self.node,
            "node_name": self.node_name,
            "attempt": self.attempt,
            "status": self.status.value,
            "output": self.output,
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "usage": dict(self.usage),
            "observer": self.observer,
        }
        if self.files:
            wire["files"] = [f.to_wire() for f in self.files]
        if not self.counts:
            wire["counts"] = False
        if self.finish:
            wire["finish"] = self.finish
        if self.tool_calls:
            wire["tool_calls"] = [c.to_wire() for c in self.tool_calls]
        if self.logprobs:
            wire["logprobs"] = [t.to_wire() for t in self.logprobs]
        return wire

    @classmethod
    def from_wire(cls, key: str, wire: object) -> Result:
        """Check and convert a stored dict. Raises ``MalformedRecord``."""
        w = _mapping(wire)
        try:
            status = RunStatus(_str(w, "status"))
        except ValueError as exc:
            raise MalformedRecord(f"unknown run status in {key}") from exc
        error = w.get("error")
        if error is not None and not isinstance(error, str):
            raise MalformedRecord(f"field 'error' of {key} is not text")
        observer = w.get("observer")
        if observer is not None and not isinstance(observer, str):
            raise MalformedRecord(f"field 'observer' of {key} is not text")
        result = cls(
            prompt_id=PromptId(key.split("/", 1)[0]),
            node=DeviceId(_str(w, "node")),
            node_name=_str(w, "node_name"),
            attempt=_int(w, "attempt"),
            status=status,
            output=_str(w, "output"),
            error=error,
            started_at=_int(w, "started_at"),
            finished_at=_int(w, "finished_at"),
            usage=_object(w, "usage"),
            observer=DeviceId(observer) if observer else None,
            files=_files(w),
            counts=_bool(w, "counts") if "counts" in w else True,
            finish=_str(w, "finish") if "finish" in w else "",
            tool_calls=tuple(ToolCall.from_wire(c) for c in _list(w, "tool_calls")[:MAX_CALLS]),
            logprobs=tuple(TokenLogprob.from_wire(t) for t in _list(w, "logprobs")[:MAX_LOGPROBS]),
        )
        return _keyed(result, key)


@dataclass(frozen=True, slots=True, kw_only=True)
class Device:
    """A member device of the space (``devices[device_id]``)."""

    id: DeviceId
    name: str
    x25519: str  # hex public key, to seal new epoch secrets to this device
    added_by: DeviceId
    added_at: int
    removed: bool = False

    def to_wire(self) -> Wire:
        """The dict stored under ``devices[id]``."""
        return {
            "name": self.name,
            "x25519": self.x25519,
            "added_by": self.added_by,
            "added_at": self.added_at,
            "removed": self.removed,
        }

    @classmethod
    def from_wire(cls, key: str, wire: object) -> Device:
        """Check and convert a stored dict. Raises ``MalformedRecord``."""
        w = _mapping(wire)
        return cls(
            id=DeviceId(key),
            name=_str(w, "name"),
            x25519=_str(w, "x25519"),
            added_by=DeviceId(_str(w, "added_by")),
            added_at=_int(w, "added_at"),
            removed=_bool(w, "removed"),
        )


def encode(wire: Wire) -> str:
    """The stored form of a record: compact JSON with sorted keys."""
    return json.dumps(wire, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def decode(stored: object) -> Wire:
    """Parse a stored value. Raises ``MalformedRecord`` if it is not a JSON object."""
    if not isinstance(stored, str):
        raise MalformedRecord(f"expected JSON text, got {type(stored).__name__}")
    if not stored.startswith("{"):
        # What ``encode`` writes starts with "{"; json.loads would also take leading whitespace,
        # which ``syncq.authorship`` (the writer check before applying) must then also read.
        # One rule for both: a value that does not start with "{" is no record.
        raise MalformedRecord("stored value is not a JSON object")
    try:
        wire = json.loads(stored)
    except ValueError as exc:
        raise MalformedRecord("stored value is not JSON") from exc
    except RecursionError as exc:  # json.loads recurses once per level; another device nested it
        raise MalformedRecord("stored value nests too deep") from exc
    if not isinstance(wire, dict):
        raise MalformedRecord("stored value is not a JSON object")
    return wire


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """A running node's presence (``nodes[node_id]``), rewritten at most once a minute."""

    id: DeviceId
    name: str
    version: str
    last_seen: int  # ms, on the node's own clock
    listen: str = ""
    models: tuple[ModelAd, ...] = ()

    def to_wire(self) -> Wire:
        """The record stored under ``nodes[id]``."""
        return {
            "node": self.id,  # the writer: PROTOCOL.md "CRDT schema", syncq.authorship
            "name": self.name,
            "version": self.version,
            "last_seen": self.last_seen,
            "listen": self.listen,
            "models": [m.to_wire() for m in self.models],
        }

    @classmethod
    def from_wire(cls, key: str, wire: object) -> NodeInfo:
        """Check and convert a stored record. Raises ``MalformedRecord``."""
        w = _mapping(wire)
        if w.get("node", key) != key:
            raise MalformedRecord(f"presence under {key[:12]} names another node")
        return cls(
            id=DeviceId(key),
            name=_str(w, "name"),
            version=_str(w, "version"),
            last_seen=_int(w, "last_seen"),
            listen=_str(w, "listen"),
            models=tuple(ModelAd.from_wire(m) for m in _list(w, "models")),
        )

    def serving(self) -> tuple[ModelAd, ...]:
        """The models the node can run: those it advertises, less those it found unusable."""
        return tuple(m for m in self.models if not m.unusable)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelAd:
    """A model a node serves, as advertised in its presence record."""

    name: str
    backend: str
    loaded: bool
    size: int
    # Why the node can no longer run it (its worker died by SIGILL), until the node restarts;
    # empty while it serves the model. Stored only when set.
    unusable: str = ""

    def to_wire(self) -> Wire:
        """The dict inside ``nodes[id].models``."""
        wire: Wire = {"name": self.name, "backend": self.backend, "loaded": self.loaded, "size": self.size}
        if self.unusable:
            wire["unusable"] = self.unusable
        return wire

    @classmethod
    def from_wire(cls, wire: object) -> ModelAd:
        """Check and convert. Raises ``MalformedRecord``."""
        w = _mapping(wire)
        return cls(
            name=_str(w, "name"),
            backend=_str(w, "backend"),
            loaded=_bool(w, "loaded"),
            size=_int(w, "size"),
            unusable=_str(w, "unusable") if "unusable" in w else "",
        )


# -- validation of user input (raises InvalidInput, with a message fit to print) ---------------


def messages_input(messages: object) -> str:
    """A chat's messages (``[{role, content}, ...]``) as one prompt input: the user's turns, one
    per line (the LLM executor applies the chat template). Raises ``InvalidInput``."""
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
    ):
        raise InvalidInput("messages must be a non-empty list of {role, content}")
    user = [m["content"] for m in messages if m.get("role", "user") == "user"]
    return "\n".join(user) or str(messages[-1]["content"])


def check_prompt_input(text: str, *, files: int = 0) -> str:
    """Refuse an empty (unless files carry the input) or oversized prompt. Raises ``InvalidInput``."""
    if not text.strip() and not files:
        raise InvalidInput("the prompt is empty: give some text (or - to read it from stdin)")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate: JSON's "\ud800" escape decodes to one
        raise InvalidInput("the prompt is not valid Unicode text (a lone surrogate)") from exc
    if size > MAX_INPUT_BYTES:
        raise InvalidInput(
            f"the prompt is {size} bytes; the limit is {MAX_INPUT_BYTES} (attach large inputs as files)"
        )
    return text


def check_model(name: str) -> str:
    """Refuse a malformed model name. Raises ``InvalidInput``."""
    if not _MODEL_RE.fullmatch(name):
        raise InvalidInput(
            f"{name!r} is not a model name: use letters, digits and . _ : / @ + - (at most 128)"
        )
    return name


def check_priority(priority: int) -> int:
    """Refuse a priority outside -1000..1000. Raises ``InvalidInput``."""
    if priority not in PRIORITY_RANGE:
        raise InvalidInput(f"priority {priority} is out of range (-1000 to 1000)")
    return priority


def check_max_attempts(attempts: int) -> int:
    """Refuse a max_attempts outside 1..100. Raises ``InvalidInput``."""
    if attempts not in ATTEMPTS_RANGE:
        raise InvalidInput(f"max attempts {attempts} is out of range (1 to 100)")
    return attempts


def parse_param(text: str) -> tuple[str, ParamValue]:
    """Parse ``key=value``; the value is read as JSON when it is a JSON scalar, else as text.

    ``temperature=0.7`` gives a float, ``seed=42`` an int, ``stop=###`` a string,
    ``stream=true`` a bool. Raises ``InvalidInput``.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise InvalidInput(f"--param {text!r} must look like key=value")
    if not _PARAM_RE.fullmatch(key):
        raise InvalidInput(f"--param name {key!r} must be lower-case letters, digits and _")
    try:
        value = json.loads(raw)
    except ValueError:
        return key, raw
    if isinstance(value, float) and value != value:  # NaN
        raise InvalidInput(f"--param {key} must be a finite number")
    if isinstance(value, dict | list):
        return key, raw
    return key, value if isinstance(value, str | int | float | bool) or value is None else raw


# Parameters every executor of a kind understands, with their checks. ``keep_alive`` (seconds
# to keep the model loaded after this prompt) is the manager's; ``delay``, ``fail``, ``crash``
# and ``hang`` are the echo executor's test knobs.
TEST_KNOBS = frozenset({"delay", "fail", "crash", "hang"})  # echo's: never suggested to a user
CRASH_SIGNALS = ("SIGILL", "SIGSEGV", "SIGKILL")


def _number(low: float, high: float) -> Callable[[ParamValue], bool]:
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high


def _whole(low: int, high: int) -> Callable[[ParamValue], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _eighths(high: int) -> Callable[[ParamValue], bool]:
    # image sizes: the VAE halves the picture three times
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= high and v % 8 == 0


COMMON_PARAMS: dict[str, tuple[Callable[[ParamValue], bool], str]] = {
    "keep_alive": (_number(0, 7 * 24 * 3600), "seconds, 0 to 604800"),
    "delay": (_number(0, 3600), "seconds, 0 to 3600"),
    "fail": (lambda v: isinstance(v, str), "an error message"),
    "crash": (lambda v: isinstance(v, bool) or v in CRASH_SIGNALS, "true, or SIGILL, SIGSEGV or SIGKILL"),
    "hang": (_number(0, 3600), "seconds, 0 to 3600"),
}
LLM_PARAMS: dict[str, tuple[Callable[[ParamValue], bool], str]] = {
    **COMMON_PARAMS,
    "max_tokens": (_whole(1, 32768), "a whole number from 1 to 32768"),
    "temperature": (_number(0, 5), "a number from 0 to 5"),
    "top_p": (_number(0, 1), "a number from 0 to 1"),
    "top_k": (_whole(0, 1000), "a whole number from 0 to 1000"),
    "seed": (_whole(0, 2**32 - 1), "a whole number from 0 to 4294967295"),
    "stop": (lambda v: isinstance(v, str) and 0 < len(v) <= 64, "text of 1 to 64 characters"),
    "mode": (lambda v: v in ("chat", "complete", "embed"), "chat, complete or embed"),
    "repeat_penalty": (_number(0, 5), "a number from 0 to 5"),
    "frequency_penalty": (_number(-2, 2), "a number from -2 to 2"),
    "presence_penalty": (_number(-2, 2), "a number from -2 to 2"),
    "min_p": (_number(0, 1), "a number from 0 to 1"),
    "logprobs": (lambda v: isinstance(v, bool), "true or false"),
    "top_logprobs": (_whole(0, 20), "a whole number from 0 to 20"),
}
ASR_PARAMS: dict[str, tuple[Callable[[ParamValue], bool], str]] = {
    **COMMON_PARAMS,
    "language": (lambda v: isinstance(v, str) and 2 <= len(v) <= 8, "a language code such as en"),
    "task": (lambda v: v in ("transcribe", "translate"), "transcribe or translate"),
    "vad_filter": (lambda v: isinstance(v, bool), "true or false"),
}
IMAGE_PARAMS: dict[str, tuple[Callable[[ParamValue], bool], str]] = {
    **COMMON_PARAMS,
    "width": (_eighths(8192), "a multiple of 8 from 8 to 8192"),
    "height": (_eighths(8192), "a multiple of 8 from 8 to 8192"),
    "steps": (_whole(1, 500), "a whole number from 1 to 500"),
    "guidance": (_number(0, 50), "a number from 0 to 50"),
    "seed": (_whole(0, 2**32 - 1), "a whole number from 0 to 4294967295"),
    "negative_prompt": (lambda v: isinstance(v, str) and len(v) <= 2000, "text of at most 2000 characters"),
}
SCHEMAS = {PromptKind.LLM: LLM_PARAMS, PromptKind.ASR: ASR_PARAMS, PromptKind.IMAGE: IMAGE_PARAMS}


def check_params(
    params: Mapping[str, ParamValue], kind: PromptKind = PromptKind.LLM, *, guessed_for: str | None = None
) -> dict[str, ParamValue]:
    """Refuse unknown parameters, bad names and bad values for the kind. ``guessed_for`` names
    the model when ``kind`` is a guess (no node advertised the model here yet), which the
    message for an unknown parameter then says. Raises ``InvalidInput``."""
    if len(params) > MAX_PARAMS:
        raise InvalidInput(f"too many parameters ({len(params)}; the limit is {MAX_PARAMS})")
    schema = SCHEMAS[kind]
    for key, value in params.items():
        if not _PARAM_RE.fullmatch(key):
            raise InvalidInput(f"parameter name {key!r} must be lower-case letters, digits and _")
        if not (isinstance(value, str | int | float | bool) or value is None):
            raise InvalidInput(f"parameter {key} must be a string, number, boolean or null")
        if key not in schema:
            raise InvalidInput(_unknown_param(key, kind, guessed_for))
        valid, expected = schema[key]
        if not valid(value):
            raise InvalidInput(f"parameter {key}={value!r} is invalid: expected {expected}")
    return dict(params)


def _unknown_param(key: str, kind: PromptKind, guessed_for: str | None) -> str:
    known = ", ".join(sorted(set(SCHEMAS[kind]) - TEST_KNOBS))
    elsewhere = [other for other, schema in SCHEMAS.items() if other is not kind and key in schema]
    if guessed_for is None:
        hint = f"; it is a parameter of {elsewhere[0]} prompts" if elsewhere else ""
        return f"unknown parameter {key!r} for {kind} prompts (known: {known}){hint}"
    guess = (
        f"unknown parameter {key!r} for {kind} prompts: the kind is a guess, as no node here has "
        f"advertised model {guessed_for!r} yet"
    )
    if elsewhere:
        return f"{guess}; for an {elsewhere[0]} model add --kind {elsewhere[0]}"
    return f"{guess} (known for {kind}: {known}; or give --kind)"


# -- field readers for from_wire (raise MalformedRecord) --------------------------------------


_Keyed = TypeVar("_Keyed", "Claim", "Result")


def _keyed(record: _Keyed, key: str) -> _Keyed:
    # A record under another's key (a member overwrote it naming itself) is not that one's.
    if record.key != key:
        raise MalformedRecord(f"record under {key[:40]!r} does not match its key")
    return record


def _mapping(wire: object) -> Mapping[str, Any]:
    if not isinstance(wire, Mapping):
        raise MalformedRecord(f"expected a dict, got {type(wire).__name__}")
    return wire


def _str(w: Mapping[str, Any], name: str) -> str:
    value = w.get(name)
    if not isinstance(value, str):
        raise MalformedRecord(f"field {name!r} is not text")
    return value


def _bool(w: Mapping[str, Any], name: str) -> bool:
    value = w.get(name, False)
    if not isinstance(value, bool):
        raise MalformedRecord(f"field {name!r} is not a boolean")
    return value


def _int(w: Mapping[str, Any], name: str) -> int:
    value = w.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedRecord(f"field {name!r} is not a whole number")
    return value


def _list(w: Mapping[str, Any], name: str) -> list[Any]:
    value = w.get(name, [])
    if not isinstance(value, list):
        raise MalformedRecord(f"field {name!r} is not a list")
    return value


def _files(w: Mapping[str, Any]) -> tuple[BlobRef, ...]:
    files = _list(w, "files")
    if len(files) > MAX_FILES:
        raise MalformedRecord(f"more than {MAX_FILES} files")
    return tuple(BlobRef.from_wire(f) for f in files)


def _object(w: Mapping[str, Any], name: str) -> dict[str, ParamValue]:
    value = w.get(name)
    if not isinstance(value, dict):
        raise MalformedRecord(f"field {name!r} is not an object")
    return value
