"""The API guard's rules on their own: no process, no socket, a clock given in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from syncq.executors.echo import knob_problem
from syncq.node.api_auth import (
    LOGIN_TTL_S,
    ApiSettings,
    Logins,
    api_settings,
    login_token,
    session_cookie,
    valid_session,
)
from syncq.node.api_guard import Guard
from syncq.node.http_common import json_depth

from syncq.errors import InvalidInput
from syncq.space import Space

KEY = "sk-syncq-" + "k" * 43

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:\n'),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(alphabet='[]{}"\\a'), inner, max_size=4)
    ),
    max_leaves=30,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(json_values)
def test_the_depth_is_counted_before_decoding_as_decoding_would_find_it(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, indent=1, ensure_ascii=False)):
        assert json_depth(text.encode()) == depth(value)


def test_a_body_too_deep_to_decode_is_measured_without_recursion() -> None:
    assert json_depth(b"[" * 1_000_000) == 1_000_000
    assert json_depth(b'{"a": "' + b"[" * 1000 + b'"}') == 1


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_login_token_works_once_before_it_expires_and_only_under_its_key() -> None:
    clock = Clock(1000.0)
    logins = Logins(KEY, clock=clock)
    token = login_token(KEY, clock.now)
    assert logins.redeem(token)
    assert not logins.redeem(token)  # used up

    late = login_token(KEY, clock.now)
    clock.now += LOGIN_TTL_S + 0.001
    assert not logins.redeem(late)  # expired

    assert not logins.redeem(login_token("sk-another-key-entirely", clock.now))
    far = login_token(KEY, clock.now + 3600)  # not made by `syncq web` now: its life is too long
    assert not logins.redeem(far)
    fresh = login_token(KEY, clock.now)
    for broken in (
        fresh[:-1] + ("0" if fresh[-1] != "0" else "1"),
        fresh.replace("v1.", "v2.", 1),
        "",
        "v1...",
    ):
        assert not logins.redeem(broken)
    assert logins.redeem(fresh)


def test_the_used_tokens_are_forgotten_once_they_expire() -> None:
    clock = Clock(0.0)
    logins = Logins(KEY, clock=clock)
    for _ in range(50):
        assert logins.redeem(login_token(KEY, clock.now))
        clock.now += LOGIN_TTL_S / 10
    assert len(logins._used) <= 11


def test_a_session_cookie_is_valid_under_its_key_until_it_expires() -> None:
    cookie = session_cookie(KEY, 0.0)
    assert valid_session(KEY, cookie, 1.0)
    assert not valid_session(KEY, cookie, 8 * 24 * 3600.0)
    assert not valid_session("sk-another-key-entirely", cookie, 1.0)
    expiry = cookie.split(".")[1]
    assert not valid_session(KEY, cookie.replace(expiry, str(int(expiry) * 10)), 1.0)  # extended
    assert not valid_session(KEY, "", 1.0) and not valid_session(KEY, KEY, 1.0)


def guard(loopback: bool, hosts: tuple[str, ...] = ()) -> Guard:
    return Guard(
        lambda *a: None,  # type: ignore[arg-type,return-value]
        ApiSettings(key=KEY, hosts=hosts),
        listen=("127.0.0.1" if loopback else "0.0.0.0", 7331),  # noqa: S104 - a rule, no socket
        loopback=loopback,
        report=lambda exc: None,
    )


@pytest.mark.parametrize(
    ("host", "on_loopback", "beyond"),
    [
        ("127.0.0.1:7331", True, True),
        ("localhost:7331", True, True),
        ("LOCALHOST:7331", True, True),
        ("[::1]:7331", True, True),
        ("syncq.test:7331", True, True),  # api_hosts
        ("127.0.0.1:7332", False, False),  # another port: another service's page
        ("127.0.0.1", False, False),
        ("", False, False),
        ("evil.example:7331", False, False),
        ("localhost.evil.example:7331", False, False),
        ("192.168.1.20:7331", False, True),  # Ollama's rule: private addresses, beyond loopback
        ("10.0.0.5:7331", False, True),
        ("laptop.local:7331", False, True),
        ("8.8.8.8:7331", False, False),
        ("::1:7331", False, False),  # an IPv6 address without brackets is no Host
    ],
)
def test_which_hosts_are_this_api(host: str, on_loopback: bool, beyond: bool) -> None:
    assert guard(True, ("syncq.test",)).allowed_host(host) is on_loopback
    assert guard(False, ("syncq.test",)).allowed_host(host) is beyond


def test_the_key_comes_from_the_environment_then_the_config_then_the_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Space.init(home, name="a").close()
    own = api_settings(home, {}).key
    assert own is not None and own.startswith("sk-syncq-") and (home / "api.key").stat().st_mode & 0o077 == 0
    assert api_settings(home, {}).key == own  # made once
    assert api_settings(home, {"SYNCQ_API_TOKEN": "old-token"}).key == "old-token"
    assert api_settings(home, {"SYNCQ_API_KEY": "new", "SYNCQ_API_TOKEN": "old"}).key == "new"
    (home / "config.toml").write_text('[node]\napi_token = "from-config"\n')
    assert api_settings(home, {}).key == "from-config"
    (home / "config.toml").write_text('[node]\napi_key = ""\napi_origins = ["app://obsidian.md/"]\n')
    settings = api_settings(home, {})
    assert settings.key is None and settings.origins == ("app://obsidian.md",)
    (home / "config.toml").write_text('[node]\napi_key = "sk-in-a-config-file"\n')
    with pytest.raises(InvalidInput, match='api_key may only be ""'):
        api_settings(home, {})
    for bad in (
        "api_hosts = 'x'",
        "api_origins = [1]",
        "api_header_timeout = 0",
        "api_max_connections = true",
    ):
        (home / "config.toml").write_text(f"[node]\n{bad}\n")
        with pytest.raises(InvalidInput):
            api_settings(home, {})


@pytest.mark.parametrize(
    ("model", "backend", "params", "enabled", "problem"),
    [
        ("echo", "echo", {"delay": 1}, True, None),
        ("echo", None, {"fail": "x"}, True, None),  # not advertised yet, but named echo
        ("slow", "echo", {"hang": 1}, True, None),  # an echo model of models.toml
        ("echo", "echo", {"max_tokens": 5}, False, None),  # no knob at all
        ("echo", "echo", {"delay": 1}, False, "refused outside the test suite"),
        ("gemma3-270m", "llama", {"crash": True}, True, "'gemma3-270m' is not an echo model"),
        ("mystery", None, {"fail": "x"}, True, "is not an echo model"),
    ],
)
def test_the_test_knobs_rule(
    model: str, backend: str | None, params: dict[str, object], enabled: bool, problem: str | None
) -> None:
    found = knob_problem(model, backend, params, enabled)
    assert found == problem if problem is None else problem in (found or "")


def test_a_bug_behind_the_guard_is_answered_as_json_and_reported_in_one_line() -> None:
    import asyncio

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    reported: list[BaseException] = []
    sent: list[dict[str, Any]] = []
    app = Guard(
        broken, ApiSettings(key=None), listen=("127.0.0.1", 7331), loopback=True, report=reported.append
    )

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/prompts",
        "headers": [(b"host", b"127.0.0.1:7331")],
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 500 and [type(e) for e in reported] == [RecursionError]
    body = json.loads(sent[1]["body"])
    assert body["error"]["code"] == "internal_error" and "recursion" not in body["error"]["message"]


def test_unterminated_escapes_are_measured_in_one_pass() -> None:
    # '"\\"\\"...' never closes its string: a search that started again at each quote was
    # quadratic (10 s for 40 KB); a whole 4 MiB body of it would hold the API for a day.
    body = b'"' + b'\\"' * (2 << 20)
    assert json_depth(body) == 0
    assert json_depth(b"[" + body) == 1
