"""The HTTP API's doors, tried the way an attacker tried them, against real node processes:
forged Host and Origin headers, no key or a wrong one, another Unix user, bodies built to break
the parser, uploads, slow and many connections, and echo's test knobs."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from harness import SYNCQ, NodeProcess, api_key, wait_until

from syncq.space import Space

pytestmark = pytest.mark.slow

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


ROUTES = [
    ("GET", "/"),
    ("GET", "/api/prompts"),
    ("GET", "/api/nodes"),
    ("GET", "/api/events"),
    ("GET", "/v1/models"),
    ("GET", "/login?token=x"),
    ("GET", "/no/such/route"),
    ("POST", "/api/prompts"),
    ("POST", "/v1/chat/completions"),
    ("OPTIONS", "/v1/chat/completions"),
]


@pytest.mark.parametrize(
    "host", ["evil.example:{port}", "evil.example", "", "127.0.0.1:1", "localhost.evil.example:{port}"]
)
def test_a_forged_host_is_refused_on_every_route_even_with_the_key(api: Served, host: str) -> None:
    body = json.dumps({"text": "rebound", "model": "echo"}).encode()
    for method, path in ROUTES:
        status, _, raw = api.call(
            method,
            path,
            host=host.format(port=api.port),
            headers={"Content-Type": "application/json"},
            body=body if method == "POST" else None,
        )
        assert status == 403, (method, path, host)
        assert error(raw)["code"] == "forbidden"
    assert "rebound" not in api.inputs()


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "SYNCQ.test:{port}"]
)
def test_the_listening_address_and_the_configured_names_are_served(api: Served, host: str) -> None:
    status, _, raw = api.call("GET", "/api/nodes", host=host.format(port=api.port))
    assert status == 200 and json.loads(raw)["data"][0]["name"] == "gpu"


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


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=X"]
)
def test_a_cross_origin_simple_request_is_refused_and_adds_nothing(api: Served, content_type: str) -> None:
    cookie = login_cookie(api)  # the browser's own session: what a CSRF would ride on
    body = json.dumps({"text": f"csrf {content_type}", "model": "echo", "messages": []}).encode()
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{api.port + 1}"):
        for path in ("/api/prompts", "/v1/chat/completions", "/api/prompts/0000/cancel"):
            for credentials in ({"Cookie": cookie}, api.auth):
                status, headers, raw = request(
                    api.port,
                    "POST",
                    path,
                    headers={"Origin": origin, "Content-Type": content_type, **credentials},
                    body=body,
                )
                assert status == 403 and error(raw)["code"] == "forbidden", (origin, path)
                assert "access-control-allow-origin" not in headers
    # With no Origin (no browser page) and the key, such a body is still not taken.
    status, _, raw = api.call("POST", "/api/prompts", headers={"Content-Type": content_type}, body=body)
    assert status == 415 and error(raw)["code"] == "unsupported_media_type"
    assert not [text for text in api.inputs() if text.startswith("csrf")]


def test_an_allowed_origin_gets_a_preflight_and_cors_headers(api: Served) -> None:
    origin = "app://obsidian.md"
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
    }
    status, headers, _ = request(api.port, "OPTIONS", "/v1/chat/completions", headers=preflight)
    assert status == 204
    assert headers["access-control-allow-origin"] == origin
    assert "POST" in headers["access-control-allow-methods"]
    assert "authorization" in headers["access-control-allow-headers"]
    assert "x-stainless-os" in headers["access-control-allow-headers"]
    status, headers, _ = request(
        api.port, "OPTIONS", "/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert status == 403 and "access-control-allow-origin" not in headers

    chat = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "from obsidian"}]}).encode()
    status, headers, raw = api.call(
        "POST",
        "/v1/chat/completions",
        headers={"Origin": origin, "Content-Type": "application/json"},
        body=chat,
    )
    assert status == 200 and headers["access-control-allow-origin"] == origin
    assert json.loads(raw)["choices"][0]["message"]["content"] == "from obsidian"
    # The page's own origin is same-origin: no CORS headers, and it works.
    status, headers, _ = api.call("GET", "/api/prompts", headers={"Origin": f"http://127.0.0.1:{api.port}"})
    assert status == 200 and "access-control-allow-origin" not in headers
    # An allowed origin without the key is still refused, but can read why.
    status, headers, raw = request(api.port, "GET", "/v1/models", headers={"Origin": origin})
    assert status == 401 and headers["access-control-allow-origin"] == origin


def test_no_key_or_a_wrong_key_gets_401_and_the_openai_client_works_with_the_right_one(api: Served) -> None:
    for credentials in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {api.key}"}):
        for method, path in (
            ("GET", "/api/prompts"),
            ("GET", "/v1/models"),
            ("POST", "/api/prompts/0/retry"),
        ):
            status, _, raw = request(api.port, method, path, headers=credentials)
            assert status == 401 and error(raw)["code"] == "invalid_api_key", (credentials, path)
    with pytest.raises(openai.AuthenticationError):
        api.client(key="sk-wrong").models.list()
    with pytest.raises(openai.AuthenticationError):
        api.client(key=api.key[:-1]).chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x"}]
        )
    answer = api.client().chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "keyed"}]
    )
    assert answer.choices[0].message.content == "keyed"
    # The page itself holds no data: it loads, and tells how to log in.
    status, _, raw = request(api.port, "GET", "/")
    assert status == 200 and b"syncq web" in raw
    key_file = api.node.home / "api.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and key_file.read_text().strip() == api.key
    done = subprocess.run(
        [SYNCQ, "api-key"],
        env={**os.environ, "SYNCQ_HOME": str(api.node.home)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and done.stdout == api.key + "\n"


def test_the_login_link_works_once_and_sets_a_strict_httponly_cookie(api: Served) -> None:
    url = run_web(api.node.home)
    assert url.startswith(f"http://127.0.0.1:{api.port}/login?token=v1.")
    path = url.split(str(api.port), 1)[1]
    status, headers, _ = request(api.port, "GET", path)
    assert status == 303 and headers["location"] == "/"
    attributes = [a.strip().lower() for a in headers["set-cookie"].split(";")]
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
    cookie = headers["set-cookie"].split(";", 1)[0]
    status, _, raw = request(api.port, "GET", "/api/nodes", headers={"Cookie": cookie})
    assert status == 200 and json.loads(raw)["data"]

    status, headers, raw = request(api.port, "GET", path)  # used up
    assert status == 401 and "set-cookie" not in headers and error(raw)["code"] == "invalid_login"
    forged = path[:-4] + ("0000" if not path.endswith("0000") else "1111")
    assert request(api.port, "GET", forged)[0] == 401
    assert request(api.port, "GET", "/login?token=")[0] == 401
    # The cookie is for the page's own requests: a browser that says a request comes from
    # another site does not get it honoured, and a cookie with a changed MAC is nothing.
    cross = {"Cookie": cookie, "Sec-Fetch-Site": "same-site"}
    assert request(api.port, "GET", "/api/nodes", headers=cross)[0] == 401
    assert request(api.port, "GET", "/api/nodes", headers={"Cookie": cookie[:-2] + "00"})[0] == 401


def test_without_a_key_the_api_is_open_and_the_node_warns(tmp_path: Path) -> None:
    home = tmp_path / "open"
    Space.init(home, name="gpu").close()
    (home / "config.toml").write_text('[node]\napi_key = ""\n')
    (home / "models.toml").write_text(FAKE_LLAMA)
    node = NodeProcess(home, "--api", "127.0.0.1:0").start()
    try:
        assert node.wait_event("api-without-key")["level"] == "warning"
        port = int(node.api_url.rsplit(":", 1)[1])
        status, _, raw = request(port, "GET", "/api/nodes")
        assert status == 200 and json.loads(raw)["data"][0]["name"] == "gpu"
        # Host and Origin are checked all the same.
        assert request(port, "GET", "/api/nodes", host="evil.example:1")[0] == 403
        env = {**os.environ, "SYNCQ_HOME": str(home)}
        done = subprocess.run([SYNCQ, "api-key"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and 'api_key = ""' in done.stderr and "Traceback" not in done.stderr
        assert run_web(home) == f"http://127.0.0.1:{port}/"
    finally:
        node.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user (uid 65534)")
def test_another_unix_user_gets_401_and_cannot_read_the_key() -> None:
    # Not under pytest's own folder (0700): the other user must reach the key file for its mode
    # to be what stops them. This folder is what /home is: anyone may pass through.
    shared = Path(tempfile.mkdtemp(prefix="syncq-shared-"))
    shared.chmod(0o755)
    home = shared / "home"
    Space.init(home, name="gpu").close()
    node = NodeProcess(home, "--api", "127.0.0.1:0").start()
    try:
        port = int(node.api_url.rsplit(":", 1)[1])
        key = api_key(home)
        with Space.open(home) as space:
            space.add("a private prompt", model="echo")
        home.chmod(0o711)  # even where the home can be passed through, the key file is the owner's
        probe = f"""
