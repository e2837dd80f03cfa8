"""Who may use the local HTTP API: its settings, its key, and the web page's one-time login.

The key. Every home has one (``api.key``, mode 0600, made by ``syncq.keys.load_api_key``), asked of
every request even on loopback: another user of this machine can reach 127.0.0.1 but cannot read
the home, so the key is what tells the owner's clients from theirs. Clients send it as
``Authorization: Bearer KEY`` (what ``OpenAI(api_key=...)`` does). Where it comes from, first
found wins::

    SYNCQ_API_KEY, or SYNCQ_API_TOKEN (the old name)     the environment of `syncq node`
    api_key = ""  in config.toml's [node]                no key at all (the node warns)
    api_token = "..."  in config.toml's [node]           the old, pre-key setting, still read
    api.key                                              the home's own key (the default)

A non-empty ``api_key`` in config.toml is refused: config files get copied and shown around,
key files do not.

The web page. A browser cannot send a Bearer header on its own, so ``syncq web`` prints a login
URL, ``/login?token=T``. The CLI and the node are different processes and share only the home,
so T is made by the CLI with nothing but the key: ``v1.<expiry>.<nonce>.<HMAC-SHA256(key,
expiry.nonce)>``, valid for ``LOGIN_TTL_S``. The node checks the MAC in constant time, the
expiry against its clock, and keeps the nonces it has seen until they expire: a token works
once (within one run of the node; a restart inside the two minutes forgets the used set, a
window we accept: the token was only ever shown to the owner's terminal). The answer sets the
session cookie (``SESSION_COOKIE``: HttpOnly, so no script reads it, SameSite=Strict, so no
other site's link, form or script sends it) and redirects to ``/``. Strict rather than Lax:
Lax would still send it when another site links to an API URL (a top-level GET), and Strict
costs the page nothing, as the login link is opened from the terminal (no site starts that
navigation, so the cookie is set and sent) and every later request of the page is its own.
The cookie holds its own expiry and a MAC of it under the key (again not the key itself):
changing the key logs every browser out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from syncq.errors import InvalidInput
from syncq.keys import HomePaths, load_api_key

KEY_ENV = "SYNCQ_API_KEY"
LEGACY_KEY_ENV = "SYNCQ_API_TOKEN"
LOGIN_TTL_S = 120.0
SESSION_TTL_S = 7 * 24 * 3600.0
SESSION_COOKIE = "syncq_session"
HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    """Everything the API's guard needs, read once at the node's start (``api_settings``)."""

    key: str | None  # None: no key asked (api_key = "" in config.toml)
    hosts: tuple[str, ...] = ()  # Host names beyond the listening address (api_hosts)
    origins: tuple[str, ...] = ()  # other origins whose pages may call the API (api_origins)
    header_timeout: float = HEADER_TIMEOUT_S  # a request's headers must arrive within this
    max_connections: int = MAX_CONNECTIONS  # connections beyond this are refused
    test_knobs: bool = False  # echo's test knobs accepted (the test suite's nodes only)


def api_settings(home: Path, environ: Mapping[str, str]) -> ApiSettings:
    """The API's settings from the environment and config.toml's ``[node]``. Raises
    ``InvalidInput`` for a bad setting, ``HomeError`` and ``InsecureKeyFile`` for the key file."""
    from syncq.executors.echo import knobs_enabled
    from syncq.executors.models import node_config

    config = node_config(home)
    where = f"{home / 'config.toml'}'s [node]"
    return ApiSettings(
        key=_key(home, environ, config, where),
        hosts=tuple(h.lower() for h in _strings(config, "api_hosts", where)),
        origins=tuple(o.rstrip("/").lower() for o in _strings(config, "api_origins", where)),
        header_timeout=_positive(config, "api_header_timeout", HEADER_TIMEOUT_S, where),
        max_connections=int(_positive(config, "api_max_connections", MAX_CONNECTIONS, where)),
        test_knobs=knobs_enabled(environ),
    )


def _key(home: Path, environ: Mapping[str, str], config: Mapping[str, object], where: str) -> str | None:
    for name in (KEY_ENV, LEGACY_KEY_ENV):
        if environ.get(name):
            return environ[name]
    if "api_key" in config:
        if config["api_key"] != "":
            raise InvalidInput(
                f'{where}: api_key may only be "" (no key); the key itself lives in '
                f"{HomePaths(home).api_key} (or set {KEY_ENV})"
            )
        return None
    legacy = config.get("api_token")
    if legacy is not None:
        if not isinstance(legacy, str) or not legacy:
            raise InvalidInput(f"{where}: api_token must be a non-empty string")
        return legacy
    return load_api_key(HomePaths(home))


def _strings(config: Mapping[str, object], name: str, where: str) -> list[str]:
    value = config.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidInput(f'{where}: {name} must be a list of strings, e.g. {name} = ["x.example"]')
    return list(value)


def _positive(config: Mapping[str, object], name: str, default: float, where: str) -> float:
    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidInput(f"{where}: {name} must be a positive number")
    return float(value)


# -- the one-time login token and the session cookie ------------------------------------------


def login_token(key: str, now: float, nonce: str | None = None) -> str:
    """A login token for ``/login?token=``, valid ``LOGIN_TTL_S`` from ``now`` (seconds)."""
    expiry = str(int((now + LOGIN_TTL_S) * 1000))
    nonce = nonce or secrets.token_urlsafe(16)
    return f"v1.{expiry}.{nonce}.{_mac(key, 'login', expiry, nonce)}"


def session_cookie(key: str, now: float) -> str:
    """The session cookie's value, valid ``SESSION_TTL_S`` from ``now``."""
    expiry = str(int((now + SESSION_TTL_S) * 1000))
    return f"v1.{expiry}.{_mac(key, 'session', expiry)}"


def valid_session(key: str, cookie: str, now: float) -> bool:
    """Whether ``cookie`` is a session cookie made under ``key`` that has not expired."""
    parts = cookie.split(".")
    if len(parts) != 3 or parts[0] != "v1" or not parts[1].isdigit():
        return False
    good = hmac.compare_digest(parts[2].encode(), _mac(key, "session", parts[1]).encode())
    return good and int(parts[1]) / 1000 > now


@dataclass(slots=True)
class Logins:
    """The node's side of the login tokens: checks them and remembers those used."""

    key: str
    clock: Callable[[], float] = field(default_factory=lambda: time.time)  # tests give their own
    _used: dict[str, float] = field(default_factory=dict)  # nonce -> expiry (s)

    def redeem(self, token: str) -> bool:
        """Whether ``token`` is a valid login token not used before; it is used up if so."""
        now = self.clock()
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit():
            return False
        _, expiry, nonce, mac = parts
        if not hmac.compare_digest(mac.encode(), _mac(self.key, "login", expiry, nonce).encode()):
            return False
        deadline = int(expiry) / 1000
        # A token from the far future was not made by `syncq web` (the TTL bounds it).
        if not now < deadline <= now + LOGIN_TTL_S + 5 or nonce in self._used:
            return False
        self._used = {n: t for n, t in self._used.items() if t > now} | {nonce: deadline}
        return True


def _mac(key: str, purpose: str, *fields: str) -> str:
    message = ".".join((purpose, *fields)).encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
