"""Plain websockets moving a file's bytes between two processes on 127.0.0.1: the anchor of the
attachment transfer benchmark (``benchmarks/exec.py blobs``).

It does what a syncq fetch does minus syncq: the receiver asks, the sender answers with the file
in 1 MiB binary messages over one websocket (per-message deflate off, as syncq's nodes have it),
and the receiver writes every message to a file (flushed, not fsync'd: a process crash loses
nothing, a power cut may, as with syncq's chunks, committed with SQLite's synchronous=NORMAL). No
framing, no encryption, no tags, no database, no flow control beyond TCP's and websockets' own.
``--sink fsync`` also fsyncs every 4 MiB (SQLite's WAL checkpoint interval, which fsyncs): what
the disk costs; ``--sink none`` only receives: what the socket costs.

    send FILE                   serve on 127.0.0.1 (a free port) and print the URL; every text
                                message "go" is answered with FILE in 1 MiB messages, then "end"
    receive URL --runs 3        connect once, then per run ask and time the request until the
      [--sink file|fsync|none]  last message is written (``none``: only received); prints a JSON
      [--out PATH] [--stdin]    list (``--stdin``: one run per line read, one JSON object each, so
                                that a caller can interleave these runs with its own)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

CHUNK = 1024 * 1024
FSYNC_EVERY = 4  # chunks
MAX_SIZE = 8 * 1024 * 1024  # what syncq's nodes allow (syncq.protocol.MAX_FRAME_SIZE)


async def send(path: Path) -> None:
    data = path.read_bytes()  # in memory: the anchor pays no storage on the sending side

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            if message != "go":
                continue
            for at in range(0, len(data), CHUNK):
                await ws.send(data[at : at + CHUNK])
            await ws.send("end")

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=MAX_SIZE) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"ws://127.0.0.1:{port}", flush=True)
        await asyncio.Future()  # until killed


async def receive(url: str, runs: int, sink: str, out: Path, stdin: bool) -> list[dict[str, float]]:
    results = []
    async with connect(url, compression=None, max_size=MAX_SIZE) as ws:
        for _ in iter(sys.stdin.readline, "") if stdin else range(runs):
            results.append(await one_run(ws, sink, out))
            if stdin:
                print(json.dumps(results[-1]), flush=True)
    out.unlink(missing_ok=True)
    return results


async def one_run(ws: ClientConnection, sink: str, out: Path) -> dict[str, float]:
    """Ask for the file; seconds from the request until the last message is written."""
    received = 0
    start = time.perf_counter()
    await ws.send("go")
    with open(out, "wb") as f:
        async for message in ws:
            if isinstance(message, str):
                break
            received += len(message)
            if sink != "none":
                f.write(message)
            if sink == "fsync" and received % (FSYNC_EVERY * CHUNK) == 0:
                f.flush()
                os.fsync(f.fileno())
        f.flush()
        if sink == "fsync":
            os.fsync(f.fileno())
    return {"seconds": round(time.perf_counter() - start, 4), "bytes": received}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sender = sub.add_parser("send")
    sender.add_argument("file", type=Path)
    receiver = sub.add_parser("receive")
    receiver.add_argument("url")
    receiver.add_argument("--runs", type=int, default=3)
    receiver.add_argument("--sink", choices=("file", "fsync", "none"), default="file")
    receiver.add_argument("--out", type=Path, default=Path("anchor-received.bin"))
    receiver.add_argument("--stdin", action="store_true", help="one run per line read")
    args = parser.parse_args()
    if args.command == "send":
        asyncio.run(send(args.file))
        return
    results = asyncio.run(receive(args.url, args.runs, args.sink, args.out, args.stdin))
    if not args.stdin:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
