"""This machine's IPv4 addresses, for invite codes and mDNS announcements."""

from __future__ import annotations

import ifaddr


def local_addresses() -> list[str]:
    """Every IPv4 address of this machine, LAN ones first and loopback last."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and ip.ip not in found:
                found.append(ip.ip)
    lan = [a for a in found if not a.startswith("127.")]
    return [*lan, "127.0.0.1"]
