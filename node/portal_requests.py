"""Reading a portal request folder: ``request.yaml`` / ``request.json``, checked field by field.

Everything here treats the folder as untrusted input from another program: a request that is
not what the portal takes raises ``BadRequest`` (its message goes to ``error.txt``), never
anything else. In particular:

- the file's size is checked before it is read (``MAX_REQUEST_BYTES``), its bytes must be UTF-8;
- nesting is capped without a deep recursion: JSON's C decoder guards its own stack (a 50k-deep
  document raises ``RecursionError`` at ~1,000 levels, caught) and the result's depth is then
  measured by a walk that does not recurse; YAML is composed by a safe loader whose
  ``compose_node`` counts its own depth and stops at ``MAX_DEPTH`` (PyYAML's composer recurses
  once per level, so it never gets deep). YAML anchors and aliases are refused:
  no request needs them, and they are how a small file becomes a huge document;
- every field has its type checked: ``params`` a mapping of names to scalars, ``priority`` and
  ``max_attempts`` finite integers in range (``priority: .inf`` is a float), ``messages`` a list
  of ``{role, content}`` texts, ``files`` a list of names.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from syncq.blobs import MAX_FILES
from syncq.errors import UserError
from syncq.records import ATTEMPTS_RANGE, PRIORITY_RANGE, messages_input

MAX_REQUEST_BYTES = 1 << 20  # request.yaml / request.json
MAX_FOLDER_BYTES = 512 << 20  # everything in one request folder
MAX_FOLDER_ENTRIES = 10_000  # files and folders in one request folder
MAX_DEPTH = 32  # nesting of a request document: a chat is 3 levels deep
FIELDS = frozenset({"model", "prompt", "messages", "params", "priority", "max_attempts", "files"})


class BadRequest(UserError):
    """A request folder the portal cannot take; the message goes to error.txt."""


def safe_name(name: str) -> str:
    """``name`` as UTF-8 text: bytes that are not UTF-8 (a folder named ``b"\\xff\\xfe"``)
    become ``\\xff\\xfe``, so the name can be written to a file, a log and the errors/ folder."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def read_request(folder: Path, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The request in ``folder`` with the portal's defaults under it. Raises ``BadRequest``."""
    if folder.is_symlink() or not folder.is_dir():
        raise BadRequest("a request must be a folder, not a file or a symbolic link")
    if safe_name(folder.name) != folder.name:
        raise BadRequest("the folder's name is not valid UTF-8: give it a name in UTF-8")
    files = [folder / "request.yaml", folder / "request.json"]
    found = [f for f in files if f.exists() or f.is_symlink()]
    if not found:
        raise BadRequest("no request.yaml or request.json in the folder")
    if len(found) > 1:
        raise BadRequest("both request.yaml and request.json: keep one")
    check_folder(folder)
    request = parse(found[0])
    params = request.get("params", {})
    if not isinstance(params, dict):
        raise BadRequest("params: must be a mapping (e.g. {max_tokens: 64})")
    merged = {**defaults, **request, "params": {**defaults.get("params", {}), **params}}
    merged.pop("files", None)  # a default list of files would name files of no request
    if "files" in request:
        merged["files"] = request["files"]
    check_request(merged)
    return merged


def check_folder(folder: Path) -> None:
    """Refuse symbolic links, and folders too large or with too many entries. Raises ``BadRequest``."""
    total = 0
    for n, path in enumerate(folder.rglob("*")):
        if n >= MAX_FOLDER_ENTRIES:
            raise BadRequest(f"the folder holds more than {MAX_FOLDER_ENTRIES} files and folders")
        if path.is_symlink():
            name = safe_name(str(path.relative_to(folder)))
            raise BadRequest(f"{name} is a symbolic link: copy the file in instead")
        total += path.stat().st_size if path.is_file() else 0
        if total > MAX_FOLDER_BYTES:
            raise BadRequest(f"the folder holds more than {MAX_FOLDER_BYTES >> 20} MiB")


