"""Commands of the local HTTP API: its key, and a login link for the web page."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click
from syncq.cli.main import _home, _open

from syncq.errors import UserError

DEFAULT_API_URL = "http://127.0.0.1:7331"


def _key(ctx: click.Context) -> str | None:
    from syncq.node.api_auth import api_settings

    return api_settings(_home(ctx), os.environ).key


@click.command(name="api-key")
@click.option("--json", "as_json", is_flag=True, help='Print {"api_key": ..., "url": ...}.')
@click.pass_context
def api_key(ctx: click.Context, as_json: bool) -> None:
    """Print the key that clients of the local HTTP API send (Authorization: Bearer KEY).

    The key is made the first time it is asked for, in the home's api.key (mode 0600).

    \b
    Example:
      syncq api-key
      OPENAI_API_KEY=$(syncq api-key) OPENAI_BASE_URL=http://127.0.0.1:7331/v1 python app.py
    """
    space = _open(ctx)  # the home must hold a space: a key for no space would be a key to nothing
    key = _key(ctx)
    if key is None:
        raise UserError('the HTTP API asks no key: config.toml\'s [node] has api_key = ""')
    if as_json:
        click.echo(json.dumps({"api_key": key, "url": _api_url(space)}))
    else:
        click.echo(key)


@click.command()
@click.option("--no-browser", is_flag=True, help="Only print the link; open no browser.")
@click.option("--json", "as_json", is_flag=True, help='Print {"url": ...}.')
@click.pass_context
def web(ctx: click.Context, no_browser: bool, as_json: bool) -> None:
    """Print a one-time login link to the web page (and open it in a browser, if there is one).

    The link works once, within two minutes; it sets a cookie that keeps this browser logged in
    for a week.

    \b
    Example:
      syncq web
      syncq web --no-browser
    """
    from syncq.node.api_auth import login_token

    space = _open(ctx)
    key = _key(ctx)
    base = _api_url(space)
    url = f"{base}/" if key is None else f"{base}/login?token={login_token(key, time.time())}"
    if as_json:
        click.echo(json.dumps({"url": url}))
    else:
        click.echo(url)
    if not no_browser and _has_display():
        import webbrowser

        webbrowser.open(url)


def _api_url(space: Any) -> str:
    """Where this home's node serves the API, as a browser of this machine reaches it."""
    url = space.store.get_meta("node.api") or DEFAULT_API_URL
    host, _, port = url.removeprefix("http://").rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}.get(host, host)  # noqa: S104 - a URL, no bind
    return f"http://{host}:{port}"


def _has_display() -> bool:
    """Whether a browser could be shown: a desktop session, or a system that always has one."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
