"""Structured logging: JSON lines carrying the request id of whatever request the code is serving."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("diffmesh_request_id", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, plus `extra=` fields and exceptions."""

    RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 6), "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        request_id = request_id_var.get()
        if request_id:
            out["request_id"] = request_id
        out.update({k: v for k, v in vars(record).items() if k not in self.RESERVED})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = request_id_var.get()
        return f"{text} [{request_id}]" if request_id else text


def resolve_format(fmt: str) -> str:
    """json | text; auto is text on a terminal, JSON otherwise (a launcher passes its own choice to its children)."""
    if fmt == "auto":
        return "text" if sys.stderr.isatty() else "json"
    return fmt


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    """fmt: json | text | auto (text on a terminal, JSON otherwise)."""
    fmt = resolve_format(fmt)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime


def request_id_from_headers(headers) -> str | None:
    """An incoming `x-request-id`, else the trace id of a W3C `traceparent` (version-traceid-parentid-flags)."""
    value = headers.get("x-request-id")
    if value:
        return value
    parent = headers.get("traceparent", "")
    parts = parent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        return parts[1]
    return None
