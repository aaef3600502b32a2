"""The service's logs: one line per request, plain text or JSON lines (``ALEXNET_LOG_FORMAT``), with the request's
id and trace id on every line logged while it is handled.

- ``text`` (the default): ``INFO:     service.requests: POST /predict 200 id=... model=alexnet version=3 ...``,
  uvicorn's own format, for a terminal.
- ``json`` (the container images set it): every line a JSON object — ``time`` (UTC, ISO 8601, milliseconds),
  ``level``, ``logger``, ``message``, and for the request line ``request_id``, ``trace_id``, ``method``,
  ``route``, ``status``, ``model``, ``version``, ``routing``, ``crops``, ``images``, ``timings_ms`` (``read``,
  ``preprocess``, ``queue``, ``inference``, ``postprocess``, ``total``) and, for a failed request, ``error``
  (what its answer said) and ``reason``. uvicorn's lines are JSON too (`uvicorn_log_config`).

The request line replaces uvicorn's access log (``ALEXNET_ACCESS_LOG`` turns it off): it is logged at INFO
for answers below 500 and for 503 (loading, overloaded: the service saying "not now") — a client's bad request
is one INFO line saying why, never a warning or a traceback, so a misbehaving client cannot flood the log above
INFO — and at ERROR for the other 5xx. Health probes and /metrics are logged at DEBUG only, whatever they answer
(an orchestrator calls them every few seconds).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from service import requestctx
from service.requestctx import RequestRecord

REQUESTS_LOGGER = "service.requests"
TEXT_FORMAT = "%(levelname)s:     %(name)s: %(message)s"
QUIET_ROUTES = ("/health/", "/v2/health/", "/metrics")  # logged at DEBUG: probes and scrapes


class RequestIdFilter(logging.Filter):
    """Puts the current request's id and trace id on every record logged while it is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = requestctx.current()
        if current is not None:
            if not hasattr(record, "request_id"):
                record.request_id = current.request_id
            if not hasattr(record, "trace_id") and current.trace_id:
                record.trace_id = current.trace_id
        return True


_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's extra fields, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """uvicorn's layout, with ``[request id]`` after the logger's name when the line is about a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = getattr(record, "_text", None)  # the request line: its fields written out
        if text is not None:
            return f"{record.levelname}:     {record.name}: {text}"
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id and record.name != REQUESTS_LOGGER:
            line = line.replace(f"{record.name}: ", f"{record.name}: [{request_id}] ", 1)
        return line


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure(level: str, fmt: str) -> None:
    """The service's loggers (``service.*``) get a handler in the chosen format unless the root logger has one;
    with JSON, uvicorn's handlers are switched to it too (for ``uvicorn --factory``; alexnet-serve configures
    them from the start with `uvicorn_log_config`)."""
    logger = logging.getLogger("service")
    logger.setLevel("DEBUG" if level == "trace" else level.upper())
    mine = [h for h in logger.handlers if getattr(h, "_alexnet", False)]
    if not mine and not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler._alexnet = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        mine = [handler]
    for handler in mine:
        handler.setFormatter(formatter(fmt))
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
    if fmt == "json":
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            for handler in logging.getLogger(name).handlers:
                if not isinstance(handler.formatter, JsonFormatter):
                    handler.setFormatter(JsonFormatter())
                if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
                    handler.addFilter(RequestIdFilter())


def uvicorn_log_config(fmt: str) -> dict[str, Any] | None:
    """uvicorn's logging configuration in JSON (None: uvicorn's own, for text)."""
    if fmt != "json":
        return None
    from uvicorn.config import LOGGING_CONFIG

    config = json.loads(json.dumps(LOGGING_CONFIG))
    for name in config["formatters"]:
        config["formatters"][name] = {"()": "service.logs.JsonFormatter"}
    return config


def log_request(record: RequestRecord) -> None:
    """The request's one line (see the module doc for its fields and level)."""
    logger = logging.getLogger(REQUESTS_LOGGER)
    status = record.status or 500
    route = record.route or record.path
    if route.startswith(QUIET_ROUTES):
        level = logging.DEBUG
    else:  # 503 is the service saying "not now" (loading, overloaded), not something broken
        level = logging.ERROR if status >= 500 and status != 503 else logging.INFO
    if not logger.isEnabledFor(level):
        return
    fields = record.fields()
    summary = f"{record.method} {route} {status}"
    parts = [summary, f"id={record.request_id}"]
    for key in ("trace_id", "model", "version", "routing", "crops", "images", "shadow"):
        if key in fields:
            value = fields[key]
            parts.append(f"{key}={','.join(map(str, value)) if isinstance(value, list) else value}")
    timings = fields["timings_ms"]
    if timings:
        parts.append(" ".join(f"{k}={v:.1f}ms" for k, v in timings.items()))
    if record.error:
        parts.append(f"error={record.error!r}")
    logger.log(level, summary, extra={"request": True, **fields, "_text": " ".join(parts)})