import http.client, json, os
found = {{"sees_key": os.path.exists({str(home / "api.key")!r})}}
try:
    open({str(home / "api.key")!r}).read()
    found["read_key"] = True
except PermissionError:
    found["read_key"] = False
for credentials in ({{}}, {{"Authorization": "Bearer guessed"}}):
    conn = http.client.HTTPConnection("127.0.0.1", {port}, timeout=30)
    conn.request("GET", "/api/prompts", headers=credentials)
    response = conn.getresponse()
    found.setdefault("statuses", []).append(response.status)
    found.setdefault("bodies", []).append(response.read().decode())
print(json.dumps(found))
"""
        done = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-I",
                "-c",
                probe,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert done.returncode == 0, done.stderr
        found = json.loads(done.stdout)
        assert found["sees_key"] is True and found["read_key"] is False
        assert found["statuses"] == [401, 401]
        assert not any("a private prompt" in body or key in body for body in found["bodies"])
    finally:
        node.stop()
        shutil.rmtree(shared, ignore_errors=True)


def test_bad_requests_get_json_errors_and_no_traceback_anywhere(api: Served) -> None:
    before = len(api.inputs())
    json_type = {"Content-Type": "application/json"}

    def post(path: str, body: bytes) -> tuple[int, dict[str, object]]:
        status, headers, raw = api.call("POST", path, headers=json_type, body=body)
        assert headers["content-type"] == "application/json" and b"Traceback" not in raw
        return status, error(raw) if status >= 400 else {}

    deep = b"[" * 50_000 + b"]" * 50_000
    assert post("/v1/chat/completions", deep) == (400, post("/v1/chat/completions", deep)[1])
    assert post("/v1/chat/completions", deep)[1]["code"] == "too_deep"
    nested = b'{"model": "echo", "messages": ' + b"[" * 40 + b"]" * 40 + b"}"
    assert post("/v1/chat/completions", nested)[1]["code"] == "too_deep"
    brackets_in_text = json.dumps({"text": "[" * 5000, "model": "echo"}).encode()
    assert post("/api/prompts", brackets_in_text)[0] == 201  # brackets inside a string are text
    status, err = post("/api/prompts", b" " * (5 << 20))
    assert (status, err["code"]) == (413, "too_large")
    for stream in ('"no"', "1", '"false"', "[]"):
        body = (
            b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "stream": '
            + stream.encode()
            + b"}"
        )
        status, err = post("/v1/chat/completions", body)
        assert status == 400 and err["param"] == "stream", stream
    chat = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "x"}]}).encode()
    status, _, raw = api.call(
        "POST",
        "/v1/chat/completions",
        headers={**json_type, "X-Syncq-Cancel-On-Disconnect": "yes"},
        body=chat,
    )
    assert status == 400 and error(raw)["param"] == "x-syncq-cancel-on-disconnect"

    for method, path, expected in (
        ("GET", "/api/prompts?status=bogus", 400),
        ("GET", "/api/prompts?limit=-1", 400),
        ("GET", "/api/prompts?limit=x", 400),
        ("GET", "/no/such/route", 404),
        ("GET", "/v1/chat/completions", 405),
        ("DELETE", "/api/prompts", 405),
    ):
        status, headers, raw = api.call(method, path)
        assert status == expected and headers["content-type"] == "application/json", path
        assert b"Traceback" not in raw
        error(raw)
    # Not even HTTP: the answer is still JSON.
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as raw_socket:
        raw_socket.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = b""
        while chunk := raw_socket.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and error(body)["code"] == "bad_http"

    assert len(api.inputs()) == before + 1  # only the prompt with brackets in its text
    log = api.log_text()
    assert "Traceback" not in log and "RecursionError" not in log and "api-error" not in log


def test_uploads_land_under_the_home_after_the_model_check_and_never_in_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))  # the node's system temporary folder
    home = tmp_path / "home"
    Space.init(home, name="gpu").close()
    (home / "models.toml").write_text(FAKE_LLAMA)
    served = start(home)
    work = home / "work"
    audio = b"RIFF" + bytes(range(256)) * (12 << 10)  # 3 MiB: past Starlette's 1 MiB in memory

    def form(*fields: tuple[str, str], file_first: bool = False) -> bytes:
        text = b"".join(
            f'--XX\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'.encode() for n, v in fields
        )
        upload = (
            b'--XX\r\nContent-Disposition: form-data; name="file"; filename="talk.wav"\r\n\r\n'
            + audio
            + b"\r\n"
        )
        return (upload + text if file_first else text + upload) + b"--XX--\r\n"

    try:
        for file_first in (False, True):
            status, _, raw = served.call(
                "POST",
                "/v1/audio/transcriptions",
                headers={"Content-Type": "multipart/form-data; boundary=XX"},
                body=form(("model", "whisper-huge"), file_first=file_first),
            )
            assert status == 404 and error(raw)["code"] == "model_not_found"
            assert not list(work.rglob("*")) if work.exists() else True
        # A served model: the upload is written under the home, 0600 in a 0700 folder, and gone
        # once the request is (here: its client hangs up halfway through the file).
        conn = socket.create_connection(("127.0.0.1", served.port), timeout=30)
        head = (
            f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
            f"Authorization: Bearer {served.key}\r\nContent-Type: multipart/form-data; boundary=XX\r\n"
            f"Content-Length: {len(form(('model', 'whisper-tiny.en')))}\r\n\r\n"
        ).encode()
        whole = form(("model", "whisper-tiny.en"))
        conn.sendall(head + whole[: len(whole) // 2])
        spooled = wait_until(lambda: [p for p in work.rglob("talk.wav")], what="the upload in the home")
        # Starlette's parser spooled past 1 MiB into an unlinked file of TMPDIR: no name to list,
        # but the node would hold it open.
        assert served.node.proc is not None
        opened = open_files(served.node.proc.pid)
        assert not [target for target in opened if target.startswith(str(tmpdir))]
        assert str(spooled[0]) in opened
        folder = spooled[0].parent
        assert stat.S_IMODE(spooled[0].stat().st_mode) == 0o600
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.parent == work
        assert stat.S_IMODE(work.stat().st_mode) == 0o700
        conn.close()
        wait_until(lambda: not folder.exists(), what="the upload to be removed")
        assert list(tmpdir.iterdir()) == []
    finally:
        served.node.stop()


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


def test_a_slow_header_client_is_cut_off(api: Served) -> None:
    def dribble(conn: socket.socket, data: bytes, closed: threading.Event) -> None:
        for i in range(len(data)):
            try:
                conn.sendall(data[i : i + 1])
            except OSError:
                break
            if closed.wait(0.2):  # a byte every 0.2 s: the slowloris pace, not a synchronisation
                break

    request_head = (
        f"GET /api/nodes HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\nX-Pad: {'a' * 200}\r\n\r\n".encode()
    )
    for answered_first in (False, True):
        conn = socket.create_connection(("127.0.0.1", api.port), timeout=HEADER_TIMEOUT_S + 20)
        if answered_first:  # a kept-alive connection whose next request crawls
            conn.sendall(
                f"GET /api/nodes HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n"
                f"Authorization: Bearer {api.key}\r\n\r\n".encode()
            )
            answer = read_response(conn)
            assert answer.startswith(b"HTTP/1.1 200"), answer
        closed = threading.Event()
        started = time.monotonic()
        threading.Thread(target=dribble, args=(conn, request_head, closed), daemon=True).start()
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except ConnectionResetError:  # closed with our bytes unread: closed all the same
            pass
        elapsed = time.monotonic() - started
        closed.set()
        conn.close()
        assert received == b"" and HEADER_TIMEOUT_S - 0.5 < elapsed < HEADER_TIMEOUT_S + 15, elapsed


def test_connections_beyond_the_cap_are_refused_and_room_comes_back(api: Served) -> None:
    streams = []
    for _ in range(MAX_CONNECTIONS):  # event streams: complete requests that stay open
        conn = socket.create_connection(("127.0.0.1", api.port), timeout=30)
        conn.sendall(
            f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n"
            f"Authorization: Bearer {api.key}\r\n\r\n".encode()
        )
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        streams.append(conn)
    try:
        status, _, raw = api.call("GET", "/api/nodes")
        assert status == 503 and error(raw)["code"] == "too_many_connections"
    finally:
        for conn in streams:
            conn.close()
    wait_until(lambda: api.call("GET", "/api/nodes")[0] == 200, what="room for a connection again")


def test_test_knobs_work_for_echo_in_the_suite_and_never_for_other_models(api: Served) -> None:
    slow = api.client().chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "slowly now"}], extra_body={"delay": 0.2}
    )
    assert slow.choices[0].message.content == "slowly now"
    with pytest.raises(openai.BadRequestError, match="'fake-llama' is not an echo model"):
        api.client().chat.completions.create(
            model="fake-llama", messages=[{"role": "user", "content": "x"}], extra_body={"fail": "boom"}
        )
    status, _, raw = api.call(
        "POST",
        "/api/prompts",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"text": "crash it", "model": "fake-llama", "params": {"crash": True}}).encode(),
    )
    assert status == 400 and error(raw)["code"] == "test_knob"
    env = {**os.environ, "SYNCQ_HOME": str(api.node.home)}
    done = subprocess.run(
        [SYNCQ, "add", "hang it", "-m", "fake-llama", "--param", "hang=5"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "hang is a test knob" in done.stderr and "Traceback" not in done.stderr
    assert not {"crash it", "hang it"} & set(api.inputs())


def test_test_knobs_are_refused_by_a_node_not_started_for_tests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SYNCQ_TEST_KNOBS")
    home = tmp_path / "home"
    Space.init(home, name="gpu").close()
    (home / "models.toml").write_text(FAKE_LLAMA)
    served = start(home)
    try:
        with pytest.raises(openai.BadRequestError, match="refused outside the test suite"):
            served.client().chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "x"}], extra_body={"hang": 30}
            )
        status, _, raw = served.call(
            "POST",
            "/api/prompts",
            headers={"Content-Type": "application/json"},
            body=json.dumps({"text": "crash it", "model": "echo", "params": {"crash": True}}).encode(),
        )
        assert status == 400 and "refused outside the test suite" in error(raw)["message"]
        env = {**os.environ, "SYNCQ_HOME": str(home)}
        done = subprocess.run(
            [SYNCQ, "add", "x", "-m", "echo", "--param", "fail=boom"], env=env, capture_output=True, text=True
        )
        assert done.returncode == 1 and "refused outside the test suite" in done.stderr
        assert served.inputs() == []
        # A prompt that reached the store another way (another device, the library) is failed by
        # the executor itself, its knob never obeyed.
        with Space.open(home) as space:
            prompt = space.add("crash the worker", model="echo", params={"crash": True}, max_attempts=1)
        failed = served.node.wait_event("finished", prompt=prompt.id)
        assert "refused outside the test suite" in failed["error"]
    finally:
        served.node.stop()
