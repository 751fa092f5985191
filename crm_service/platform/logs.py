"""Structured logs: one JSON object per line (``CRM_LOG_FORMAT=json``, the default) or text.

What may appear in a log line is decided here and at the call sites: request lines carry the
request id, method, route *template* (``/v1/customers/<customer_id>``, never the path with a
customer id), status, latency and the API key's public id (never the key). Messages name runs,
webhooks and deliveries by id. No email, phone, name, key or customer id is logged;
``tests/test_logs.py`` checks that with canaries.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

# Fields passed with ``extra=`` that become top-level JSON keys.
FIELDS = ("request_id", "method", "route", "status", "duration_ms", "key_id", "run_id",
          "webhook_id", "delivery_id", "event", "bytes", "customer_ref", "customer_refs",
          "matches", "reason")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...FIELDS, "exc"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        out = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value...``: the same fields as the JSON lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as text, with the :data:`FIELDS` it carries appended as key=value."""
        line = super().format(record)
        extra = " ".join(f"{name}={record.__dict__[name]}" for name in FIELDS
                         if record.__dict__.get(name) is not None)
        if not extra:
            return line
        head, sep, tail = line.partition("\n")  # after the message, before a traceback
        return f"{head} {extra}{sep}{tail}"


def configure(level: str = "INFO", fmt: str | None = None) -> None:
    """Send the root logger to stderr in the chosen format (idempotent)."""
    fmt = (fmt or os.environ.get("CRM_LOG_FORMAT") or "json").strip().lower()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "text":
        handler.setFormatter(TextFormatter())
    else:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_crm", False)]:
        root.removeHandler(old)
    handler._crm = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)

    # pgserver logs every pg_ctl command line at INFO; keep those for debugging only.
    logging.getLogger("pgserver").setLevel(max(logging.WARNING, root.level))
