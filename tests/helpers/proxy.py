"""A fault-injecting TCP proxy for tests: pass, delay, partition, cut mid-frame, tamper, drop,
capture; and, with ``rewrite``, act on whole websocket messages (forge, drop, replay one).

It runs its own event loop in a thread, so tests drive it with plain method calls.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

# rewrite(direction, index, payload) -> (messages to pass on, messages to send back the other
# way); index counts the data messages of one direction of one connection from 0.
Rewrite = Callable[[str, int, bytes], tuple[list[bytes], list[bytes]]]


class Proxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target>; "up" is client -> server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self.blocked = False
        self.cut_next_big_chunk = False
        self.tamper_next_big_chunk: str | None = None  # "up" or "down"
        self.drop: str | None = None  # "up" or "down": bytes that way are swallowed (lost)
        self.dropped = 0
        self.captured = bytearray()
        self.tampered = 0
        self.cuts = 0
        self.rewrite: Rewrite | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def partition(self) -> None:
        """Cut every connection and refuse new ones until ``heal``."""
        self.blocked = True
        self._call(self._close_all())

    def heal(self) -> None:
        self.blocked = False

    def close(self) -> None:
        self.blocked = True
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _shutdown(self) -> None:
        self._server.close()
        await self._close_all()

    async def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        if self.rewrite is not None:
            await asyncio.gather(
                self._ws_pipe(reader, up_writer, "up", writer),
                self._ws_pipe(up_reader, writer, "down", up_writer),
            )
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, "up", writer), self._pipe(up_reader, writer, "down", up_writer)
        )

    async def _ws_pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
        other: asyncio.StreamWriter,
    ) -> None:
        """Pass the HTTP upgrade as it is, then whole websocket frames through ``rewrite``."""
        back = "down" if direction == "up" else "up"
        try:
            writer.write(await reader.readuntil(b"\r\n\r\n"))
            index = 0
            while True:
                head, opcode, payload = await _read_frame(reader)
                rewrite = self.rewrite
                if opcode not in (1, 2) or rewrite is None:
                    writer.write(head)  # control frames (ping, close) pass untouched
                    continue
                onwards, backwards = rewrite(direction, index, payload)
                index += 1
                for message in onwards:
                    writer.write(ws_frame(message, masked=direction == "up"))
                for message in backwards:
                    other.write(ws_frame(message, masked=back == "up"))
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            other.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
        other: asyncio.StreamWriter,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.drop == direction:
                    self.dropped += len(data)
                    continue
                big = len(data) > 400
                if big and self.tamper_next_big_chunk == direction:
                    self.tamper_next_big_chunk = None
                    self.tampered += 1
                    data = data[:-10] + bytes([data[-10] ^ 0x01]) + data[-9:]
                self.captured += data
                if big and self.cut_next_big_chunk:
                    self.cut_next_big_chunk = False
                    self.cuts += 1
                    writer.write(data[: len(data) // 2])
                    await writer.drain()
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            other.close()


def ws_frame(payload: bytes, *, masked: bool, opcode: int = 2) -> bytes:
    """One final websocket frame (RFC 6455 5.2): client frames are masked."""
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes([0x80 | opcode, mask_bit | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, mask_bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + _xor(payload, key)


def _xor(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    stream = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


async def _read_frame(reader: asyncio.StreamReader) -> tuple[bytes, int, bytes]:
    """One websocket frame: its bytes as they came, its opcode and its unmasked payload."""
    first = await reader.readexactly(2)
    opcode, masked, n = first[0] & 0x0F, first[1] & 0x80, first[1] & 0x7F
    extra = b""
    if n == 126:
        extra = await reader.readexactly(2)
        n = int.from_bytes(extra, "big")
    elif n == 127:
        extra = await reader.readexactly(8)
        n = int.from_bytes(extra, "big")
    key = await reader.readexactly(4) if masked else b""
    body = await reader.readexactly(n)
    payload = _xor(body, key) if masked else body
    return first + extra + key + body, opcode, payload
