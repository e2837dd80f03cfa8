"""Probes of a real node's HTTP API for the security tests (tests/node/test_api_security.py
and test_api_limits.py): requests with exactly the headers given, the OpenAI error shape, and a
module's node with a small header timeout and connection cap."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from harness import SYNCQ, NodeProcess, api_key, wait_until

from syncq.space import Space

HEADER_TIMEOUT_S = 2
MAX_CONNECTIONS = 6
CONFIG = f"""[node]
api_hosts = ["syncq.test"]
api_origins = ["app://obsidian.md"]
api_header_timeout = {HEADER_TIMEOUT_S}
api_max_connections = {MAX_CONNECTIONS}
"""
# A model of another backend that is advertised but never loads: knobs must be refused for it
# before anything runs.
FAKE_LLAMA = '[models.fake-llama]\nbackend = "llama"\npath = "/nowhere/fake.gguf"\n'


def request(
    port: int,
    method: str,
    path: str,
    *,
    host: str | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly these headers (``host`` None: the right one)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", f"127.0.0.1:{port}" if host is None else host)
    for name, value in (headers or {}).items():
        conn.putheader(name, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    response = conn.getresponse()
    found = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    conn.close()
    return found


def error(raw: bytes) -> dict[str, object]:
    """The OpenAI-shaped error of a response body (fails if it is not one)."""
    found = json.loads(raw)["error"]
    assert set(found) >= {"message", "type", "code"} and found["message"], found
    return found


class Served:
    """A node serving the API, its port and key."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.port = int(node.api_url.rsplit(":", 1)[1])
        self.key = api_key(node.home)
        self.auth = {"Authorization": f"Bearer {self.key}"}

    def call(self, method: str, path: str, **kwargs: object) -> tuple[int, dict[str, str], bytes]:
        headers = {**self.auth, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        return request(self.port, method, path, headers=headers, **kwargs)  # type: ignore[arg-type]

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key or self.key, max_retries=0, timeout=60
        )

    def inputs(self) -> list[str]:
        with Space.open(self.node.home) as space:
            return [e.prompt.input for e in space.entries(limit=None)]

    def log_text(self) -> str:
        self.node.find("")
        return "\n".join(json.dumps(e) for e in self.node.events)


def serving_echo(home: Path, name: str = "gpu", config: str = "") -> Served:
    """A node in a new home ``home`` (with ``config`` as its config.toml, if given) serving
    its API, once it serves echo."""
    Space.init(home, name=name).close()
    if config:
        (home / "config.toml").write_text(config)
    served = Served(NodeProcess(home, "--api", "127.0.0.1:0").start())
    wait_until(lambda: served.call("GET", "/v1/models/echo")[0] == 200, what="the node to serve echo")
    return served


def start(home: Path) -> Served:
    node = NodeProcess(home, "--api", "127.0.0.1:0").start()
    served = Served(node)

    def advertised() -> bool:
        status, _, raw = served.call("GET", "/v1/models")
        return status == 200 and {"echo", "fake-llama"} <= {m["id"] for m in json.loads(raw)["data"]}

    wait_until(advertised, what="the node to advertise its models")
    return served


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("security") / "home"
    Space.init(home, name="gpu").close()
    (home / "config.toml").write_text(CONFIG)
    (home / "models.toml").write_text(FAKE_LLAMA)
    served = start(home)
    yield served
    served.node.stop()


def login_cookie(api: Served) -> str:
    """A session cookie, from a login link of `syncq web`."""
    url = run_web(api.node.home)
    status, headers, _ = request(api.port, "GET", url.split(str(api.port), 1)[1])
    assert status == 303 and headers["location"] == "/"
    return headers["set-cookie"].split(";", 1)[0]


def run_web(home: Path) -> str:
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    done = subprocess.run([SYNCQ, "web", "--no-browser"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def read_response(conn: socket.socket) -> bytes:
    """One whole response with a Content-Length, read from ``conn``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def open_files(pid: int) -> list[str]:
    """What the process ``pid`` holds open."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed since it was listed
            found.append(os.readlink(fd))
    return found
