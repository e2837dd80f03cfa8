"""``openai``: forwards prompts to an OpenAI-compatible server (LM Studio, Ollama, vLLM,
llama_cpp.server, a Ray Serve deployment), so a whole inference cluster can sit behind the queue.

Configured in ``models.toml`` (see ``models.py``): a ``[servers.NAME]`` table with ``base_url``
and an optional API key (``api_key_env``, the name of an environment variable, or ``api_key``;
either way it stays in this file and this process, never in the log). The server's models are
found through ``GET /models`` and served here under ``prefix`` + their id.

Answers stream (server-sent events) into the result like a local model's. Connection failures
are retried with backoff (``RETRIES``); an answer of 401, 404 or 5xx, a stream that stops before
``[DONE]`` or a server that stays silent fails the job with a message saying which, and the
scheduler's retries take it from there.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from .base import ExecutorError, Job, ModelSpec, Output

RETRIES = (0.5, 1.0, 2.0)  # seconds between attempts to reach the server
TIMEOUT_S = 120.0  # the longest silence from a server, between chunks included
MAX_LINE = 1 << 20
PASSED = ("max_tokens", "temperature", "top_p", "seed", "stop")


class Server:
    """One OpenAI-compatible endpoint: ``base_url`` like ``http://host:8000/v1``."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = TIMEOUT_S) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ExecutorError(f"base_url {base_url!r} must look like http://host:port/v1")
        self.base_url = base_url.rstrip("/")
        self._scheme, self._host, self._port, self._path = (
            parts.scheme,
            parts.hostname,
            parts.port,
            parts.path,
        )
        self._key = api_key
        self._timeout = timeout

    def models(self) -> list[str]:
        """The ids of the server's models (``GET /models``). Raises ``ExecutorError``."""
        response = self._request("GET", "/models")
        try:
            return [str(m["id"]) for m in json.loads(response.read(MAX_LINE))["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ExecutorError(
                f"{self.base_url}/models answered something that is not a model list"
            ) from exc

    def stream(self, path: str, body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """POST ``body`` with ``stream: true``; the events, until ``[DONE]``."""
        response = self._request("POST", path, {**body, "stream": True})
        try:
            yield from self._events(response)
        finally:
            response.close()  # also when the caller stops early (a cancel)

    def _events(self, response: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
        events = 0
        while True:
            try:
                line = response.readline(MAX_LINE)
            except (OSError, http.client.HTTPException) as exc:
                raise ExecutorError(f"{self.base_url} stopped answering mid-stream ({exc})") from exc
            if not line:
                raise ExecutorError(
                    f"{self.base_url} closed the stream before it finished (after {events} chunks)"
                )
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError as exc:
                raise ExecutorError(f"{self.base_url} sent a chunk that is not JSON: {data[:80]!r}") from exc
            if isinstance(event, dict) and "error" in event:
                raise ExecutorError(f"{self.base_url} failed mid-stream: {_message(event)}")
            events += 1
            yield event

    def _request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> http.client.HTTPResponse:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        payload = json.dumps(body).encode() if body is not None else None
        for pause in (*RETRIES, None):
            kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = kind(self._host, self._port, timeout=self._timeout)
            try:
                conn.request(method, self._path + path, body=payload, headers=headers)
                response = conn.getresponse()
                break
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, garbage
                conn.close()
                if pause is None:
                    raise ExecutorError(f"cannot reach {self.base_url}: {exc}") from exc
                time.sleep(pause)
        if response.status == 200:
            return response
        detail = _message(_json(response.read(MAX_LINE)))
        reasons = {
            401: "refused the API key",
            403: "refused the request",
            404: "has no such model or endpoint",
        }
        reason = reasons.get(response.status, "failed")
        raise ExecutorError(f"{self.base_url} {reason} ({response.status}): {detail}")


class OpenAIExecutor:
    """Runs prompts on a remote OpenAI-compatible server."""

    def __init__(self) -> None:
        self._server: Server | None = None
        self._model = ""

    def load(self, spec: ModelSpec) -> None:
        """Check that the server answers and has the model."""
        options = spec.options
        self._server = Server(str(options.get("base_url", "")), api_key_from(options))
        self._model = str(options.get("remote_model") or spec.name)
        if self._model not in self._server.models():
            raise ExecutorError(f"{self._server.base_url} does not serve {self._model!r} (any more)")

    def run(self, job: Job, emit: Callable[[str], None], cancelled: Callable[[], bool]) -> Output:
        """Stream the answer from the server; stop reading when cancelled."""
        if self._server is None:
            raise ExecutorError("the openai executor was not loaded")
        body: dict[str, Any] = {"model": self._model, **{k: job.params[k] for k in PASSED if k in job.params}}
        chat = job.params.get("mode", "chat") == "chat"
        if chat:
            body["messages"] = [{"role": "user", "content": job.input}]
        else:
            body["prompt"] = job.input
        parts: list[str] = []
        usage: dict[str, Any] = {}
        for event in self._server.stream("/chat/completions" if chat else "/completions", body):
            choice = (event.get("choices") or [{}])[0]
            text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            if text:
                parts.append(text)
                emit(text)
            if isinstance(event.get("usage"), dict):
                usage = event["usage"]
            if cancelled():
                break
        return Output(
            text="".join(parts),
            usage={"completion_tokens": len(parts), **usage, "server": self._server.base_url},
        )

    def unload(self) -> None:
        """Nothing is held but the address."""
        self._server = None


def api_key_from(options: Mapping[str, Any]) -> str | None:
    """The API key of a server's options: ``api_key_env`` names an environment variable."""
    if options.get("api_key_env"):
        return os.environ.get(str(options["api_key_env"])) or None
    return str(options["api_key"]) if options.get("api_key") else None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:200]


def _message(found: Any) -> str:
    if isinstance(found, dict):
        error = found.get("error", found)
        if isinstance(error, dict):
            return str(error.get("message") or error)[:300]
        return str(error)[:300]
    return str(found)[:300] or "no detail"
