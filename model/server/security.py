"""What every HTTP request must pass before any route sees it (`RequestGuard`, an ASGI middleware).

- Host: a web page that rebinds its own domain name to 127.0.0.1 (DNS rebinding) could otherwise read the
  server's replies. Its requests carry that name in `Host`, so only loopback names, IP addresses (a page can
  only name an address it was itself loaded from) and the names the server was told (`allowed_hosts`, which
  "*" turns off) are let through.
- Content-Type: a browser sends a cross-site POST without asking first when it is a form or text/plain, so a
  request with a body must say `application/json` (UTF-8), or it gets a 415 before anything runs.
- Size and time: a body over `max_body_bytes` is a 413 (at once when Content-Length says so), and one that
  does not arrive within `read_timeout` seconds a 408. A request head over `MAX_HEAD_BYTES` is a 431: h11
  refuses one that arrives slowly, but takes one that comes in a single read, whatever its size.
"""
from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable

from .errors import APIError

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_HEAD_BYTES = 16 * 1024  # as h11's buffer for a head still arriving


def host_name(host: str) -> str:
    """The name in a Host header, without port, brackets or trailing dot, lowercased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")


def host_allowed(host: str, allowed: frozenset[str]) -> bool:
    name = host_name(host)
    if "*" in allowed or name in allowed or name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _media_type_error(content_type: str) -> APIError | None:
    media_type, *params = (part.strip().lower() for part in content_type.split(";"))
    charsets = [p.partition("=")[2].strip('"') for p in params if p.startswith("charset=")]
    if media_type == "application/json" and all(c in ("utf-8", "utf8") for c in charsets):
        return None
    got = f"got {content_type!r}" if content_type else "got none"
    return APIError(415, f"the request body must be JSON: send 'Content-Type: application/json' ({got})",
                    code="unsupported_media_type")


class RequestGuard:
    """The checks above, in front of `app`; each refusal is an OpenAI error object."""

    def __init__(self, app, *, allowed_hosts: Iterable[str] = (), max_body_bytes: int, read_timeout: float):
        self.app = app
        self.allowed = frozenset(host_name(h) if h != "*" else h for h in allowed_hosts)
        self.max_body_bytes, self.read_timeout = max_body_bytes, read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        error = self._refusal(scope)
        if error is not None:
            return await error.response()(scope, receive, send)
        await self.app(scope, self._bounded(receive), send)

    def _refusal(self, scope) -> APIError | None:
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) + sum(
            len(k) + len(v) + 4 for k, v in scope["headers"])  # each as "name: value\r\n"
        if head > MAX_HEAD_BYTES:
            return APIError(431, f"the request's headers exceed this server's limit of {MAX_HEAD_BYTES} bytes",
                            code="request_header_fields_too_large", headers={"Connection": "close"})
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host")
        if host is not None and not host_allowed(host, self.allowed):
            return APIError(400, f"the Host header {host!r} is not one this server answers to; start it with "
                                 f"--allowed-hosts {host_name(host)} if that name is meant to reach it",
                            code="host_not_allowed")
        if scope["method"] not in BODY_METHODS:
            return None
        # Only POST routes take bodies: PUT or PATCH goes on to the router's 405, whatever it carries.
        media_error = _media_type_error(headers.get("content-type", "")) if scope["method"] == "POST" else None
        if media_error is not None:
            return media_error
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> APIError:
        return APIError(413, f"the request body exceeds this server's limit of {self.max_body_bytes} bytes",
                        code="request_too_large", headers={"Connection": "close"})

    def _bounded(self, receive):
        """`receive`, failing the request once its body exceeds the size limit or its read time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout
        received, body_done = 0, False

        async def bounded():
            nonlocal received, body_done
            if body_done:  # after the body: disconnect watchers wait as long as they like
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                raise APIError(408, f"the request body did not arrive within {self.read_timeout:g} s",
                               code="request_timeout", headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large()
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        return bounded
