"""The CachesrvError tree. Each error carries its fields and reads well as `str()`.

The web middleware maps these to HTTP answers and the CLI to exit codes; the
domain code only raises.
"""

from __future__ import annotations

from .models import Diagnosis


class CachesrvError(Exception):
    """Base of every error cachesrv raises on purpose."""

    #: HTTP status the web layer answers with.
    status = 500
    #: Short reason phrase for the status line (clients print it).
    reason = "Internal Server Error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(CachesrvError):
    """The configuration is invalid; names the file and key."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        where = ":".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.file = file
        self.key = key


class BadRequest(CachesrvError):
    status = 400
    reason = "Bad Request"


class Forbidden(CachesrvError):
    """A host or path outside the configured upstreams (never an open proxy)."""

    status = 403
    reason = "Not a configured upstream"


class MethodNotAllowed(CachesrvError):
    status = 405
    reason = "Method Not Allowed"

    def __init__(self, message: str, *, allowed: tuple[str, ...] = ("GET", "HEAD")) -> None:
        super().__init__(message)
        self.allowed = allowed


class Unauthorized(CachesrvError):
    status = 401
    reason = "Unauthorized"


class AccessDenied(CachesrvError):
    status = 403
    reason = "Forbidden"


class NotFound(CachesrvError):
    status = 404
    reason = "Not Found"


class NotCached(CachesrvError):
    """Offline miss: the diagnosis says what is missing and how to fetch it."""

    status = 404
    reason = "Not in offline seed"

    def __init__(
        self,
        diagnosis: Diagnosis,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> None:
        super().__init__(f"not in offline seed: {diagnosis.key.url} ({diagnosis.reason.value})")
        self.diagnosis = diagnosis
        #: A client-specific answer (the snap store's error shapes): extra headers, and
        #: a body with its exact Content-Type that replaces the diagnosis text.
        self.headers = headers or {}
        self.body = body
        self.content_type = content_type


class UpstreamError(CachesrvError):
    """The upstream failed (connection, status 5xx, truncated body). Nothing is recorded."""

    status = 502
    reason = "Bad Gateway"

    def __init__(self, upstream: str, url: str, detail: str) -> None:
        super().__init__(f"upstream {upstream!r} failed for {url}: {detail}")
        self.upstream = upstream
        self.url = url
        self.detail = detail


class UpstreamTimeout(UpstreamError):
    status = 504
    reason = "Gateway Timeout"


class UpstreamStatus(CachesrvError):
    """Upstream answered a client error (404, 410...): passed through, not recorded."""

    def __init__(self, upstream: str, url: str, status: int, reason: str) -> None:
        super().__init__(f"upstream {upstream!r} answered {status} {reason} for {url}")
        self.status = status
        self.reason = reason or "Upstream error"
        self.upstream = upstream
        self.url = url


class IntegrityError(UpstreamError):
    """A body did not match the hash its upstream declared; it was not recorded."""

    reason = "Upstream body failed hash check"


class InsufficientStorage(CachesrvError):
    """A body cannot fit in the store (`max_size`, `min_free`, a full disk); nothing
    partial is kept. The message says what is full, what is needed, and what frees it."""

    status = 507
    reason = "Insufficient Storage"


class StoreError(CachesrvError):
    """The store on disk is unusable or inconsistent."""


class SeedError(CachesrvError):
    """A seed bundle is invalid; `problems` lists everything wrong with it."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class WrapError(CachesrvError):
    """`cachesrv wrap` cannot run the build as asked (server, namespace, command)."""
