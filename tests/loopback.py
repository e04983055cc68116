"""Helpers for the tests that run commands and servers on loopback (tests/conftest.py's
`mlflow_server` and `pipeline`, tests/test_pipeline.py, tests/test_remote.py): run a command and
fail with its output, pick a free port, start a server and wait until it answers, stop it."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def run(command: list[str], cwd: pathlib.Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: pathlib.Path) -> str:
    try:
        return path.read_text(errors="replace")[-4000:]
    except OSError:
        return ""


def start_server(command: list[str], probe_url: str, log: pathlib.Path, env: dict, cwd: pathlib.Path,
                 timeout: float = 180.0) -> subprocess.Popen:
    """Start `command` in a process group of its own (output to `log`) and return once
    `probe_url` answers HTTP; fail with the log's tail when it exits or does not answer in time."""
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{' '.join(command)} exited ({process.returncode}):\n{_tail(log)}")
        try:
            with urllib.request.urlopen(probe_url, timeout=5):
                return process
        except urllib.error.HTTPError:
            return process  # it answers, if not with 200
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_server(process)
            raise AssertionError(f"{' '.join(command)}: no answer from {probe_url} in {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.5)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def stop_server(process: subprocess.Popen, grace: float = 20.0) -> None:
    """Stop a server from `start_server` and the workers it started (its process group): SIGTERM,
    then SIGKILL to whatever is left after `grace` seconds."""
    group = process.pid
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if process.poll() is not None and not _group_alive(group):
            return
        time.sleep(0.2)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
