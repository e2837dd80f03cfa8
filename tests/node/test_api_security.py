"""The HTTP API's doors, tried the way an attacker tried them, against real node processes:
forged Host and Origin headers, no key or a wrong one, the web page's login, another Unix user.
Bodies, uploads, connections and test knobs: test_api_limits.py."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import openai
import pytest
from api_probe import (
    FAKE_LLAMA,
    Served,
    api,
    error,
    login_cookie,
    request,
    run_web,
)
from harness import SYNCQ, NodeProcess, api_key

from syncq.space import Space

pytestmark = pytest.mark.slow
__all__ = ["api"]  # the module's node, a fixture


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
