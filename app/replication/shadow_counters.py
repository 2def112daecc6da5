"""Mail this node accepted without a shadow copy, counted in a small file (no database:
shadowing must outlive a database outage); the milter writes it, the agent's status reads it."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


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

    def unprotected(self, reason: str) -> None:
        with self.lock:
            self.data["unprotected_total"] += 1
            self.data["last_unprotected_at"] = time.time()
            self.data["last_reason"] = reason[:300]
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "w") as out:
                json.dump(self.data, out)
            os.replace(tmp, self.path)


def read_counters(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"unprotected_total": 0}
    return data if isinstance(data, dict) else {"unprotected_total": 0}
