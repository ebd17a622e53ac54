"""The access log: one line per request, as text or as one JSON object per line.

Each line carries the client, method, target, status, body bytes, duration, and
for proxy requests the `Outcome` and upstream the handler and error middleware
stashed on the request. The same hook counts served bytes and request durations
in the metrics: it runs once per response, after the last byte went out, so it
costs nothing on the serving path.

`setup_logging("json")` makes every log record of the process (not only access
lines) a JSON object on its own line, for journald and log shippers.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import re
import sys
import time
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger

from ..sources.base import Outcome
from .keys import STATE
from .middleware import OUTCOME, UPSTREAM

ACCESS_LOGGER = "cachesrv.access"
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def server_options(log_format: str = "text") -> dict[str, Any]:
    """`AppRunner` keyword arguments that install this access log (and its metrics)."""
    return {
        "access_log": logging.getLogger(ACCESS_LOGGER),
        "access_log_class": AccessLogger,
        "access_log_format": log_format,
    }


def access_record(
    request: web.BaseRequest, response: web.StreamResponse, seconds: float
) -> dict[str, Any]:
    """The fields of one access-log line."""
    outcome = request.get(OUTCOME)
    return {
        "remote": request.remote or "-",
        "method": request.method,
        # raw_path: the target as sent (absolute-form for proxy clients), not re-quoted;
        # inside a CONNECT tunnel, the https:// URL it stands for.
        "target": _target(request),
        "status": response.status,
        "bytes": body_bytes(request, response),
        "duration": round(seconds, 6),
        "outcome": outcome.value if isinstance(outcome, Outcome) else None,
        "upstream": request.get(UPSTREAM),
        "user_agent": request.headers.get(hdrs.USER_AGENT),
    }


def _target(request: web.BaseRequest) -> str:
    target = redact(request.raw_path)
    transport = request.transport
    tunnelled = transport is not None and transport.get_extra_info("ssl_object") is not None
    return f"https://{request.host}{target}" if tunnelled and target.startswith("/") else target


_CREDENTIAL = re.compile(
    r"([?&](?:token|access_token|admin_token|auth|authorization|signature|sig)=)[^&#]*", re.I
)


def redact(target: str) -> str:
    """A request target with the values of credential-like query parameters replaced:
    a token sent in a URL (which the API refuses) never reaches the log."""
    return _CREDENTIAL.sub(r"\1[redacted]", target)


def body_bytes(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """Body bytes sent. `Content-Length` when the response declared one (a file sent
    with sendfile never passes through the writer's byte count); otherwise what the
    writer counted, which for a chunked stream includes headers and chunk framing."""
    if request.method == hdrs.METH_HEAD or response.status in (204, 304) or response.status < 200:
        return 0
    if response.content_length is not None:
        return response.content_length
    return response.body_length


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access-log hook: counts the response in the metrics, then writes
    one line to the access sink: text (the message a `cachesrv.access` log record
    would have) or, with `--log-format json`, the record's fields as JSON.

    aiohttp makes one of these per connection; `log_format` is the server's
    "text" or "json" (passed as AppRunner's `access_log_format`)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            record = access_record(request, response, time)
            outcome = request.get(OUTCOME)
            if isinstance(outcome, Outcome) and isinstance(request, web.Request):
                request.app[STATE].metrics.served(
                    outcome, record["upstream"] or "", record["bytes"], time
                )
            if self.logger.isEnabledFor(logging.INFO):
                SINK.write(record, json_lines=self.log_format == "json")
        except Exception:  # a logging failure must never fail a request
            self.logger.exception("access log failed")

    @property
    def enabled(self) -> bool:
        # The metrics depend on this hook, so it runs even when the logger is quiet.
        return True


def _text_message(record: dict[str, Any]) -> str:
    return '%s "%s %s" %d %d %.3fs %s %s "%s"' % (  # noqa: UP031 - one format, hot path
        record["remote"],
        record["method"],
        _quote(record["target"]),
        record["status"],
        record["bytes"],
        record["duration"],
        record["outcome"] or "-",
        record["upstream"] or "-",
        _quote(record["user_agent"] or "-"),
    )


class AccessSink:
    """Formats access lines without building `logging.LogRecord`s and writes them to
    stderr in batches: at thousands of hits a second the logging module's per-record
    work and a write system call per line cost more than serving the hit.

    Lines look exactly like the process's other log lines (`setup_logging`'s text
    format, or `JsonFormatter`'s objects). They are flushed when `interval` seconds
    have passed since the last flush (checked on each line), by the server's
    flush task twice a second, and at exit. One sink per process: stderr is one.
    """

    def __init__(self, interval: float = 0.5, max_buffer: int = 64 * 1024) -> None:
        self.interval = interval
        self.max_buffer = max_buffer
        self._lines: list[str] = []
        self._size = 0
        self._last_flush = time.monotonic()
        self._stamp_second = -1
        self._stamp = ""

    def write(self, record: dict[str, Any], *, json_lines: bool) -> None:
        now = time.time()
        if json_lines:
            data: dict[str, Any] = {
                "time": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="milliseconds"),
                "level": "info",
                "logger": ACCESS_LOGGER,
                "message": f"{record['method']} {record['target']} {record['status']}",
            }
            data.update(record)
            line = json.dumps(data, ensure_ascii=False, default=str)
        else:
            second = int(now)
            if second != self._stamp_second:
                self._stamp_second = second
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            millis = int((now - second) * 1000)
            line = f"{self._stamp},{millis:03d} INFO {ACCESS_LOGGER}: {_text_message(record)}"
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.max_buffer or time.monotonic() - self._last_flush >= self.interval:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        self._size = 0
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or gone: drop the lines, keep serving
            pass


SINK = AccessSink()
atexit.register(SINK.flush)


def _quote(text: str) -> str:
    """Escape what could break a quoted field or forge a line (as nginx's log does)."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text  # the common case, without a per-character walk
    return "".join(
        "\\" + c
        if c in '"\\'
        else c
        if c.isprintable()
        else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and for access
    records the access fields at top level. Never more than one line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            data["message"] = f"{access['method']} {access['target']} {access['status']}"
            data.update(access)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def setup_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Send the process's log records to stderr, as text lines or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def log_line(message: str, log_format: str) -> str:
    """A line for stderr outside logging (the start-up announcement) in `log_format`."""
    if log_format != "json":
        return message
    return JsonFormatter().format(
        logging.LogRecord("cachesrv.serve", logging.INFO, __file__, 0, message, None, None)
    )
