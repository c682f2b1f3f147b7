"""Addresses: the one answer to "is this loopback?" for the CLI, the runner and the ingress."""

from __future__ import annotations

import functools
import ipaddress

__all__ = ["is_loopback_host"]


@functools.lru_cache(maxsize=256)  # asked on every request, of the few addresses this server listens on
def is_loopback_host(host: str | None) -> bool:
    """127.0.0.0/8, ::1 (also bracketed or IPv4-mapped) or `localhost`; False for None and names."""
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]").removeprefix("::ffff:")).is_loopback
    except ValueError:
        return host == "localhost"
