"""LAN discovery with mDNS (zeroconf): advertise this node, dial the other nodes of the space.

The service is ``_syncq._tcp``; its instance name and its ``t`` property carry a tag derived from
the space's admission key (``crypto.discovery_tag``): nodes of one space recognise each other,
and nobody else learns which space a node belongs to, or that two nodes share one.

A member also advertises one instance per pending invite, tagged with the invite's own mDNS tag
(PROTOCOL.md, "Joining"): `syncq join` finds the members that can admit its code
(``find_members``), and nobody without that code can tie the record to anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from syncq.crypto import discovery_tag

from .addresses import local_addresses

if TYPE_CHECKING:
    from syncq.node.daemon import Node

SERVICE = "_syncq._tcp.local."
INVITES_RECHECK_S = 30.0  # an invite that expires stops being advertised within this


class Discovery:
    """Advertises the node and dials peers of the same space found on the LAN."""

    def __init__(self, node: Node, interfaces: list[str] | None = None) -> None:
        self.node = node
        self.interfaces = interfaces  # None: every interface (a real LAN); tests use loopback
        self.tag = discovery_tag(node.space.keys)
        self._pending: set[asyncio.Task[None]] = set()
        self._invites = asyncio.Event()
        self._advertised: dict[str, AsyncServiceInfo] = {}  # invite mDNS tag -> its record

    def invites_changed(self) -> None:
        """Invites were made, used or revoked: advertise the pending ones."""
        self._invites.set()

    async def run(self) -> None:
        """Advertise and browse until cancelled; a LAN without multicast only logs a line."""
        try:
            await self._run()
        except OSError as exc:
            self.node.log.event("discovery-off", level="warning", reason=str(exc))

    async def _run(self) -> None:
        zc = AsyncZeroconf(interfaces=self.interfaces) if self.interfaces else AsyncZeroconf()
        try:
            await zc.async_register_service(self._info(self.tag))
            browser = AsyncServiceBrowser(zc.zeroconf, [SERVICE], handlers=[self._changed])
            try:
                while True:  # until cancelled
                    await self._advertise_invites(zc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._invites.wait(), INVITES_RECHECK_S)
                    self._invites.clear()
            finally:
                await browser.async_cancel()
        finally:
            self._advertised.clear()
            await zc.async_unregister_all_services()
            await zc.async_close()

    def _info(self, tag: str) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE,
            f"{tag}-{self.node.space.device_id[:12]}.{SERVICE}",
            addresses=[socket.inet_aton(a) for a in self.interfaces or _addresses(self.node.host)],
            port=self.node.port,
            properties={"t": tag},
        )

    async def _advertise_invites(self, zc: AsyncZeroconf) -> None:
        """One record per pending invite, none for the others."""
        space = self.node.space
        wanted = set() if space.is_relay else {r.mdns for r in space.invites() if r.mdns}
        for tag in set(self._advertised) - wanted:
            await zc.async_unregister_service(self._advertised.pop(tag))
        for tag in sorted(wanted - set(self._advertised)):
            self._advertised[tag] = self._info(tag)
            await zc.async_register_service(self._advertised[tag])

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


async def find_members(tag: str, *, wait_s: float = 3.0, interfaces: list[str] | None = None) -> list[str]:
    """The URLs of nodes on the LAN that advertise ``tag`` (an invite's mDNS tag), found within
    ``wait_s``. A LAN without multicast finds none."""
    found: list[str] = []
    try:
        zc = AsyncZeroconf(interfaces=interfaces) if interfaces else AsyncZeroconf()
    except OSError:
        return found
    names: list[str] = []

    def changed(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added and name.startswith(f"{tag}-"):
            names.append(name)

    try:
        browser = AsyncServiceBrowser(zc.zeroconf, [SERVICE], handlers=[changed])
        await asyncio.sleep(wait_s)  # mDNS answers come when they come: browse for this long
        await browser.async_cancel()
        for name in names:
            info = AsyncServiceInfo(SERVICE, name)
            if await info.async_request(zc.zeroconf, 1000) and info.properties.get(b"t") == tag.encode():
                found += [f"ws://{a}:{info.port}" for a in info.parsed_addresses()[:1]]
    finally:
        await zc.async_close()
    return found
