"""Who may use the web app: requests from this machine always; from another machine only with the server's token.

``fastadapt serve --allow-remote`` makes a random token (:func:`new_token`, 32 bytes from :mod:`secrets`)
and prints it once at start. A request whose peer address is not a loopback address must carry it, as
``Authorization: Bearer <token>``, a ``token`` query parameter, or the ``fastadapt_token`` cookie that a
page opened with ``?token=<token>`` receives (HttpOnly, SameSite=Strict), so the page and its images work
in a remote browser; anything else is a 401 with one line. Tokens are compared in constant time. Without
``--allow-remote`` the app binds to a loopback address and no token is made.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any

COOKIE = "fastadapt_token"


def new_token() -> str:
    """A fresh random token (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


def is_local(host: str | None) -> bool:
    """Whether a peer address is this machine (a loopback address, IPv4 or IPv6, also IPv4-mapped)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def presented(request: Any) -> str | None:
    """The token a request carries (header, query parameter or cookie), or None."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return str(auth[7:].strip())
    return request.query_params.get("token") or request.cookies.get(COOKIE)


def allowed(request: Any, token: str | None) -> bool:
    """Whether ``request`` may be served: every request when ``token`` is None (the app is bound to a loopback
    address); else local peers always, others when they present ``token``."""
    client = request.client
    if token is None or is_local(client.host if client is not None else None):
        return True
    given = presented(request)
    return given is not None and secrets.compare_digest(given.encode(), token.encode())


DENIED = (
    "this app answers other machines only with its token (printed by fastadapt serve at start): send "
    "Authorization: Bearer <token>, or open the page with ?token=<token>"
)


__all__ = ["COOKIE", "DENIED", "allowed", "is_local", "new_token", "presented"]
