"""Fetching image URLs for upstreams that need images inline, without becoming an SSRF proxy.

By default the gateway never fetches a URL a client sends: an ``image_url`` goes upstream as the URL it
is (Anthropic fetches it itself; OpenAI does). Some upstreams cannot fetch (a local Ollama or vLLM
server without internet, a provider that takes base64 only): for those the operator sets
``fetch_images = true`` on the provider, and this module fetches each http(s) image URL of a chat
request for one of its models and puts the image in the request as a ``data:`` URL, before any
translator sees it.

A client-chosen URL fetched from inside the operator's network is a server-side request forgery
waiting to happen (cloud metadata at 169.254.169.254, admin ports on loopback, the internal network).
So, for every URL and every redirect hop:

    step        | rule
    ------------+-----------------------------------------------------------------------------------------
    URL         | http or https only; a host; no user:password
    resolve     | the host is resolved once (``resolve``); EVERY address it gives must be public:
                | not private, loopback, link-local (metadata), shared (CGNAT), multicast, reserved,
                | unspecified, nor one of these inside an IPv4-mapped, 6to4 or Teredo IPv6 address
    connect     | to the checked address itself (the URL's host only as TLS SNI and ``Host``): a second
                | resolution that answers otherwise (DNS rebinding) is never made
    redirect    | 301/302/303/307/308 up to ``max_redirects``, each target checked from the top
    answer      | 200; ``content-type`` in ``allowed_types`` and the bytes' signature of that type;
                | at most ``max_bytes`` (refused from ``content-length`` or as soon as it is passed)
    time        | the whole fetch of one image, redirects included, within ``timeout``

``allow_private`` lifts the address rule (tests on loopback only; documented as unsafe). Any refusal or
failure is the client's 400 (``invalid_image_url``), as OpenAI answers an image it cannot download; the
request is not sent upstream.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urljoin, urlsplit

import httpx
import msgspec

from gateway import errors
from gateway.config import Config, ImagesConfig
from gateway.phases import Phase

if TYPE_CHECKING:
    from gateway.context import Context

__all__ = ["ImageFetchPhase", "ImageFetcher", "address_allowed", "image_phases", "inline_images"]

log = logging.getLogger("gateway.images")

#: host, port -> the addresses it resolves to
Resolver = Callable[[str, int], Awaitable[list[str]]]

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
#: the first bytes of each image type (webp: RIFF....WEBP)
_SIGNATURES: Final = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}


def address_allowed(address: str) -> bool:
    """Whether the gateway may connect to ``address`` for a client's URL: a public unicast address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None and not address_allowed(str(inner)):
            return False
    return ip.is_global and not ip.is_multicast


async def _resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _refused(url: str, why: str) -> errors.BadRequest:
    return errors.BadRequest(f"The image URL {url[:200]} cannot be used: {why}", param="messages",
                             code="invalid_image_url")


