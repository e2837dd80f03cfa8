"""LAN discovery with mDNS (zeroconf): advertise this node, dial the other nodes of the space.

The service is ``_syncq._tcp``; its instance name and its ``t`` property carry a tag derived from
the space's admission key (``crypto.discovery_tag``): nodes of one space recognise each other,
and nobody else learns which space a node belongs to, or that two nodes share one.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from syncq.crypto import discovery_tag

from .addresses import local_addresses

if TYPE_CHECKING:
    from syncq.node.daemon import Node

SERVICE = "_syncq._tcp.local."


class Discovery:
    """Advertises the node and dials peers of the same space found on the LAN."""

    def __init__(self, node: Node, interfaces: list[str] | None = None) -> None:
        self.node = node
        self.interfaces = interfaces  # None: every interface (a real LAN); tests use loopback
        self.tag = discovery_tag(node.space.keys)
        self._pending: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Advertise and browse until cancelled; a LAN without multicast only logs a line."""
        try:
            await self._run()
        except OSError as exc:
            self.node.log.event("discovery-off", level="warning", reason=str(exc))

    async def _run(self) -> None:
        zc = AsyncZeroconf(interfaces=self.interfaces) if self.interfaces else AsyncZeroconf()
        me = self.node.space.device_id
        info = AsyncServiceInfo(
            SERVICE,
            f"{self.tag}-{me[:12]}.{SERVICE}",
            addresses=[socket.inet_aton(a) for a in self.interfaces or _addresses(self.node.host)],
            port=self.node.port,
            properties={"t": self.tag},
        )
        try:
            await zc.async_register_service(info)
            browser = AsyncServiceBrowser(zc.zeroconf, [SERVICE], handlers=[self._changed])
            try:
                await asyncio.Event().wait()  # until cancelled
            finally:
                await browser.async_cancel()
        finally:
            await zc.async_unregister_all_services()
            await zc.async_close()

    def _changed(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        own = f"{self.tag}-{self.node.space.device_id[:12]}.{SERVICE}"
        if state_change is ServiceStateChange.Added and name.startswith(self.tag) and name != own:
            task = asyncio.ensure_future(self._resolve(zeroconf, service_type, name))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zeroconf, 3000):
            return
        if info.properties.get(b"t") != self.tag.encode():
            return
        for address in info.parsed_addresses():
            url = f"ws://{address}:{info.port}"
            self.node.log.event("discovered", url=url)
            self.node.add_peer(url, "mdns")
            return


def _addresses(host: str) -> list[str]:
    if host not in ("0.0.0.0", "", "::"):  # noqa: S104 - comparing, not binding
        return [host]
    return local_addresses()
