"""How the web app and the jobs talk to the agent."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any


class AgentUnavailable(Exception):
    """The agent's socket cannot be reached."""


class AgentRefused(Exception):
    """The agent answered with an error."""


class AgentClient:
    def __init__(self, socket_path: Path, timeout: float = 300.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def call(self, verb: str, **args: Any) -> Any:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.socket_path), limit=256 * 1024 * 1024),
                timeout=5,
            )
        except (OSError, TimeoutError) as exc:
            raise AgentUnavailable(
                f"the privileged agent is not reachable at {self.socket_path}: {exc}"
            ) from None
        try:
            writer.write(json.dumps({"verb": verb, "args": args}).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout=self.timeout)
        finally:
            writer.close()
        if not line:
            raise AgentUnavailable("the agent closed the connection without an answer")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise AgentRefused(answer.get("error", "unknown error"))
        return answer.get("result")

    @staticmethod
    def encode_files(files: dict[str, bytes]) -> dict[str, str]:
        return {name: base64.b64encode(content).decode() for name, content in files.items()}
