"""The HTTP API's limits against real node processes: bodies built to break the parser, uploads
(under the home, after the model check, never in /tmp), slow and many connections, and echo's
test knobs."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import openai
import pytest
from api_probe import (
    FAKE_LLAMA,
    HEADER_TIMEOUT_S,
    MAX_CONNECTIONS,
    Served,
    api,
    error,
    open_files,
    read_response,
    start,
)
from harness import SYNCQ, wait_until

from syncq.space import Space

pytestmark = pytest.mark.slow
__all__ = ["api"]  # the module's node, a fixture


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
