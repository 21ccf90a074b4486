"""Where fanout may call: an endpoint's URL is ``https://`` on a public address.

A URL given by a user is a way into fanout's own network (SSRF): loopback, private,
link-local (the cloud's metadata service, 169.254.169.254), unique-local and every other
address that is not globally routable are refused, at registration and again before every
call, since a name's DNS can change in between (rebinding). The call then goes to the
address checked, not to a second lookup of the name. ``FANOUT_WEBHOOK_ALLOW_PRIVATE``
lifts both rules (and allows ``http://``) for development and tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fanout.errors import FanoutError

# A name to its addresses (the tests give one of their own).
Resolver = Callable[[str, int], Awaitable[list[str]]]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedAddress(FanoutError):
    """An endpoint fanout will not call; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """An endpoint's URL, taken apart: what the call needs."""

    scheme: str
    host: str  # a name, or an address without brackets
    port: int
    path: str  # with its query, at least "/"


def parse_url(url: str, *, allow_private: bool) -> Target:
    """The URL's parts; ``RefusedAddress`` if it is not an https:// URL with a host (http://
    too with ``allow_private``)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedAddress(f"not a URL fanout can call: {exc}") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise RefusedAddress("must be an https:// URL")
    if not parts.hostname:
        raise RefusedAddress("has no host")
    if parts.username or parts.password:
        raise RefusedAddress("must not carry a user or password")
    if parts.fragment:
        raise RefusedAddress("must not have a #fragment")
    try:  # a name goes on the wire (Host, SNI) as its ASCII (IDNA) form
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise RefusedAddress(f"{parts.hostname} is not a host name") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, host, port or default, path)


def refusal(address: IPAddress) -> str | None:
    """Why fanout will not call this address, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):  # an IPv4 address inside IPv6 is it
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address.sixtofour is not None:
            address = address.sixtofour
        elif address.is_site_local:
            return "a site-local address"
    if address == ipaddress.IPv4Address("169.254.169.254"):
        return "the cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address) and address in _UNIQUE_LOCAL:
        return "a unique-local address"
    checks = (
        ("a loopback", address.is_loopback),
        ("an unspecified", address.is_unspecified),
        ("a link-local", address.is_link_local),
        ("a multicast", address.is_multicast),
        ("a private", address.is_private),
        ("a reserved", address.is_reserved),
    )
    for name, holds in checks:
        if holds:
            return f"{name} address"
    if not address.is_global:  # shared (100.64.0.0/10) and other special ranges
        return "not a public address"
    return None


_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")


def literal(host: str) -> IPAddress | None:
    """The host as an address, if it is one."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses as the system resolves them."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def checked_addresses(
    target: Target, *, resolver: Resolver, allow_private: bool
) -> list[str]:
    """The target's addresses, every one checked; ``RefusedAddress`` naming the first one
    refused (one bad address among good ones is refused too: the connection could go to
    any), or a name that does not resolve."""
    found = literal(target.host)
    if found is not None:
        addresses = [str(found)]
    else:
        try:
            addresses = await resolver(target.host, target.port)
        except (OSError, UnicodeError) as exc:
            raise RefusedAddress(f"{target.host} does not resolve: {exc}") from None
        if not addresses:
            raise RefusedAddress(f"{target.host} does not resolve")
    if allow_private:
        return addresses
    for text in addresses:
        address = literal(text)
        why = "not an address" if address is None else refusal(address)
        if why is not None:
            # A name's addresses are not told (they would map a private network for
            # whoever may register an endpoint); a literal address is the user's own.
            named = text if found is not None else f"{target.host} resolves to such an address"
            raise RefusedAddress(
                f"{named}, {why}: webhooks go to public addresses only "
                "(FANOUT_WEBHOOK_ALLOW_PRIVATE=true allows others, for development)"
            )
    return addresses


async def check_url(url: str, *, resolver: Resolver, allow_private: bool) -> Target:
    """The URL's parts, once it and every address of its host are checked
    (``RefusedAddress`` otherwise)."""
    target = parse_url(url, allow_private=allow_private)
    await checked_addresses(target, resolver=resolver, allow_private=allow_private)
    return target
