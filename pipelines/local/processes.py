"""Long-running local processes: start one in its own session with a pid file and a log file,
wait for it to answer over HTTP, stop it and everything it started. Used by the local stack
(`pipelines/stack.py`) and by the test fixtures; no Ray here.

A pid file names the session leader. The leader runs in a new session (`start_new_session`), so
its children share its session id and can be found, and stopped, after the process that started
them has exited.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil


class ProcessError(RuntimeError):
    """A process exited, or did not answer in time, while we waited for it."""


# --- start ------------------------------------------------------------------------------------


def start_process(command: list[str], env: dict[str, str], pid_file: Path, log_file: Path) -> int:
    """Start `command` in a new session, stdout and stderr to `log_file`; write its pid to `pid_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if log_file.exists():  # keep the previous run's log: it may say why that one died
        log_file.replace(log_file.with_name(log_file.name + ".1"))
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


# --- inspect ----------------------------------------------------------------------------------


def running_pid(pid_file: Path) -> int | None:
    """The pid named by `pid_file` if that process is still alive, else None (no file, or stale)."""
    named = _read(pid_file)
    if named is None or not _pid_alive(named[0]):
        return None
    pid, written = named
    try:
        # A pid is reused once its process is gone: a process created after the pid file was
        # written cannot be the one the file names. (1 s slack: create_time is coarse.)
        return pid if psutil.Process(pid).create_time() <= written + 1 else None
    except psutil.Error:
        return None


def _read(pid_file: Path) -> tuple[int, float] | None:
    """(pid, when the file was written), or None if there is no readable pid file."""
    try:
        return int(pid_file.read_text().split()[0]), pid_file.stat().st_mtime
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    _reap(pid)
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _reap(pid: int) -> None:
    """Collect `pid`'s exit status if it is our own child, so it does not linger as a zombie
    (a test that started a server in-process is its parent)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: its parent (or init) reaps it
        pass


def _session(pid: int) -> list[psutil.Process]:
    """The leader, every live process in its session, and their descendants (Ray starts job
    drivers in sessions of their own)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == pid and proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = proc
        except (OSError, psutil.Error):
            pass
    for proc in list(found.values()):
        try:
            found.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.Error:
            pass
    return list(found.values())


# --- stop -------------------------------------------------------------------------------------


def stop_process(pid_file: Path, timeout_s: float) -> int | None:
    """Stop the process named by `pid_file` and everything in its session; remove the file.

    SIGTERM goes to the leader first, so it can shut down what it started in its own order
    (`ray start --block` stops the raylet before the GCS; `mlflow server` forwards it to uvicorn).
    Whatever is left once the leader is gone (or after `timeout_s`) gets SIGTERM, then SIGKILL
    5 s later. A leader that died on its own (SIGKILL, OOM) may have left children behind, such
    as MLflow's uvicorn holding the port: those are stopped too. Returns the pid, or None if
    nothing was running.
    """
    named, leader = _read(pid_file), running_pid(pid_file)
    pid_file.unlink(missing_ok=True)
    if named is None or (leader is None and _pid_alive(named[0])):
        return None  # no file, or its pid now names a stranger: touch nothing
    pid = named[0]
    members = _session(pid)
    if leader is not None:
        _signal([p for p in members if p.pid == pid], signal.SIGTERM)
        _wait_gone(pid, timeout_s)
    leftovers = [p for p in {p.pid: p for p in members + _session(pid)}.values() if _alive(p)]
    _signal(leftovers, signal.SIGTERM)
    _, still = psutil.wait_procs(leftovers, timeout=min(timeout_s, 5))
    _signal(still, signal.SIGKILL)
    psutil.wait_procs(still, timeout=5)
    _reap(pid)
    return pid if leader is not None or members else None


def _signal(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:  # already gone
            pass


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)


# --- health -----------------------------------------------------------------------------------


def http_ok(url: str, timeout_s: float = 5.0) -> bool:
    """True if GET `url` answers 2xx within `timeout_s`. Straight to the address: health checks
    go to loopback, never through an HTTP proxy from the environment (trust_env=False)."""
    try:
        return httpx.get(url, timeout=timeout_s, trust_env=False).is_success
    except httpx.HTTPError:  # refused, timed out, a half-up server hanging up
        return False


def wait_for_http(urls: list[str], timeout_s: float, alive: Callable[[], bool]) -> None:
    """Poll until every URL answers 2xx. Raise ProcessError when `alive()` turns false (the
    process died: no point waiting) or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while silent := [url for url in urls if not http_ok(url, timeout_s=2)]:
        if not alive():
            raise ProcessError(f"exited before {silent[0]} answered")
        if time.monotonic() > deadline:
            raise ProcessError(f"{silent[0]} did not answer within {timeout_s:.0f}s")
        time.sleep(0.5)


def log_tail(log_file: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {log_file})"


# --- ports ------------------------------------------------------------------------------------


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something listens on `host:port` (or on all interfaces at that port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port whose server just stopped (TIME_WAIT) is free to use, not taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports nothing listens on now (another process may take one before you do: use
    them at once). The sockets stay open until all are chosen, so the OS cannot hand one out twice."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
