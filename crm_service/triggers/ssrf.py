"""The SSRF guard of webhooks: which receiver URLs are allowed, checked again at delivery.

A receiver must be public: a URL whose host resolves to a private, loopback, link-local or
multicast address is refused unless its host is in ``CRM_WEBHOOK_ALLOW_HOSTS``. Delivery checks
the URL again and connects to the checked address, so DNS rebinding does not get around it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from crm_service.errors import ValidationError

MAX_URL = 2048


@dataclass(frozen=True)
class Target:
    """A checked webhook URL: where to connect, and what to send as Host and SNI."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


def _blocked(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(url: str, allow_hosts: frozenset[str], *,
              resolve: bool = True) -> Target:
    """Parse and vet a webhook URL; ValidationError says what is wrong.

    Refused: schemes other than https (http only for allow-listed hosts), credentials in the
    URL, fragments, and any host that resolves to a private, loopback, link-local, multicast or
    otherwise non-public address, unless the host is in ``CRM_WEBHOOK_ALLOW_HOSTS``. Delivery
    checks again and connects to the checked address, so DNS rebinding does not get around it.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise ValidationError(f"url: an absolute http(s) URL of at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"url: {exc}") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise ValidationError("url: must be an absolute https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValidationError("url: must not carry credentials (user:password@); "
                              "verify deliveries with the signing secret instead")
    if parts.fragment:
        raise ValidationError("url: must not have a #fragment")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValidationError("url: must not contain spaces or control characters")
    allowed = host in allow_hosts
    if parts.scheme == "http" and not allowed:
        raise ValidationError("url: must use https (plain http only for hosts in "
                              "CRM_WEBHOOK_ALLOW_HOSTS)")
    port = port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    addresses: tuple[str, ...] = ()
    if resolve:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ValidationError(f"url: the host {host!r} does not resolve ({exc})") from None
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise ValidationError(f"url: the host {host!r} does not resolve")
        if not allowed:
            bad = [a for a in addresses if _blocked(a)]
            if bad:
                raise ValidationError(
                    f"url: {host!r} resolves to a private, loopback or link-local address "
                    f"({bad[0]}); receivers must be public, or their host allow-listed in "
                    "CRM_WEBHOOK_ALLOW_HOSTS")
    return Target(parts.scheme, host, port, path, addresses)
