"""Commands that decide who belongs to the space: one-time invites and the device list.

``syncq invite`` makes a one-time code (no space secret in it: PROTOCOL.md "Invites"), lists and
revokes pending ones; ``syncq devices`` lists, renames and removes devices. Removal starts a new
key epoch at once (``Space.remove_device``); this module only asks, calls and tells the user,
honestly, what the removed device keeps.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Sequence
from typing import Any

import click
from syncq.cli.main import _open
from syncq.node.logs import printable

from syncq.errors import InvalidInput, RelayOnly

UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DEFAULT_EXPIRES = "1d"
MAX_EXPIRES_MS = 30 * UNITS_MS["d"]  # a code that lives longer is a standing secret: make a new one
_DURATION = re.compile(r"([1-9][0-9]{0,6})([smhd])")


def parse_duration(text: str) -> int:
    """``10m``, ``2h``, ``1d``, ``30s`` -> milliseconds (one number, one unit, nothing else).

    Raises InvalidInput (a one-line message) for anything else, or beyond 30 days."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise InvalidInput(
            f"--expires {printable(text)!r} is not a duration: give a whole number and a unit "
            "(s, m, h or d), e.g. 10m, 2h or 1d"
        )
    ms = int(found[1]) * UNITS_MS[found[2]]
    if ms > MAX_EXPIRES_MS:
        raise InvalidInput(f"--expires {text}: at most 30d (make a new code when you need one)")
    return ms


@click.command()
@click.option("--relay", is_flag=True, help="A code for a relay: it can store and forward, never read.")
@click.option(
    "--expires",
    default=DEFAULT_EXPIRES,
    show_default=True,
    metavar="DURATION",
    help="How long the code stays valid: 30s, 10m, 2h, 1d (at most 30d).",
)
@click.option(
    "--address",
    "addresses",
    multiple=True,
    metavar="URL",
    help="Where the new device can reach this one (default: this machine's addresses).",
)
@click.option("--list", "listing", is_flag=True, help="List the invites still pending (none are secrets).")
@click.option("--all", "show_all", is_flag=True, help="With --list: used, revoked and expired ones too.")
@click.option("--revoke", metavar="ID", help="Revoke a pending invite (ID or a unique prefix).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with --list: one object per line).")
@click.pass_context
def invite(
    ctx: click.Context,
    relay: bool,
    expires: str,
    addresses: tuple[str, ...],
    listing: bool,
    show_all: bool,
    revoke: str | None,
    as_json: bool,
) -> None:
    """Print a fresh one-time code that adds one device (or a relay) to this space.

    The code holds no key of the space: it works once, until it expires, and only while a
    member is reachable. A member it reaches adds the new device to the device list and seals
    the space's keys to it.

    \b
    Example:
      syncq invite                 # then, on the new device: syncq join CODE
      syncq invite --expires 10m
      syncq invite --relay --address ws://relay.example.net:7330
      syncq invite --list
      syncq invite --revoke 3f9a
    """
    if listing + (revoke is not None) > 1:
        raise InvalidInput("give either --list or --revoke, not both")
    if (listing or revoke is not None) and (relay or addresses):
        raise InvalidInput("--relay and --address make a new code: leave them out with --list or --revoke")
    ms = parse_duration(expires)  # checked first: a typo costs nothing
    space = _open(ctx)
    if space.is_relay:
        raise RelayOnly("a relay cannot invite: run `syncq invite` on a member device")
    if listing:
        _list(space.invites(everything=show_all), as_json)
        return
    if revoke is not None:
        _revoked(space.revoke_invite(revoke), as_json)
        return
    from syncq.cli.mesh import _own_addresses

    from syncq.invite import peer_url

    urls = [peer_url(a) for a in addresses] or _own_addresses(space)
    code, record = space.create_invite(role="relay" if relay else "member", expires_ms=ms, addresses=urls)
    if as_json:
        click.echo(json.dumps({"code": code, **invite_json(record), "addresses": urls}))
        return
    click.echo(code)
    what = "a relay (it stores and forwards ciphertext, never reads)" if relay else "a member"
    click.echo(
        f"This code adds one device, as {what}. It works once, until {_when(record.expires_at)} "
        f"({_span(ms)} from now). On the new device: syncq join CODE  "
        f"(a member must be reachable: run `syncq node` here). "
        f"`syncq invite --revoke {record.id[:8]}` cancels it.",
        err=True,
    )


def invite_json(record: Any) -> dict[str, Any]:
    """An invite record as JSON (never its auth key: it is a secret of the code)."""
    return {
        "id": record.id,
        "role": record.role,
        "state": _state(record),
        "created_at": _iso(record.created_at),
        "created_by": record.created_by,
        "expires_at": _iso(record.expires_at),
        "used_by": record.used_by or None,
        "by": record.by or None,
        "at": _iso(record.at) if record.at else None,
    }


def _state(record: Any) -> str:
    """pending, used or revoked as recorded; a pending one past its time shows as expired."""
    state = str(getattr(record.state, "value", record.state))
    if state == "pending" and record.expires_at <= time.time() * 1000:
        return "expired"
    return state