class ImageFetcher:
    """Fetches one image URL under the rules of the module docstring; ``resolve`` and ``allowed`` are
    seams for tests (the defaults: the system resolver, ``address_allowed``)."""

    def __init__(self, config: ImagesConfig, *, resolve: Resolver = _resolve,
                 allowed: Callable[[str], bool] | None = None) -> None:
        self.config = config
        self._resolve = resolve
        self._allowed = allowed or ((lambda _a: True) if config.allow_private else address_allowed)
        self._types = frozenset(config.allowed_types)

    async def fetch(self, url: str) -> tuple[str, bytes]:
        """(content type, bytes) of the image at ``url``. Raises BadRequest (``invalid_image_url``)."""
        try:
            async with asyncio.timeout(self.config.timeout):
                return await self._follow(url)
        except TimeoutError:
            raise _refused(url, f"it did not download within {self.config.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise _refused(url, f"it could not be downloaded ({type(exc).__name__})") from None

    async def _follow(self, url: str) -> tuple[str, bytes]:
        first = url
        for _ in range(self.config.max_redirects + 1):
            answer = await self._get(url, first)
            if isinstance(answer, tuple):
                return answer
            url = answer
        raise _refused(first, f"more than {self.config.max_redirects} redirects")

    async def _get(self, url: str, first: str) -> tuple[str, bytes] | str:
        """One hop: the image, or the URL it redirects to."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _refused(first, "only http and https URLs with a host are fetched")
        if parts.username is not None or parts.password is not None:
            raise _refused(first, "a URL with credentials is not fetched")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = await self._resolve(host, port)
        except OSError:
            raise _refused(first, f"its host {host} does not resolve") from None
        if not addresses:
            raise _refused(first, f"its host {host} does not resolve")
        bad = [a for a in addresses if not self._allowed(a)]
        if bad:
            log.warning("image URL refused: %s resolves to the non-public address %s", host, bad[0])
            raise _refused(first, "it points to a private, loopback, link-local or otherwise non-public "
                                  "address")
        address = addresses[0]
        literal = f"[{address}]" if ":" in address else address
        pinned = parts._replace(netloc=f"{literal}:{port}").geturl()
        headers = {"host": parts.netloc.rsplit("@", 1)[-1], "accept": ", ".join(sorted(self._types)),
                   "user-agent": "llm-gateway"}
        # a client per hop: a pooled connection to this address may have been opened for another name
        timeout = self.config.timeout
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=timeout) as c:
            request = c.build_request("GET", pinned, headers=headers, extensions={"sni_hostname": host})
            resp = await c.send(request, stream=True)
            try:
                if resp.status_code in _REDIRECTS:
                    location = resp.headers.get("location")
                    if not location:
                        raise _refused(first, f"it redirects ({resp.status_code}) without a location")
                    return urljoin(url, str(location))
                if resp.status_code != 200:
                    raise _refused(first, f"it answered {resp.status_code}")
                ctype = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()
                if ctype not in self._types:
                    raise _refused(first, f"its content type {ctype or '(none)'} is not an accepted image")
                return ctype, await self._body(resp, first, ctype)
            finally:
                await resp.aclose()

    async def _body(self, resp: httpx.Response, url: str, ctype: str) -> bytes:
        limit = self.config.max_bytes
        declared = resp.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _refused(url, f"it is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.aiter_raw():
            size += len(chunk)
            if size > limit:
                raise _refused(url, f"it is larger than {limit} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        signatures = _SIGNATURES.get(ctype)
        if signatures is not None and not data.startswith(signatures):
            raise _refused(url, f"its bytes are not {ctype}")
        if ctype == "image/webp" and data[8:12] != b"WEBP":
            raise _refused(url, "its bytes are not image/webp")
        return data


_decode_top = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


async def inline_images(body: bytes, fetcher: ImageFetcher) -> bytes | None:
    """``body`` (an OpenAI chat request) with each http(s) ``image_url`` fetched and put inline as a
    ``data:`` URL; None when it has none. Raises BadRequest."""
    try:
        top = _decode_top(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None  # the translator answers the malformed request
    parts = [part for part in _image_parts(top.get("messages"))
             if str(part["image_url"].get("url", "")).lower().startswith(("http://", "https://"))]
    if not parts:
        return None
    limit = fetcher.config.max_images
    if len(parts) > limit:
        raise errors.BadRequest(f"The request has {len(parts)} image URLs; at most {limit} are fetched",
                                param="messages", code="too_many_images")
    images = await asyncio.gather(*(fetcher.fetch(p["image_url"]["url"]) for p in parts))
    for part, (ctype, data) in zip(parts, images, strict=True):
        part["image_url"]["url"] = f"data:{ctype};base64,{base64.b64encode(data).decode('ascii')}"
    return _encode(top)


def _image_parts(messages: object) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not isinstance(messages, list):
        return out
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url" \
                    and isinstance(part.get("image_url"), dict):
                out.append(part)
    return out


class ImageFetchPhase(Phase):
    """Inlines the image URLs of chat requests for the models some of whose deployments sit on a provider
    with ``fetch_images`` (every other request passes at the cost of one set lookup). Runs after
    ``admit``: the limits estimate the client's request, not the images put into it."""

    name = "prepare"
    is_async = True

    def __init__(self, models: frozenset[str], fetcher: ImageFetcher) -> None:
        self.models = models
        self.fetcher = fetcher

    def on_request(self, ctx: Context) -> Awaitable[None] | None:
        if ctx.endpoint != "chat" or (ctx.route_model or ctx.fields.model) not in self.models:
            return None
        if b'"image_url"' not in ctx.body:  # PERF: no decode for a request without images
            return None
        return self._inline(ctx)

    async def _inline(self, ctx: Context) -> None:
        body = await inline_images(ctx.body, self.fetcher)
        if body is not None:
            ctx.body = body


def image_phases(config: Config) -> list[Phase]:
    """The image phase when a provider has ``fetch_images`` (for the models served on one, directly, as
    a deployment or through a fallback); none otherwise."""
    fetching = {name for name, p in config.providers.items() if p.fetch_images}
    if not fetching:
        return []
    direct = {name for name, m in config.models.items()
              if any(d.provider in fetching for d in m.routing().deployments)}
    models = set(direct)
    changed = True
    while changed:  # a model whose fallbacks (at any depth) reach such a model
        changed = False
        for name, m in config.models.items():
            if name not in models and any(f in models for f in m.fallbacks):
                models.add(name)
                changed = True
    return [ImageFetchPhase(frozenset(models), ImageFetcher(config.images))]
