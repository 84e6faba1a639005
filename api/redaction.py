"""Credentials in URIs never leave the process: `http://user:secret@host` is told as `http://***@host`.

A tracking URI may carry its credentials (MLFLOW_TRACKING_URI=http://user:secret@mlflow:5000), and MLflow
quotes it in its errors, which /ready and the 503 bodies passed on verbatim. Everything the service says
about a URI goes through `redact`, and `python -m api` puts `RedactingFilter` on its log handler, so
that the libraries' own log lines are redacted too.
"""

from __future__ import annotations

import logging
import re

# scheme://userinfo@ — userinfo is everything up to the first @ that comes before the path.
USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    return USERINFO.sub(r"\g<scheme>***@", text)


class RedactingFilter(logging.Filter):
    """Redacts each record's final message (its arguments merged in) before a handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
