"""Mail this node accepted without a shadow copy, counted in a small file (no database:
shadowing must outlive a database outage); the milter writes it, the agent's status reads it.

The file is replaced whole (a new file, fsync'ed, renamed over the old one, the directory
fsync'ed), so a power cut leaves the last count written, never an empty file that would read as
0. With the peer down every message is unprotected: the first of a burst is written at once,
the rest at most once every FLUSH_SECONDS, so the count on disk lags by at most that much.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from app.durable import replace_file

log = logging.getLogger("mailrelay.shadow.milter")
FLUSH_SECONDS = 1.0


class Counters:
    """Unprotected mail, in a small file (no database: shadowing must outlive its outage)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        try:
            self.data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}
        self.data.setdefault("unprotected_total", 0)
        self.written_at = -FLUSH_SECONDS
        self.pending: threading.Timer | None = None
        atexit.register(self.flush)

    def unprotected(self, reason: str) -> None:
        with self.lock:
            self.data["unprotected_total"] += 1
            self.data["last_unprotected_at"] = time.time()
            self.data["last_reason"] = reason[:300]
            if self.pending is not None:
                return  # the write it waits for takes this count too
            wait = self.written_at + FLUSH_SECONDS - time.monotonic()
            if wait <= 0:
                self._write()
                return
            self.pending = threading.Timer(wait, self.flush)
            self.pending.daemon = True
            self.pending.start()

    def flush(self) -> None:
        """Write what a pending write would (at the timer, and when the process ends)."""
        with self.lock:
            if self.pending is None:
                return
            self.pending.cancel()
            self.pending = None
            self._write()

    def _write(self) -> None:
        try:
            self._replace()
        except OSError as exc:
            # The count stays in memory and goes with the next write; the mail is not refused.
            log.error("cannot write the unprotected-mail count to %s: %s", self.path, exc)

    def _replace(self) -> None:
        replace_file(self.path, json.dumps(self.data).encode(), 0o644)
        self.written_at = time.monotonic()


def read_counters(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"unprotected_total": 0}
    return data if isinstance(data, dict) else {"unprotected_total": 0}
