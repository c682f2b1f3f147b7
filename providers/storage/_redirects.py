"""Which HTTP redirects the http provider may follow.

Model servers run next to cloud metadata services (169.254.169.254,
fd00:ec2::254, Alibaba's 100.100.100.200) that hand out credentials to
whoever asks, so an artifact host must not be able to bounce our client to
them, nor to anything else on the internal network, nor down from https to
http. The spec author's own URL is trusted as written (it may well be on
127.0.0.1); only where a server sends us next is checked.
"""

from __future__ import annotations

import ipaddress
import socket

import httpx

from ._errors import StorageUnavailable, UnsafeRedirect

MAX_REDIRECTS = 5


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


def _internal(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    # `is_global` is False for loopback, link-local, private, unspecified and also
    # shared (100.64/10, where Alibaba's metadata lives) and reserved ranges.
    return not ip.is_global or ip.is_multicast


def check_redirect(uri: str, start: httpx.URL, current: httpx.URL, target: httpx.URL) -> None:
    """Raise UnsafeRedirect unless following `current` -> `target` is safe for a fetch that began at `start`."""

    def refuse(why: str) -> UnsafeRedirect:
        return UnsafeRedirect(
            uri, f"refusing the redirect to {target}: {why}; point the artifact URI at the final location"
        )

    if target.scheme not in ("http", "https"):
        raise refuse(f"{target.scheme}:// is not HTTP")
    if current.scheme == "https" and target.scheme == "http":
        raise refuse("it downgrades https to plain http")
    if _origin(target) == _origin(start):
        return
    try:
        infos = socket.getaddrinfo(target.host, _origin(target)[2], type=socket.SOCK_STREAM)
    except OSError as exc:
        raise StorageUnavailable(uri, f"the redirect to {target} names a host that does not resolve ({exc})") from None
    internal = sorted({str(info[4][0]) for info in infos if _internal(str(info[4][0]))})
    if internal:
        own = f"{start.scheme}://{start.netloc.decode('ascii')}"
        raise refuse(
            f"{target.host} is an internal address ({', '.join(internal)}) outside the artifact's origin {own}"
        )
