"""Real `syncq node` processes on 127.0.0.1, and bounded waits on conditions."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SYNCQ = str(Path(sys.executable).parent / "syncq")


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class NodeProcess:
    """A `syncq node --json-log` child process whose log events are collected as they come."""

    def __init__(self, home: Path, *args: str, port: int = 0, discovery: bool = False) -> None:
        self.home = home
        self.args = args
        self.port = port
        self.discovery = discovery
        self.events: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    def start(self) -> NodeProcess:
        env = {**os.environ, "SYNCQ_HOME": str(self.home)}
        self.events = []
        self.proc = subprocess.Popen(
            [
                SYNCQ,
                "node",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--json-log",
                *self._discovery(),
                # Tests run many nodes at once: none takes the API's fixed port unless asked.
                *([] if any(a.startswith("--api") for a in self.args) else ["--no-api"]),
                *self.args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        listening = self.wait_event("listening", timeout=30)
        self.port = int(listening["url"].rsplit(":", 1)[1])
        return self

    def _discovery(self) -> list[str]:
        # Only ever on loopback: tests send no traffic beyond this machine.
        return ["--discovery-interface", "127.0.0.1"] if self.discovery else ["--no-discovery"]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """The HTTP API's URL (once it listens)."""
        return str(self.wait_event("api-listening")["url"])

    @property
    def api_key(self) -> str:
        """The HTTP API's key: the home's own, as clients read it (``syncq api-key``)."""
        return api_key(self.home)

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _drain(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                continue
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"event": "output", "text": line})

    def find(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        self._drain()
        return [
            e for e in self.events if e.get("event") == kind and all(e.get(k) == v for k, v in fields.items())
        ]

    def wait_event(self, kind: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        def found() -> Any:
            if self.proc is not None and self.proc.poll() is not None:
                self._drain()
                raise AssertionError(f"node exited with {self.proc.returncode}: {self.events}")
            matches = self.find(kind, **fields)
            return matches[0] if matches else None

        return wait_until(found, timeout, f"{kind} {fields}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self._drain()
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def api_key(home: Path) -> str:
    """The key of the HTTP API of ``home``'s node."""
    import syncq

    return syncq.api_key(home)


def api_headers(home: Path, **more: str) -> dict[str, str]:
    """Headers that authenticate to ``home``'s API, with ``more``."""
    return {"Authorization": f"Bearer {api_key(home)}", **more}


def member(tmp_path: Path, first: Any, name: str) -> Path:
    """Another home of ``first``'s space (what `syncq join` makes)."""
    from syncq.space import Space

    Space.join(tmp_path / name, name=name, keys=first.keys).close()
    return tmp_path / name


def laptop_and_gpu(
    tmp_path: Path,
    nodes: Callable[..., NodeProcess],
    *laptop_args: str,
    models: Callable[[Path], Any] | None = None,
) -> tuple[NodeProcess, NodeProcess]:
    """Two homes of one space: ``laptop`` runs a node that only syncs (and ``laptop_args``),
    ``gpu`` runs echo and dials it. ``models(gpu_models_folder)`` puts models in place before the
    gpu's node starts (when a node looks for them). Returns both nodes once the laptop knows the
    gpu's models."""
    from syncq.space import Space
    from syncq.store import Peer

    with Space.init(tmp_path / "laptop", name="laptop") as laptop:
        gpu = member(tmp_path, laptop, "gpu")
    if models is not None:
        models(gpu / "models")
    hub = nodes(tmp_path / "laptop", "--no-executors", *laptop_args)
    with Space.open(gpu) as space:
        space.store.save_peer(Peer(url=hub.url, source="config"))
    worker = nodes(gpu)

    def gpu_known() -> bool:
        with Space.open(tmp_path / "laptop") as space:
            return any(n.name == "gpu" and n.models for n in space.log.nodes())

    wait_until(gpu_known, what="the gpu's models to reach the laptop")
    return hub, worker


def inputs(home: Path) -> list[str]:
    """The prompts of a home, by id (creation time)."""
    from syncq.space import Space

    with Space.open(home) as space:
        return [e.prompt.input for e in space.entries(limit=None)]
