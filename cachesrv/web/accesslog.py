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

import datetime as dt
import json
import logging
import sys
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger

from ..source import Outcome
from .keys import STATE
from .middleware import OUTCOME, UPSTREAM

ACCESS_LOGGER = "cachesrv.access"
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def server_options() -> dict[str, Any]:
    """`AppRunner` keyword arguments that install this access log (and its metrics)."""
    return {"access_log": logging.getLogger(ACCESS_LOGGER), "access_log_class": AccessLogger}


def access_record(
    request: web.BaseRequest, response: web.StreamResponse, seconds: float
) -> dict[str, Any]:
    """The fields of one access-log line."""
    outcome = request.get(OUTCOME)
    return {
        "remote": request.remote or "-",
        "method": request.method,
        # raw_path: the target as sent (absolute-form for proxy clients), not re-quoted.
        "target": request.raw_path,
        "status": response.status,
        "bytes": body_bytes(request, response),
        "duration": round(seconds, 6),
        "outcome": outcome.value if isinstance(outcome, Outcome) else None,
        "upstream": request.get(UPSTREAM),
        "user_agent": request.headers.get(hdrs.USER_AGENT),
    }


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
    """aiohttp's access-log hook: counts the response in the metrics, then logs one
    record to `cachesrv.access`. The text line is the message; `JsonFormatter`
    writes the record's fields instead (`--log-format json`)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            record = access_record(request, response, time)
            outcome = request.get(OUTCOME)
            if isinstance(outcome, Outcome) and isinstance(request, web.Request):
                request.app[STATE].metrics.served(
                    outcome, record["upstream"] or "", record["bytes"], time
                )
            if not self.logger.isEnabledFor(logging.INFO):
                return
            self.logger.info(
                '%s "%s %s" %d %d %.3fs %s %s "%s"',
                record["remote"],
                record["method"],
                _quote(record["target"]),
                record["status"],
                record["bytes"],
                record["duration"],
                record["outcome"] or "-",
                record["upstream"] or "-",
                _quote(record["user_agent"] or "-"),
                extra={"access": record},
            )
        except Exception:  # a logging failure must never fail a request
            self.logger.exception("access log failed")

    @property
    def enabled(self) -> bool:
        # The metrics depend on this hook, so it runs even when the logger is quiet.
        return True


def _quote(text: str) -> str:
    """Escape what could break a quoted field or forge a line (as nginx's log does)."""
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
