"""Starting and stopping the control plane's processes.

Each process gets its own process group (so a stop also reaches anything it forked), its output in
<state>/logs/<name>.log, and a line `<name> <pid> <binary>` in <state>/pids, which is how
`python -m tests.cluster down` finds them from another Python process. When the processes must not
outlive the Python process that started them (the pytest fixture), they are also started with
PR_SET_PDEATHSIG, so even a SIGKILLed pytest leaves nothing running."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .polling import WaitTimeout, wait_for

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the tests' one helper for it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """GET url answers 200 (a health or readiness endpoint); False while nothing answers."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class PortTaken(RuntimeError):
    """A process could not bind a port we picked as free (someone else took it in between)."""


@dataclass
class Process:
    name: str
    pid: int
    binary: str
    log: Path
    popen: subprocess.Popen | None = None  # None when adopted from a pid file
    args: tuple = ()  # how it was started, for restart()

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _is_ours(self.pid, self.binary)

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _is_ours(pid: int, binary: str) -> bool:
    """True if pid is still running the binary we started (pids get reused)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except PermissionError:
        return True  # another user's process with that pid: cannot tell, so never treat it as gone
    except OSError:
        return False
    return exe.removesuffix(" (deleted)") == binary and state != "Z"


class ProcessGroup:
    """The processes of one control plane, recorded in <state_dir>/pids."""

    def __init__(self, state_dir: Path, *, die_with_parent: bool):
        self.state_dir = state_dir
        self.pid_file = state_dir / "pids"
        self.log_dir = state_dir / "logs"
        self.die_with_parent = die_with_parent
        self.processes: list[Process] = []

    def start(self, name: str, binary: Path, args: list[str], *, pass_fds: tuple[int, ...] = (),
              env: dict[str, str] | None = None) -> Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [str(binary), *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.state_dir, start_new_session=True, pass_fds=pass_fds, env=env,
                preexec_fn=_die_with_parent if self.die_with_parent else None)
        proc = Process(name, popen.pid, os.path.realpath(binary), log, popen, args=(binary, list(args), pass_fds, env))
        self.processes.append(proc)
        with open(self.pid_file, "a") as f:
            f.write(f"{name} {proc.pid} {proc.binary}\n")
        return proc

    def check_alive(self) -> None:
        for proc in self.processes:
            if not proc.alive():
                tail = proc.log_tail()
                hint = ("\n(a port it was given is taken: another process bound it after we picked it; "
                        "starting again picks new ports)" if "address already in use" in tail else "")
                error = PortTaken if hint else RuntimeError
                raise error(f"{proc.name} exited during start-up; last lines of {proc.log}:\n{tail}{hint}")

    @classmethod
    def adopt(cls, state_dir: Path) -> "ProcessGroup":
        """The group recorded in state_dir/pids by an earlier Python process."""
        group = cls(state_dir, die_with_parent=False)
        if group.pid_file.exists():
            for line in group.pid_file.read_text().splitlines():
                fields = line.split(" ", 2)
                if len(fields) == 3 and fields[1].isdigit():  # a line being written may be partial
                    name, pid, binary = fields
                    group.processes.append(Process(name, int(pid), binary, group.log_dir / f"{name}.log"))
        return group

    def restart(self, name: str, down_seconds: float = 0.0) -> Process:
        """Stops one process of this group (SIGTERM) and starts it again with the same command line, after
        down_seconds: an etcd or API server outage in a test."""
        (old,) = [p for p in self.processes if p.name == name]
        if not old.args:
            raise RuntimeError(f"{name} was adopted from a pid file: its command line is unknown")
        _signal_group(old.pid, signal.SIGTERM)
        if not _wait_gone([old], 10):
            _signal_group(old.pid, signal.SIGKILL)
            _wait_gone([old], 10)
        self.processes.remove(old)
        time.sleep(down_seconds)
        binary, args, pass_fds, env = old.args
        return self.start(name, binary, args, pass_fds=pass_fds, env=env)

    def stop(self, grace: float = 3.0) -> None:
        """Stops the processes one by one, newest first (clients before the API server before etcd:
        the API server's graceful shutdown waits for its clients), each with SIGTERM and, after
        `grace` seconds, SIGKILL (the state is thrown away, a slow shutdown buys nothing)."""
        for proc in reversed(self.processes):
            if not proc.alive():
                continue
            _signal_group(proc.pid, signal.SIGTERM)
            if not _wait_gone([proc], grace):
                _signal_group(proc.pid, signal.SIGKILL)
                if not _wait_gone([proc], 10):
                    raise RuntimeError(f"{proc.name} (pid {proc.pid}) still running after SIGKILL")
        self.processes.clear()
        self.pid_file.unlink(missing_ok=True)


def _wait_gone(processes: list[Process], timeout: float) -> bool:
    try:  # alive() also reaps our own children
        return wait_for(f"{[p.name for p in processes]} to exit", lambda: not any(p.alive() for p in processes),
                        timeout, interval=0.05)
    except WaitTimeout:
        return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # started with start_new_session: the process group id is its pid
    except ProcessLookupError:
        pass


def terminate(proc, grace: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """Stop one subprocess.Popen: `sig`, up to `grace` seconds for it to exit, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
