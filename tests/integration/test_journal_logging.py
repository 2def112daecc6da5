"""Every entry point logs through app.logsetup: under systemd (JOURNAL_STREAM names stderr) each
line starts with its syslog priority and has no time of its own; on a terminal it keeps the time.

There is no journald on the test machine (PID 1 is not systemd), so these tests speak the
protocol journald relies on: the JOURNAL_STREAM variable and the "<N>" prefix, nothing faked.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def run_logged(tmp_path: Path, module: str, *args: str, journal: bool, env: dict[str, str]):
    """Run `python -m module args` with stderr in a file; with journal=True, JOURNAL_STREAM
    names that file as systemd names the journal's stream. Returns (exit status, stderr lines)."""
    err_path = tmp_path / f"stderr-{module}-{len(list(tmp_path.iterdir()))}"
    with err_path.open("w") as err:
        stat = os.fstat(err.fileno())
        child_env = {**os.environ, **env}
        child_env.pop("JOURNAL_STREAM", None)
        if journal:
            child_env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        result = subprocess.run(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=child_env,
            timeout=60,
            check=False,
        )
    return result.returncode, err_path.read_text().splitlines()


def test_in_the_journal_a_warning_is_priority_4_and_an_error_priority_3_without_a_time(
    tmp_path,
):
    # A job's warning: ingest-logs finds no Postfix log where POSTFIX_LOG_FILE says.
    status, lines = run_logged(
        tmp_path,
        "app.cli",
        "ingest-logs",
        journal=True,
        env={"POSTFIX_LOG_FILE": str(tmp_path / "no-such.log")},
    )
    assert status == 0, lines
    assert any(
        line.startswith("<4>mailrelay.ingest ingest-logs") and "no log file yet" in line
        for line in lines
    ), lines
    # A service's error (the VRRP event reader refuses a bad setting) and a command's one-line
    # error (mailrelay with the same bad setting).
    status, vrrp_lines = run_logged(
        tmp_path, "app.cluster.vrrp", journal=True, env={"RETENTION_DAYS": "soon"}
    )
    assert status == 1
    assert vrrp_lines == ["<3>mailrelay.vrrp RETENTION_DAYS must be an integer, got 'soon'"]
    status, cli_lines = run_logged(
        tmp_path, "app.cli", "migrate", journal=True, env={"RETENTION_DAYS": "soon"}
    )
    assert status == 1
    assert cli_lines == ["<3>mailrelay: RETENTION_DAYS must be an integer, got 'soon'"]
    # The agent's and the shadow services' refusals.
    status, agent_lines = run_logged(
        tmp_path, "app.agent", "postfix-settings", "--check", "--set", "x", journal=True, env={}
    )
    assert status == 1
    assert agent_lines == ["<3>mailrelay agent: --set wants NAME=VALUE, got 'x'"]
    status, shadow_lines = run_logged(
        tmp_path, "app.replication", "receiver", journal=True, env={"SHADOW_TOKEN": ""}
    )
    assert status == 2
    assert shadow_lines == [
        "<3>mailrelay receiver: SHADOW_TOKEN is required for the shadow receiver"
    ]
    for line in lines + vrrp_lines + cli_lines + agent_lines + shadow_lines:
        assert re.match(r"<[0-7]>", line), line
        assert not TIMESTAMP.search(line), line


def test_on_a_terminal_lines_keep_their_time_and_carry_no_priority(tmp_path):
    status, lines = run_logged(
        tmp_path,
        "app.cli",
        "ingest-logs",
        journal=False,
        env={"POSTFIX_LOG_FILE": str(tmp_path / "no-such.log")},
    )
    assert status == 0, lines
    warning = next(line for line in lines if "no log file yet" in line)
    assert TIMESTAMP.match(warning), warning
    assert " mailrelay.ingest ingest-logs " in warning
    status, vrrp_lines = run_logged(
        tmp_path, "app.cluster.vrrp", journal=False, env={"RETENTION_DAYS": "soon"}
    )
    assert status == 1
    assert len(vrrp_lines) == 1 and TIMESTAMP.match(vrrp_lines[0]), vrrp_lines
    assert not any(line.startswith("<") for line in lines + vrrp_lines)


def test_an_inherited_journal_stream_of_another_file_adds_no_priorities(tmp_path):
    """A child of a systemd service inherits JOURNAL_STREAM; when its stderr is something else
    (a pipe, a file) the prefix would be noise there."""
    status, lines = run_logged(
        tmp_path,
        "app.cli",
        "ingest-logs",
        journal=False,
        env={"POSTFIX_LOG_FILE": str(tmp_path / "no-such.log"), "JOURNAL_STREAM": "1:1"},
    )
    assert status == 0
    assert lines and not any(line.startswith("<") for line in lines), lines


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_logs_uvicorns_lines_and_requests_with_priorities_and_no_time(tmp_path):
    port = _free_port()
    err_path = tmp_path / "serve.stderr"
    with err_path.open("w") as err:
        stat = os.fstat(err.fileno())
        env = {
            **os.environ,
            "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}",
            "STATE_DIR": str(tmp_path / "state"),
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while "Uvicorn running" not in err_path.read_text():
                assert server.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, err_path.read_text()
                time.sleep(0.2)
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            with (
                socket.create_connection(("127.0.0.1", port)) as raw,
                context.wrap_socket(raw) as tls,
            ):
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while tls.recv(4096):
                    pass
            while "uvicorn.access" not in err_path.read_text():
                assert time.monotonic() < deadline, err_path.read_text()
                time.sleep(0.2)
        finally:
            server.terminate()
            server.wait(timeout=30)
    lines = err_path.read_text().splitlines()
    assert any(line.startswith("<6>uvicorn.error Uvicorn running on") for line in lines), lines
    assert any(line.startswith("<6>uvicorn.access ") and "/healthz" in line for line in lines), (
        lines
    )
    for line in lines:
        assert re.match(r"<[0-7]>", line), line
        assert not TIMESTAMP.search(line), line
