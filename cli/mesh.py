"""Commands of the mesh: run a node, invite and join devices, manage peers."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import click
from syncq.cli.main import _home, _open

from syncq.errors import InvalidInput, UserError

DEFAULT_LISTEN = "0.0.0.0:7330"
DEFAULT_API = "127.0.0.1:7331"


@click.command()
@click.option(
    "--listen", metavar="HOST:PORT", help="Where to listen (default 0.0.0.0:7330; port 0: any free one)."
)
@click.option(
    "--peer", "peers", multiple=True, metavar="URL", help="Also dial this peer, e.g. ws://gpu:7330."
)
@click.option("--no-discovery", is_flag=True, help="Do not advertise or look for peers on the LAN (mDNS).")
@click.option(
    "--discovery-interface",
    "interfaces",
    multiple=True,
    metavar="ADDR",
    help="Use mDNS only on the interface with this address (repeatable; default: all).",
)
@click.option("--no-executors", is_flag=True, help="Only sync: never claim or run prompts (laptops, relays).")
@click.option(
    "--api", "api_address", metavar="HOST:PORT", help="The local HTTP API (default 127.0.0.1:7331)."
)
@click.option("--no-api", is_flag=True, help="Do not serve the HTTP API.")
@click.option("--json-log", is_flag=True, help="Log one JSON object per line.")
@click.option("-v", "--verbose", is_flag=True, help="Log every batch received.")
@click.pass_context
def node(
    ctx: click.Context,
    listen: str | None,
    peers: tuple[str, ...],
    no_discovery: bool,
    interfaces: tuple[str, ...],
    no_executors: bool,
    api_address: str | None,
    no_api: bool,
    json_log: bool,
    verbose: bool,
) -> None:
    """Run this device's node: sync with peers over websockets until stopped (Ctrl-C).

    \b
    Example:
      syncq node
      syncq node --listen 127.0.0.1:7340 --peer ws://gpu.local:7330
    """
    import asyncio  # here, not at the top: `syncq add` must not pay for it
    import signal

    from syncq.executors.models import node_config, prune_days, relay_blob_days, snapshot_every
    from syncq.node.api import is_loopback
    from syncq.node.api_auth import api_settings
    from syncq.node.daemon import PRUNE_DAYS, RELAY_BLOB_DAYS, SNAPSHOT_EVERY, Node
    from syncq.node.lock import NodeLock
    from syncq.node.logs import NodeLog
    from syncq.node.portal import portal_roots

    from syncq.invite import peer_url

    host, port = _parse_listen(listen or os.environ.get("SYNCQ_LISTEN") or DEFAULT_LISTEN)
    urls = [peer_url(p) for p in peers]
    space = _open(ctx)
    lock = NodeLock(space.paths.node_lock)
    lock.acquire(space.store.get_meta("node.listen"))
    ctx.call_on_close(lock.release)
    apply_blob_limit(space)
    scheduler = None if no_executors or space.is_relay else _scheduler_factory(space.paths.root)
    config = node_config(space.paths.root)
    portals = portal_roots(space.paths.root, config)
    api = None if no_api else _parse_listen(api_address or DEFAULT_API)
    settings = None if api is None else api_settings(space.paths.root, os.environ)
    if api is not None and settings is not None and settings.key is None and not is_loopback(api[0]):
        raise InvalidInput(
            f"--api {api[0]}:{api[1]} accepts connections from other machines, and config.toml's "
            '[node] has api_key = "": remove it (the home\'s key is then asked) or listen on loopback'
        )
    the_node = Node(
        space,
        host=host,
        port=port,
        log=NodeLog(json_lines=json_log, verbose=verbose),
        discovery=not no_discovery,
        discovery_interfaces=list(interfaces) or None,
        scheduler=scheduler,
        portals=portals,
        api=api,
        api_settings=settings,
        relay_blob_days=relay_blob_days(space.paths.root, RELAY_BLOB_DAYS),
        snapshot_every=snapshot_every(space.paths.root, SNAPSHOT_EVERY),
        prune_days=prune_days(space.paths.root, PRUNE_DAYS),
    )

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, the_node.stop)
        for url in urls:
            the_node.add_peer(url, "config")
        await the_node.run()

    try:
        asyncio.run(serve())
    except OSError as exc:
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


@click.command()
@click.argument("code")
@click.option("--name", help="A name for this device (default: the host name).")
@click.option("--no-discovery", is_flag=True, help="Do not look for members on the LAN (mDNS).")
@click.option(
    "--discovery-interface",
    "interfaces",
    multiple=True,
    metavar="ADDR",
    help="Use mDNS only on the interface with this address (repeatable; default: all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def join(
    ctx: click.Context,
    code: str,
    name: str | None,
    no_discovery: bool,
    interfaces: tuple[str, ...],
    as_json: bool,
) -> None:
    """Join the space of a one-time invite CODE from `syncq invite`, as a new device or a relay.

    It dials the code's addresses in turn (and members found on the LAN): one of them must be
    running `syncq node`. Nothing is written here unless a member admits this device.

    \b
    Example:
      syncq join syncq1-kAEQ... --name gpu-box
    """
    import asyncio

    from syncq.crypto import DeviceKeys
    from syncq.errors import AlreadyInitialized
    from syncq.invite import decode_invite, grant_from_wire, invite_mdns_tag
    from syncq.keys import HomePaths
    from syncq.space import Space
    from syncq.store import Peer

    found = decode_invite(code)  # a damaged or old code: one line, before anything else
    home = _home(ctx)
    if HomePaths(home).space_key.exists():
        raise AlreadyInitialized(f"{home} holds a space already (see `syncq status`)")
    label = name or socket.gethostname()
    device = DeviceKeys.from_seed(os.urandom(64))
    lan = None if no_discovery else (invite_mdns_tag(found.secret), list(interfaces) or None)
    url, grant = asyncio.run(_ask_members(found, lan, device, label))
    space = Space.join_granted(home, device=device, name=label, grant=grant_from_wire(grant))
    ctx.call_on_close(space.close)
    peers = list(dict.fromkeys([url, *found.addresses]))
    for peer in peers:
        space.store.save_peer(Peer(url=peer, source="invite"))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "home": str(home),
                    "space_id": space.keys.space_id,
                    "device_id": space.device_id,
                    "relay": space.is_relay,
                    "admitted_by": url,
                    "peers": peers,
                }
            )
        )
        return
    role = (
        "a relay (it stores and forwards ciphertext, and cannot read prompts)"
        if space.is_relay
        else "a member"
    )
    click.echo(f"Joined space {space.keys.space_id} as {label}, {role} (admitted by {url}).")
    click.echo(f"Peers: {', '.join(peers)}")
    click.echo("Run `syncq node` to sync.")


async def _ask_members(
    found: Any, lan: tuple[str, list[str] | None] | None, device: Any, name: str
) -> tuple[str, bytes]:
    """The first grant from the code's addresses, then members found by mDNS (``lan``: the
    invite's tag and the interfaces, None for none): (url, grant). If none admits, prints one
    line per address that failed and raises ``UserError`` with the most telling one (a member's
    refusal at once; else a forged code, then nobody reachable)."""
    from syncq.node.discovery import find_members
    from syncq.node.joins import request_grant

    tried: set[str] = set()
    worst: list[tuple[int, str]] = []
    for pass_ in range(2):
        if pass_ == 0:
            urls = list(found.addresses)
        else:
            urls = [] if lan is None else await find_members(lan[0], interfaces=lan[1])
        for url in (u for u in urls if u not in tried):
            tried.add(url)
            outcome = await request_grant(url, invite_auth=found.auth_key, device=device, name=name)
            if outcome.grant is not None:
                return url, outcome.grant
            if outcome.refused is not None:  # the member knows the code: every member would say so
                raise UserError(outcome.refused)
            worst.append((1 if outcome.forged else 0, outcome.failure or ""))
    if not worst:
        raise UserError(
            "the code names no address and no member was found on the LAN: "
            "ask for a code with `syncq invite --address URL`"
        )
    chosen = max(worst)
    for _, line in worst:
        if line != chosen[1]:
            click.echo(line, err=True)
    raise UserError(chosen[1])


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def peers(ctx: click.Context, as_json: bool) -> None:
    """List known peers: connected or not, last seen, envelopes behind.

    \b
    Example:
      syncq peers
      syncq peers add ws://gpu.local:7330
    """
    if ctx.invoked_subcommand is not None:
        return
    space = _open(ctx)
    running = space.node_running() is not None
    rows = by_device([_peer_json(p, running) for p in space.store.peers()])
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    from syncq.cli import render

    render.peers(rows, running)


@peers.command(name="add")
@click.argument("url")
@click.pass_context
def peers_add(ctx: click.Context, url: str) -> None:
    """Remember a peer to dial (a running node dials it at once).

    \b
    Example:
      syncq peers add ws://192.168.1.20:7330
    """
    from syncq.invite import peer_url
    from syncq.store import Peer

    normalised = peer_url(url)
    space = _open(ctx)
    if any(p.url == normalised for p in space.store.peers()):
        raise UserError(f"{normalised} is a known peer already")
    space.store.save_peer(Peer(url=normalised, source="config"))
    click.echo(f"added {normalised}")


def apply_blob_limit(space: Any) -> None:
    from syncq.executors.models import blob_limit, relay_quota

    space.blob_limit = blob_limit(space.paths.root) or space.blob_limit
    quota = relay_quota(space.paths.root)
    space.relay_quota = quota if quota is not None else space.relay_quota


def _scheduler_factory(home: Path) -> Any:
    """What runs prompts here: the models found in the home, under the [node] settings of
    config.toml (``executors = []`` makes a node that only syncs)."""
    from syncq.executors.base import ExecutorError
    from syncq.executors.manager import ModelManager, Settings, parallel
    from syncq.executors.memory import parse_size
    from syncq.executors.models import discover, node_config
    from syncq.node.scheduler import Scheduler

    from syncq.claims import Policy

    config = node_config(home)
    backends = config.get("executors")
    if backends == []:
        return None
    specs = discover(home, backends)
    try:
        settings = Settings(
            max_loaded=int(config.get("max_loaded", 2)),
            parallel=int(config.get("parallel", 1)),
            keep_alive_s=float(config.get("keep_alive", 300)),
            memory_budget=parse_size(config["memory_budget"]) if "memory_budget" in config else None,
            gpu_memory_budget=(
                parse_size(config["gpu_memory_budget"]) if "gpu_memory_budget" in config else None
            ),
        )
        policy = Policy(
            lease_ms=int(float(config.get("lease", 30)) * 1000),
            heartbeat_ms=int(float(config.get("heartbeat", 5)) * 1000),
            backoff_first_ms=int(float(config.get("backoff", 1)) * 1000),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{home / 'config.toml'}: bad value in [node]: {exc}") from exc
    try:
        for spec in specs.values():
            parallel(spec, settings)
    except ExecutorError as exc:  # config.toml's [node] parallel, or a model's in models.toml
        raise InvalidInput(f"{home}: {exc}") from exc
    return lambda node: Scheduler(node, ModelManager(specs, settings), policy)


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidInput(f"--listen {text!r} must look like HOST:PORT, e.g. 0.0.0.0:7330")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104


def _own_addresses(space: Any) -> list[str]:
    listen = space.store.get_meta("node.listen") or f"ws://0.0.0.0:{DEFAULT_LISTEN.rsplit(':', 1)[1]}"
    port = listen.rsplit(":", 1)[1]
    host = listen.split("://", 1)[1].rsplit(":", 1)[0]
    if host not in ("0.0.0.0", "::", ""):  # noqa: S104
        return [f"ws://{host}:{port}"]
    from syncq.node.addresses import local_addresses

    return [f"ws://{h}:{port}" for h in local_addresses()]


def by_device(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per device: a device that dialled this node (``inbound:<id>``) and that this node
    dials (``ws://...``) has a row of the peers table for each, merged here; ``addresses``
    keeps every one. Rows of peers never reached (no device id yet) stay as they are."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["node_id"] or row["url"], []).append(row)
    merged = []
    for group in groups.values():
        dialled = [r for r in group if not r["url"].startswith("inbound:")]
        first = (dialled or group)[0]
        connected = [r for r in group if r["connected"]]
        seen = [r["last_seen"] for r in group if r["last_seen"]]
        merged.append(
            {
                **first,
                "name": next((r["name"] for r in group if r["name"]), None),
                "connected": bool(connected),
                "last_seen": max(seen) if seen else None,
                "behind": (connected or [first])[0]["behind"],
                "error": None if connected else first["error"],
                "source": ", ".join(dict.fromkeys(r["source"] for r in group)),
                "addresses": [r["url"] for r in group],
            }
        )
    return merged


def _peer_json(peer: Any, running: bool) -> dict[str, Any]:
    # "connected" is stale once the node that wrote it has stopped.
    import dataclasses

    return {**dataclasses.asdict(peer), "connected": bool(peer.connected and running)}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def portal(ctx: click.Context, as_json: bool) -> None:
    """Print the file portal's folders: drop request folders into inbox/ (rename them in).

    \b
    Example:
      mkdir /tmp/q && printf 'model: echo\\nprompt: hi\\n' > /tmp/q/request.yaml
      mv /tmp/q "$(syncq portal --json | jq -r '.portals[0].inbox')/"
    """
    from syncq.executors.models import node_config
    from syncq.node.portal import FOLDERS, portal_roots

    home = _open(ctx).paths.root
    roots = portal_roots(home, node_config(home))
    found = [{"root": str(root), **{name: str(root / name) for name in FOLDERS}} for root in roots]
    if as_json:
        click.echo(json.dumps({"portals": found}))
        return
    for entry in found:
        click.echo(entry["root"])
        for name in FOLDERS:
            click.echo(f"  {name + '/':8} {entry[name]}")
    click.echo("Write a request folder elsewhere, then rename it into inbox/ (the node must run).")