def parse(path: Path) -> dict[str, Any]:
    """The mapping in a request (or defaults) file, within the size and depth limits. Raises
    ``BadRequest``."""
    if path.is_symlink() or not path.is_file():
        raise BadRequest(f"{path.name} must be a plain file")
    if path.stat().st_size > MAX_REQUEST_BYTES:
        raise BadRequest(f"{path.name} is larger than {MAX_REQUEST_BYTES >> 10} KiB")
    try:
        text = path.read_bytes()[: MAX_REQUEST_BYTES + 1].decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{path.name} is not UTF-8 text (byte {exc.start} is not)") from exc
    if len(text) > MAX_REQUEST_BYTES:
        raise BadRequest(f"{path.name} is larger than {MAX_REQUEST_BYTES >> 10} KiB")
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        data = _load_json(text) if kind == "JSON" else _load_yaml(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise BadRequest(f"{path.name} is not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest(f"{path.name} must hold a mapping (model: ..., prompt: ...)")
    return data


def _load_json(text: str) -> Any:
    # The C decoder guards its own recursion (RecursionError at ~1,000 levels, no stack blown);
    # the cap is then checked on the result, by a walk that does not recurse either. (A regex
    # that strips strings to count brackets first was quadratic on '"\\"\\"...': not that.)
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    if _depth(data) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    return data


def _depth(data: Any) -> int:
    """How deeply lists and mappings nest in ``data`` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:  # past the cap the answer is known: no need to look deeper
            stack.extend((child, level + 1) for child in children)
    return deepest


class _CappedLoader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]  # PyYAML has no stubs here
    """PyYAML's safe loader with the nesting capped: ``compose_node`` recurses once per level,
    so it counts, and refuses anchors and aliases."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # PyYAML's hook
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
            raise yaml.YAMLError("anchors and aliases (& and *) are not allowed in a request")
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _load_yaml(text: str) -> Any:
    loader = _CappedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def check_request(request: Mapping[str, Any]) -> None:
    """The type and range of every field. Raises ``BadRequest``."""
    unknown = sorted(map(str, set(request) - FIELDS))
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}; a request has {', '.join(sorted(FIELDS))}")
    if not isinstance(request.get("model"), str) or not request["model"]:
        raise BadRequest("model: is missing (the name of a model, e.g. gemma3-270m)")
    if "prompt" in request and "messages" in request:
        raise BadRequest("give either prompt: (text) or messages: (a list of {role, content}), not both")
    if "prompt" not in request and "messages" not in request and not request.get("files"):
        raise BadRequest("give either prompt: (text) or messages: (a list of {role, content})")
    if "prompt" in request and not isinstance(request["prompt"], str):
        raise BadRequest("prompt: must be text")
    if "messages" in request:
        _check_messages(request["messages"])
    _check_params(request.get("params"))
    _check_int(request, "priority", PRIORITY_RANGE)
    _check_int(request, "max_attempts", ATTEMPTS_RANGE)


def _check_messages(messages: object) -> None:
    fine = (
        isinstance(messages, list)
        and bool(messages)
        and all(
            isinstance(m, dict)
            and set(m) <= {"role", "content"}
            and all(isinstance(v, str) for v in m.values())
            for m in messages
        )
    )
    if not fine:
        raise BadRequest("messages: must be a non-empty list of {role, content} (both text)")


def _check_params(params: object) -> None:
    if not isinstance(params, dict):
        raise BadRequest("params: must be a mapping (e.g. {max_tokens: 64})")
    for key, value in params.items():
        if not isinstance(key, str):
            raise BadRequest(f"params: the name {key!r} must be text")
        if not (isinstance(value, str | int | float | bool) or value is None):
            raise BadRequest(f"params: {key} must be a string, number, boolean or null (not a list)")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRequest(f"params: {key} must be a finite number")


def _check_int(request: Mapping[str, Any], field: str, allowed: range) -> None:
    if field not in request:
        return
    value = request[field]
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{field}: must be a whole number from {allowed.start} to {allowed.stop - 1}")
    if value not in allowed:
        raise BadRequest(f"{field}: {value} is out of range ({allowed.start} to {allowed.stop - 1})")


def attachments(folder: Path, request: Mapping[str, Any]) -> list[Path]:
    """The files the request attaches (``files:``), checked. Raises ``BadRequest``."""
    names = request.get("files", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise BadRequest("files: must be a list of file names in the request folder (e.g. [talk.wav])")
    if len(names) > MAX_FILES:
        raise BadRequest(f"files: at most {MAX_FILES} files per request ({len(names)} given)")
    paths = [_attachment(folder, name) for name in names]
    seen: set[str] = set()
    for path in paths:
        if path.name in seen:
            raise BadRequest(f"files: two files are named {path.name!r}; attachments need distinct names")
        seen.add(path.name)
    return paths


def _attachment(folder: Path, name: str) -> Path:
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or "\\" in name:
        raise BadRequest(f"files: {name!r} must be a relative path inside the request folder, without ..")
    path = folder.joinpath(*relative.parts)
    for step in [*reversed(path.relative_to(folder).parents), path.relative_to(folder)]:
        if (folder / step).is_symlink():
            raise BadRequest(f"files: {name!r} is a symbolic link: copy the file in instead")
    if not path.is_file():
        raise BadRequest(f"files: {name!r} is not a file in the request folder")
    return path


def prompt_text(request: Mapping[str, Any]) -> str:
    """The prompt's input: the text, or the messages as a transcript the LLM executor reads
    (or nothing, for a request whose files are the input). Raises ``InvalidInput``."""
    if "prompt" in request:
        return str(request["prompt"])
    return messages_input(request["messages"]) if "messages" in request else ""