def _list(records: Sequence[Any], as_json: bool) -> None:
    if as_json:
        for record in records:
            click.echo(json.dumps(invite_json(record)))
        return
    if not records:
        click.echo("no pending invites (`syncq invite` makes one)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, padding=(0, 2))
    for column in ("id", "role", "state", "expires", "made", "used by"):
        table.add_column(column, no_wrap=True)
    for record in records:
        table.add_row(
            record.id[:8],
            record.role,
            _state(record),
            _short(record.expires_at),
            _short(record.created_at),
            record.used_by[:12] or "-",
        )
    Console(highlight=False).print(table)


def _revoked(record: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(invite_json(record)))
        return
    click.echo(f"revoked invite {record.id[:8]} ({record.role}): nobody can join with its code now")


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def devices(ctx: click.Context, as_json: bool) -> None:
    """List every device of the space: name, id, role, who added it and when, last seen.

    \b
    Example:
      syncq devices
      syncq devices rename old-laptop laptop
      syncq devices remove phone
    """
    if ctx.invoked_subcommand is not None:
        return
    rows = [device_json(view) for view in _open(ctx).devices()]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    _table(rows)


def device_json(view: Any) -> dict[str, Any]:
    """A device of the list as JSON (``syncq devices --json``)."""
    return {
        "name": view.name,
        "id": view.id,
        "role": view.role,
        "added_by": view.added_by,
        "added_by_name": view.added_by_name,
        "added_at": _iso(view.added_at) if view.added_at else None,
        "last_seen": _iso(view.last_seen) if view.last_seen else None,
        "this": view.this,
        "removed": view.role == "removed",
        "removed_by": view.removed_by or None,
    }


def _table(rows: Sequence[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, padding=(0, 1))
    for column in ("", "name", "id", "role", "added by", "added", "last seen"):
        table.add_column(column, no_wrap=column not in ("name", "added by"))
    for row in rows:
        role = row["role"]
        cells = [
            "*" if row["this"] else "",
            printable(row["name"] or "?"),
            row["id"][:8],
            role,
            _added_by(row),
            _local(row["added_at"]),
            "this device" if row["this"] else _local(row["last_seen"]),
        ]
        table.add_row(*(Text(c, style="dim" if row["removed"] else "") for c in cells))
    console = Console(highlight=False)
    console.print(table)
    console.print("[dim]* this device[/]")


def _added_by(row: dict[str, Any]) -> str:
    if not row["added_by"]:
        return "(founder)"
    return printable(row["added_by_name"]) or row["added_by"][:12]


@devices.command(name="rename")
@click.argument("old")
@click.argument("new")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def devices_rename(ctx: click.Context, old: str, new: str, as_json: bool) -> None:
    """Rename a device (OLD: its name or a unique prefix of its id).

    \b
    Example:
      syncq devices rename old-laptop laptop
    """
    view = _open(ctx).rename_device(old, new)
    if as_json:
        click.echo(json.dumps(device_json(view)))
        return
    click.echo(f"renamed {printable(old)} to {printable(view.name)} ({view.id[:12]})")


@devices.command(name="remove")
@click.argument("device", metavar="NAME|ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def devices_remove(ctx: click.Context, device: str, yes: bool, as_json: bool) -> None:
    """Remove a device (a lost laptop, a sold phone): it reads nothing written from now on.

    Any member may remove any device. The space moves to a new key, sealed to every device that
    stays; the removed device can no longer connect anywhere, and its unfinished jobs move to
    other devices. It keeps what it held already: everything written up to now.

    \b
    Example:
      syncq devices remove phone
      syncq devices remove 3f9a01c2 --yes
    """
    from syncq.devices import find_device

    space = _open(ctx)
    target = find_device(space, device)
    if not yes:
        held = len(space.log)
        click.confirm(
            f"Remove {printable(target.name or '?')} ({target.id[:12]}, {target.role})? It keeps the "
            f"{held} prompt{'' if held == 1 else 's'} written up to now, and reads nothing written after",
            abort=True,
            err=True,
        )
    removal = space.remove_device(target.id)
    if as_json:
        click.echo(json.dumps(removal_json(removal)))
        return
    name = printable(removal.name or "?")
    n = removal.prompts
    click.echo(
        f"Removed {name} ({removal.device[:12]}). It still holds everything written up to now "
        f"({n} prompt{'' if n == 1 else 's'}, their results and files): treat those as seen by "
        "whoever has it."
    )
    click.echo(
        "From now on it reads nothing: the space moved to a new key, sealed only to the devices "
        "that stay, and it can no longer connect to any of them."
    )
    if removal.revoked_invites:
        k = removal.revoked_invites
        click.echo(f"{k} pending invite{'' if k == 1 else 's'} revoked (it could read them): make new ones.")
    if removal.left_out:
        left = ", ".join(d[:12] for d in removal.left_out)
        click.echo(
            f"warning: {left} got no new key (made by an older syncq, no exchange key): "
            "remove and invite them again",
            err=True,
        )
    if space.node_running() is None:
        click.echo("Run `syncq node` here so the other devices learn of it soon.")


def removal_json(removal: Any) -> dict[str, Any]:
    """What `syncq devices remove --json` prints."""
    return {
        "removed": removal.device,
        "name": removal.name,
        "cutoff": removal.cutoff,
        "epoch": removal.epoch,
        "prompts_it_holds": removal.prompts,
        "revoked_invites": removal.revoked_invites,
        "left_out": list(removal.left_out),
    }


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def _local(iso: str | None) -> str:
    if not iso:
        return "-"
    return _short(int(dt.datetime.fromisoformat(iso).timestamp() * 1000))


def _short(ms: int) -> str:
    """The local time of day for today, else the date and the minute."""
    when = dt.datetime.fromtimestamp(ms / 1000)
    return when.strftime("%H:%M:%S") if when.date() == dt.date.today() else when.strftime("%Y-%m-%d %H:%M")


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _span(ms: int) -> str:
    for unit, size in (("day", UNITS_MS["d"]), ("hour", UNITS_MS["h"]), ("minute", UNITS_MS["m"])):
        if ms >= size and ms % size == 0:
            n = ms // size
            return f"{n} {unit}{'' if n == 1 else 's'}"
    n = ms // 1000
    return f"{n} second{'' if n == 1 else 's'}"
