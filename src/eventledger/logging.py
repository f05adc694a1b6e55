"""How a service's log lines look: a timestamp on every line, text or JSON lines.

`logging_config(prefix, log_format)` is the `logging.config.dictConfig` document that
`eventledger serve` hands to uvicorn:

* `text` (default): `2026-12-03T06:45:12.123Z INFO     stream | message key=value …`,
  the time in UTC with its zone, the service's name as prefix (`up` adds its own prefix and
  asks for none).
* `json`: one JSON object per line, `{"time", "level", "logger", "message", …}` plus the
  structured fields a line carries (`extra=` of the logging call: a request's `method`,
  `path`, `status`, `ms`, `request_id`), for log shippers.

Either way a line is one line whatever a client sent: JSON escapes control and non-ASCII
characters, and the text format quotes a field value that holds any (as a JSON string).

Structured fields are passed as `extra={"fields": {...}}`: the text format appends them as
`key=value`, the JSON format as members. Nothing here ever sees a token: callers log names.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Final

LOG_FORMATS: Final = ("text", "json")
FIELDS: Final = "fields"  # the `extra=` key of a line's structured fields


def utc_timestamp(created: float) -> str:
    """RFC 3339 in UTC with milliseconds: `2026-12-03T06:45:12.123Z`."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, FIELDS, None)
    return fields if isinstance(fields, dict) else {}


def _text(value: Any) -> str:
    """A field's value as text, quoted (JSON) when it could be misread: empty, with spaces,
    quotes, `=`, control or non-ASCII characters (a client's path may hold any of them)."""
    text = str(value)
    if text and text.isascii() and text.isprintable() and not any(c in text for c in ' "='):
        return text
    return json.dumps(text)


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> <prefix><message> key=value …`."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{utc_timestamp(record.created)} {record.levelname:<8} {self.prefix}"
            f"{record.getMessage()}"
        )
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{key}={_text(value)}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring)."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
        }
        if self.service:
            line["service"] = self.service
        line["message"] = record.getMessage()
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def logging_config(
    service: str, *, prefix: str, log_format: str = "text", log_requests: bool = False
) -> dict[str, Any]:
    """The dictConfig of a service's process: every line timestamped, in `log_format`
    ("text" with `prefix` before each message, or "json" naming `service`); uvicorn's access
    log off: services/requestlog.py writes the request lines, one per request with
    `log_requests` (~16 µs of CPU each, measured), else those of 5xx answers only."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter", "service": service}
        if log_format == "json"
        else {"()": f"{__name__}.TextFormatter", "prefix": prefix}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "formatter": "default",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "eventledger.requests": {"level": "INFO" if log_requests else "WARNING"},
        },
        "root": {"handlers": ["default"], "level": "INFO"},
    }
