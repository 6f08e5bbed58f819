"""Logging in the seed's two formats, with secrets scrubbed from every line.

Basic:   ``2024/03/21 15:04:05 Processing image ID 1 with prompt: a beautiful sunset``
Verbose: ``2024/03/21 15:04:05 generator.py:123: Processing image ID 1 ...``

Lines go to stderr, like Go's `log` package. The redaction filter is the last line of
defence: code never formats a secret on purpose, but a driver or HTTP error message
might quote one, so every configured secret (in each form `listener.sanitize.secret_forms`
lists: as configured, stripped, JSON-escaped, base64, in any letter case; a WholeToken
only as a whole token) and anything shaped like an `X-Key` / `X-Secret` header is
replaced by `***` before output.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from listener.sanitize import redact, secret_forms

DATE_FORMAT = "%Y/%m/%d %H:%M:%S"
BASIC_FORMAT = "%(asctime)s %(message)s"
VERBOSE_FORMAT = "%(asctime)s %(filename)s:%(lineno)d: %(message)s"

log = logging.getLogger("listener")


class Formatter(logging.Formatter):
    """The seed's formats, with the date formatted once per second, not once per line."""

    _cached = (-1, "")  # (second, its date): one tuple, so threads never see half of it

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second, date = self._cached
        if int(record.created) != second:
            date = super().formatTime(record, datefmt)
            self._cached = (int(record.created), date)
        return date


class RedactSecrets(logging.Filter):
    """Replace every known secret in a record's final text by `***`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = secret_forms(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = redact(text, self.secrets), None
        return True


def setup_logging(*, verbose: bool = False, secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once, for the CLI and the service alike."""
    # No format here shows a thread's or a process's name: not looked up for each record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter(VERBOSE_FORMAT if verbose else BASIC_FORMAT, DATE_FORMAT))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Libraries speak only when something is wrong, even in verbose mode: their debug
    # lines would quote request headers and connection strings.
    for noisy in ("httpx", "httpcore", "hypercorn", "psycopg", "psycopg.pool", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
