"""The node's log: quiet lines for people, or one JSON object per line (``--json-log``)."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

_HUMAN = {
    "listening": "listening on {url} as {name} ({node:.12})",
    "serving": "serving models: {models}",
    "peer-connected": "connected to {peer}",
    "peer-disconnected": "disconnected from {peer}: {reason}",
    "peer-failed": "closed the session with {peer}: {reason} ({code})",
    "peer-closed": "{peer} closed the session: {reason} ({code})",
    "store-failed": "cannot store envelopes: {reason}",
    "discovered": "found {url} on the local network",
    "discovery-off": "no LAN discovery: {reason}",
    "dial-failed": "cannot talk to {url}: {reason}",
    "stopped": "stopped",
    "running": "running {prompt} on {model} (attempt {attempt})",
    "finished": "finished {prompt}: {status}",
    "failed": "finished {prompt}: failed: {error}",
    "model-unusable": "stopped serving {model}: {reason}",
    "model-loaded": "loaded {model}: {note}",
    "cancelled": "cancelled {prompt}",
    "job-crashed": "a job failed inside the scheduler (a bug): {reason}",
    "lease-expired": "took over {prompt} from node {node:.12}, which stopped",
    "claim-void": "took over {prompt} from node {node:.12}, which was removed from the space",
    "api-listening": "web page and OpenAI-compatible API: {url}/  (API under {url}/v1)",
    "api-unavailable": "no HTTP API: {reason}",
    "api-without-key": "warning: the HTTP API asks no key ({reason}): every user of this machine can use it",
    "api-error": "HTTP API error (answered 500): {error}",
    "server-unreachable": "not serving the models of server {server}: {reason}",
    "portal": "file portal: {path}/inbox",
    "blobs-forgotten": "forgot {count} kept files nobody used for {days:g} days",
    "snapshot-written": "wrote a snapshot covering {envelopes} envelopes ({bytes} bytes)",
    "pruned": "dropped {envelopes} envelopes that snapshots cover",
    "blob-refused": "refused to keep a file for {peer}: {reason}",
    "portal-queued": "portal request {request} queued as {prompt}",
    "portal-delivered": "portal result of {prompt} in outbox ({status})",
    "portal-rejected": "portal request {request} refused: {reason}",
    "portal-failed": "portal request {request}: {reason}",
    "portal-defaults-ignored": "portal defaults.yaml ignored: {reason}",
    "portal-bug": "portal request {request} failed (a bug, sent to errors/): {reason}\n{traceback}",
    "portal-settling": "portal request {request} was copied in: waiting until it stops changing",
    "task-crashed": "the {task} task crashed (a bug), restarting in {delay:.1f} s: {reason}\n{traceback}",
    "task-restarted": "restarted the {task} task ({restarts} restarts so far)",
    "home-private": "made {count} files and folders of {home} readable by this user only",
    "job-failed": "background work {task} failed (a bug): {reason}\n{traceback}",
}


class NodeLog:
    """Writes node events to a stream (stdout by default), flushed line by line."""

    def __init__(self, *, json_lines: bool, verbose: bool = False, stream: TextIO | None = None) -> None:
        self.json_lines = json_lines
        self.verbose = verbose
        self.stream = stream or sys.stdout

    def event(self, kind: str, *, level: str = "info", **fields: object) -> None:
        """Log one event; ``debug`` events (one per batch received) only with ``verbose``."""
        if level == "debug" and not self.verbose:
            return
        if self.json_lines:
            record = {"t": round(time.time(), 3), "event": kind, "level": level, **fields}
            self.stream.write(json.dumps(record, default=str) + "\n")
        else:
            if kind == "finished" and fields.get("error"):
                kind = "failed"  # the error is the line's point: people read it here
            template = _HUMAN.get(kind)
            text = template.format(**_readable(fields)) if template else f"{kind} {fields}"
            text = printable(text)
            prefix = "error: " if level == "error" else ""
            self.stream.write(f"{time.strftime('%H:%M:%S')} {prefix}{text}\n")
        self.stream.flush()


def printable(text: str) -> str:
    """Control characters (from an error message, a model's output or a peer's name) escaped,
    so that no text can move the cursor, recolour or retitle a terminal; lines and tabs stay."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def one_line(text: str) -> str:
    """``printable``, and on one line: newlines (and tabs) escaped too, so that text from
    elsewhere (a peer's words, a folder's name) cannot forge a log line or a table row."""
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")


def _readable(fields: dict[str, object]) -> dict[str, object]:
    """Lists as ``a, b, c`` for people (JSON lines keep them as lists), and every text on one
    line: a folder name, a peer's words or a model's error with a newline in it could otherwise
    forge a whole log line ("12:00:00 connected to laptop"). A traceback keeps its lines, each
    indented, so none of them can pass for an event."""
    readable: dict[str, object] = {}
    for key, value in fields.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "none"
        if isinstance(value, str):
            if key == "traceback":
                value = "\n".join("    " + line for line in value.splitlines())
            else:
                value = one_line(value)
        readable[key] = value
    return readable
