"""One process that has imported TensorFlow forks the peers of a `dlion run`, so that no peer imports it again.

Importing TensorFlow costs each peer several CPU-seconds: peers that all start at once on a small machine spend most
of their start-up importing it side by side. The launcher starts one fork server instead. It imports what a peer runs
(`PRELOAD`), then forks one peer per request. The forked peer enters its network namespace (real emulation), takes its
environment and console, and runs `dlion.cli.main` on its arguments, through the interpreter's normal exit.
The server only imports: no TensorFlow runtime, thread pool or socket exists before a fork, so each peer starts its
own, as a fresh process would.

The server forks twice, and the middle process exits at once, so that the peer is re-parented to the launcher (a child
subreaper). The launcher then waits for the peer, signals it and reads its exit status as it does for a process it
started itself (`ForkedProcess`, with the `subprocess.Popen` methods the launcher uses), and the peer dies with the
launcher as any peer does (`die_with_parent`).
"""
from __future__ import annotations

import ctypes
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

PRELOAD = ("dlion.cli", "dlion.wiring", "dlion.trainer", "dlion.emulate.fallback", "dlion.emulate.real")
NETNS_DIR = Path("/var/run/netns")  # where `ip netns add` keeps a named namespace
REPARENT_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 180.0  # for the server's imports (a loaded machine)
FORK_TIMEOUT_S = 30.0  # for a fork's answer
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_CLONE_NEWNET = 0x40000000


class ForkServerError(Exception):
    """The fork server could not start, or could not fork a peer."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6", use_errno=True)


def die_with_parent() -> None:
    """Ask the kernel to send this process SIGTERM when its parent dies, however it dies."""
    try:
        _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


# ---- launcher side ------------------------------------------------------------------------------------------------

class ForkedProcess:
    """A peer forked by the server and re-parented to us: what the launcher uses of `subprocess.Popen`."""

    def __init__(self, pid: int, args: list[str]):
        self.pid, self.args = pid, args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                done, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                done, status = self.pid, 255 << 8
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.01)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The launcher's end: starts the server at once (its imports overlap whatever the launcher does next) and forks
    peers through it. Makes this process a child subreaper, so that forked peers become its children."""

    def __init__(self, log_path: Path, preload: tuple[str, ...] = PRELOAD, env: dict[str, str] | None = None):
        if _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1) != 0:
            raise ForkServerError(f"cannot become a child subreaper: {os.strerror(ctypes.get_errno())}")
        self.log_path = Path(log_path)
        with open(self.log_path, "w") as log:
            self._proc = subprocess.Popen([sys.executable, "-m", "dlion.forkserver", *preload], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                                          preexec_fn=die_with_parent)
        self._ready = False

    def start(self, args: list[str], console: Path, env: dict[str, str], netns: str | None = None) -> ForkedProcess:
        """Fork `dlion <args>` with `env` added to its environment, its output appended to `console`, inside the
        named network namespace if given."""
        if not self._ready:
            self._reply(READY_TIMEOUT_S)  # the server says it has imported everything
            self._ready = True
        request = {"args": args, "env": env, "console": str(console), "netns": netns, "parent": os.getpid()}
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise ForkServerError(f"the fork server exited with {self._proc.wait()}; see {self.log_path}") from None
        return ForkedProcess(self._reply(FORK_TIMEOUT_S)["pid"], ["dlion", *args])

    def _reply(self, timeout_s: float) -> dict:
        """The server's next answer line (it writes one per request, so none waits in the reader's buffer)."""
        if not select.select([self._proc.stdout], [], [], timeout_s)[0]:
            self._proc.kill()
            raise ForkServerError(f"the fork server did not answer within {timeout_s:g} s; see {self.log_path}")
        line = self._proc.stdout.readline()
        if not line:
            raise ForkServerError(f"the fork server exited with {self._proc.wait()}; see {self.log_path}")
        reply = json.loads(line)
        if "error" in reply:
            raise ForkServerError(f"the fork server could not fork a peer: {reply['error']}")
        return reply

    def close(self, timeout_s: float = 5.0) -> None:
        """End the server (its peers run on)."""
        try:
            self._proc.stdin.close()  # the server's loop ends
        except BrokenPipeError:
            pass
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()


# ---- server side --------------------------------------------------------------------------------------------------

def serve(preload: tuple[str, ...]) -> dict | None:
    """Import `preload`, then fork a peer per request line on stdin, answering its pid (or an error) on stdout.
    Returns None in the server once stdin closes, and a request in the peer forked for it."""
    for module in preload:
        importlib.import_module(module)
    _answer({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            pid = _fork_twice()
        except OSError as exc:
            _answer({"error": str(exc)})
            continue
        if pid == 0:
            return request
        _answer({"pid": pid})
    return None


def _answer(reply: dict) -> None:
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


def _fork_twice() -> int:
    """In the server, the grandchild's pid once the middle process has exited (the grandchild is the subreaper's child
    then); in the grandchild, 0."""
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(read_end)
        try:
            pid = os.fork()
        except OSError:
            os._exit(1)
        if pid == 0:
            os.close(write_end)
            return 0
        try:
            os.write(write_end, str(pid).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read()
    os.waitpid(middle, 0)
    if not text:
        raise OSError("the second fork failed")
    return int(text)


def become_peer(request: dict) -> int:
    """In the forked peer: wait to be the launcher's child, die with it, enter the namespace, take the console and
    environment, and run the dlion command."""
    deadline = time.monotonic() + REPARENT_TIMEOUT_S
    while os.getppid() != request["parent"]:
        if time.monotonic() > deadline:
            return 1  # the launcher is gone, or is not a subreaper
        time.sleep(0.001)
    die_with_parent()
    if os.getppid() != request["parent"]:
        return 1  # it died in between
    _take_console(request["console"])  # first: what goes wrong from here on is written there
    if request["netns"]:
        _enter_namespace(NETNS_DIR / request["netns"])
    os.environ.update(request["env"])
    sys.argv = ["dlion", *request["args"]]
    from dlion import cli
    return cli.main(request["args"])


def _enter_namespace(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc().setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def _take_console(path: str) -> None:
    """Standard input from /dev/null (not the server's requests), output and errors appended to `path`."""
    stdin = os.open(os.devnull, os.O_RDONLY)
    console = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(stdin, 0)
    os.dup2(console, 1)
    os.dup2(console, 2)
    os.close(stdin)
    os.close(console)


def main(argv: list[str]) -> int:
    try:
        request = serve(tuple(argv))
    except KeyboardInterrupt:
        request = None
    if request is None:  # the server is done: skip the interpreter's teardown of what it imported
        sys.stdout.flush()
        os._exit(0)
    return become_peer(request)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
