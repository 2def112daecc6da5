"""The logging setup of every entry point: syslog priorities when stderr is the journal, the time
only when it is not.

systemd sets JOURNAL_STREAM to the device and inode of the stream it connected to stdout/stderr;
journald reads a leading ``<N>`` on each line as that line's priority (SyslogLevelPrefix=, on by
default) and stamps each line itself, so then a line carries its priority and no time of its own.
"""

from __future__ import annotations

import logging
import os
import sys
from types import TracebackType

# Syslog priorities: "<3>" reaches `journalctl -p err`, "<4>" `journalctl -p warning`.
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_CRITICAL = 2

# Libraries that log a line per request or query: their warnings and errors only.
_QUIET = ("piccolo", "httpx")


def priority(level: int) -> int:
    return _PRIORITIES.get(level, _CRITICAL if level > logging.ERROR else 7)


def journal_stream() -> bool:
    """Is stderr the journal's stream (not merely a descendant's inherited variable)?"""
    try:
        stderr = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{stderr.st_dev}:{stderr.st_ino}"


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # Every line of a traceback too: journald takes each line as its own entry.
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def configure(level: int = logging.INFO) -> None:
    """Send every logger (ours, uvicorn's, Litestar's) through one stderr handler; an uncaught
    exception is logged as critical rather than printed bare."""
    journal = journal_stream()
    handler = logging.StreamHandler(sys.stderr)
    if journal:
        handler.setFormatter(_JournalFormatter("%(name)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("mailrelay").critical("uncaught exception", exc_info=(kind, exc, tb))


def error_line(text: str) -> None:
    """A command's one-line error on stderr, as an error for the journal too."""
    prefix = f"<{priority(logging.ERROR)}>" if journal_stream() else ""
    print(f"{prefix}{text}", file=sys.stderr, flush=True)
