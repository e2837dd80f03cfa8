"""A fault-injecting TCP proxy for tests: pass, delay, partition, cut mid-frame, tamper, drop,
capture.

It runs its own event loop in a thread, so tests drive it with plain method calls.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


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
        await asyncio.gather(
            self._pipe(reader, up_writer, "up", writer), self._pipe(up_reader, writer, "down", up_writer)
        )

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
