"""Unencrypted anchor: how fast does stock pycrdt-websocket bring a fresh client up to date?

What it measures: a ``pycrdt.websocket.WebsocketServer`` serves one room whose plain (unencrypted)
pycrdt ``Doc`` already holds N prompt records in ``doc.get("prompts", type=Map)``, laid out like
syncq's (26-char id -> canonical JSON text of a record). A fresh ``pycrdt.Provider`` client with an
empty Doc connects over a real websocket on 127.0.0.1. We time from just before the client connects
until the client's ``prompts`` map holds N entries (then check that its state equals the server's),
and count the websocket message payload bytes sent and received by the client in that window.
The server Doc is filled before the timer starts; each repeat uses a fresh server and client.

Channel-adapter workaround: pycrdt-websocket's documented ``websockets.serve(server.serve, ...)``
hands the raw websockets connection to ``WebsocketServer.serve``, which reads ``websocket.path`` to
pick the room. websockets >= 14 connections have no ``.path`` (it lives on ``ws.request.path``),
and their ``recv()`` may return ``str``, so we wrap each connection in ``WsChannel``, a small
implementation of ``pycrdt.Channel`` (``path``, ``send``, ``recv``, ``__aiter__``/``__anext__``),
which also counts the bytes on the wire. The same adapter feeds the client-side ``Provider``.

Note: pycrdt-websocket 0.16 is imported as ``pycrdt.websocket``; its old ``WebsocketProvider`` is
now ``pycrdt.Provider``.

    python benchmarks/anchor_pycrdt_websocket.py --records 10000 --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from pycrdt import Channel, Doc, Map, MapEvent, Provider
from pycrdt.websocket import WebsocketServer, YRoom
from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

HOST = "127.0.0.1"
ROOM = "/prompts"
MAX_SIZE = 1 << 30  # one SYNC_STEP2 message carries the whole state (~5 MB for 10k records)
SYNC_TIMEOUT_S = 30.0


class WsChannel(Channel):
    """A ``pycrdt.Channel`` over a websockets (>= 14) asyncio connection, counting payload bytes."""

    def __init__(self, ws: Connection, path: str) -> None:
        self._ws = ws
        self._path = path
        self.sent = 0
        self.received = 0

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> WsChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        self.sent += len(message)
        await self._ws.send(message)

    async def recv(self) -> bytes:
        message = await self._ws.recv(decode=False)
        self.received += len(message)
        return message


def record_json(i: int) -> str:
    """The canonical JSON text of prompt record ``i`` (about 490 bytes)."""
    rec: dict[str, Any] = {
        "author": "ab" * 32,
        "created_at": 1732500000000 + i,
        "input": "Summarise the following meeting notes in three bullet points: "
        + "lorem ipsum " * 20
        + f" #{i}",
        "kind": "llm",
        "max_attempts": 3,
        "model": "echo",
        "params": {},
        "priority": 0,
    }
    return json.dumps(rec, separators=(",", ":"), sort_keys=True)


def build_state(n: int) -> bytes:
    """A full Doc update holding ``n`` records in the ``prompts`` map, built in one transaction."""
    doc: Doc[Map[str]] = Doc()
    prompts = doc.get("prompts", type=Map)
    with doc.transaction():
        for i in range(n):
            prompts[f"01M880YASPKYQXRC5ZM{i:07d}"] = record_json(i)
    return doc.get_update()


async def measure(n: int, state: bytes | None = None) -> dict[str, Any]:
    """One fresh server + client sync of ``n`` records; ``state`` is ``build_state(n)`` if given."""
    if state is None:
        state = build_state(n)
    server_doc: Doc[Map[str]] = Doc()
    server_doc.apply_update(state)
    assert len(server_doc.get("prompts", type=Map)) == n

    ws_server = WebsocketServer(auto_clean_rooms=False)

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        await ws_server.serve(WsChannel(ws, ws.request.path))

    client_doc: Doc[Map[str]] = Doc()
    prompts = client_doc.get("prompts", type=Map)
    changed = asyncio.Event()

    def on_change(_event: MapEvent) -> None:
        changed.set()

    subscription = prompts.observe(on_change)

    async with (
        ws_server,
        serve(handler, HOST, 0, compression=None, max_size=MAX_SIZE) as server,
    ):
        room = YRoom(ydoc=server_doc)
        ws_server.rooms[ROOM] = room
        await ws_server.start_room(room)
        port = server.sockets[0].getsockname()[1]

        start = time.perf_counter()
        async with connect(f"ws://{HOST}:{port}{ROOM}", compression=None, max_size=MAX_SIZE) as ws:
            channel = WsChannel(ws, ROOM)
            async with Provider(client_doc, channel), asyncio.timeout(SYNC_TIMEOUT_S):
                while len(prompts) < n:
                    await changed.wait()
                    changed.clear()
                seconds = time.perf_counter() - start
                bytes_down, bytes_up = channel.received, channel.sent
        # YRoom.stop() leaves its internal update stream unclosed (a ResourceWarning under -X dev).
        await room.stop()
    prompts.unobserve(subscription)

    if (
        client_doc.get_state() != server_doc.get_state()
        or prompts.to_py() != server_doc.get("prompts", type=Map).to_py()
    ):
        raise AssertionError("client Doc differs from server Doc after sync")
    return {
        "records": n,
        "seconds": seconds,
        "bytes": bytes_down + bytes_up,
        "bytes_down": bytes_down,
        "bytes_up": bytes_up,
        "state_bytes": len(state),
    }


def run(n: int, repeats: int) -> dict[str, Any]:
    """Median over ``repeats`` fresh server+client runs, all starting from the same built state."""
    state = build_state(n)
    runs = [asyncio.run(measure(n, state)) for _ in range(repeats)]
    seconds = [r["seconds"] for r in runs]
    return {
        "records": n,
        "repeats": repeats,
        "seconds": statistics.median(seconds),
        "seconds_min": min(seconds),
        "seconds_max": max(seconds),
        "bytes": statistics.median_low(r["bytes"] for r in runs),
        "bytes_down": statistics.median_low(r["bytes_down"] for r in runs),
        "bytes_up": statistics.median_low(r["bytes_up"] for r in runs),
        "state_bytes": len(state),
        "state_bytes_per_record": round(len(state) / n, 1) if n else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(run(args.records, args.repeats)))


if __name__ == "__main__":
    main()
