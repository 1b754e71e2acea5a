"""Bounded time for a call that may hang, in any thread: a SIGALRM deadline, or a helper process.

``deadline(seconds)`` interrupts its body with ``Deadline`` from a SIGALRM ``setitimer`` handler. It
costs a few microseconds, but Python delivers signals to the main thread only, and a process has one
ITIMER_REAL, so it is usable only where ``signals_usable()`` says so: the main thread, no other timer
pending (ours would eat it). Ray Train, a thread pool or a server runs the reward elsewhere.

``Worker`` is the fallback that works in any thread or process: a persistent helper interpreter
(``python -c "import module; module.function()"``, whose function calls ``serve``) that answers JSON
requests one line at a time over its stdin/stdout; ``Worker.call(request, timeout)`` waits at most
``timeout`` seconds for the reply, and on a timeout (or if the helper died) kills it, logs a warning
and raises ``WorkerTimeout``; the next call starts a fresh one. Why a plain subprocess and not
``multiprocessing``: fork is unsafe in a process that runs threads (Ray's always does), and the
``spawn``/``forkserver`` start methods re-import the parent's ``__main__``, which re-runs a user's
unguarded training script inside the helper; ``subprocess`` forks and execs at once, starts a clean
interpreter, and a hung helper is simply killed (``ProcessPoolExecutor`` cannot kill one stuck
task). The helper handles one request at a time (a lock serialises callers, so each call's timeout
is its own, not its place in a queue), inherits stderr (its tracebacks are seen), runs in its own
session (a Ctrl-C at the terminal is the caller's to handle, not the helper's) and exits when its
stdin closes, so it does not outlive the caller. A forked child forgets its parent's helper and starts
its own. POSIX only (it waits on the pipe with ``selectors``).

If the helper cannot start (no interpreter, its import fails, no ready line within
``start_timeout``), ``Worker`` logs one warning with the cause and raises ``WorkerUnavailable`` from
then on, without retrying: the caller decides what that costs (``rewards.equivalence`` falls back to
its cheaper tiers). ``close()`` stops the helper and forgets the failure.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Deadline(BaseException):
    """Raised by our SIGALRM handler; a BaseException so a library's ``except Exception`` lets it out."""


def _on_alarm(signum, frame):
    raise Deadline


@contextmanager
def deadline(seconds: float):
    """Interrupt the body with ``Deadline`` after ``seconds`` (main thread only, see ``signals_usable``),
    then restore the previous SIGALRM handler.

    >>> with deadline(5.0):
    ...     sum(range(10))
    45
    """
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        while True:  # the alarm may fire between the body's end and this line: retry until disarmed
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                break
            except Deadline:
                continue
        signal.signal(signal.SIGALRM, old)


def signals_usable() -> bool:
    """True in the main thread when no other ITIMER_REAL/alarm is pending (we must not eat it)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return False
    return signal.getitimer(signal.ITIMER_REAL)[0] == 0.0


class WorkerTimeout(Exception):
    """The helper gave no reply in time, or died: it has been killed; the next call starts a fresh one."""


class WorkerUnavailable(Exception):
    """The helper process could not be started (logged once, when it happened)."""


class WorkerError(Exception):
    """The helper's handler raised; the message is its traceback."""


_workers: weakref.WeakSet[Worker] = weakref.WeakSet()


class Worker:
    """A persistent helper interpreter running ``module.function()``, which must call ``serve``.

    Started on the first ``call``; ``call`` sends one JSON-able request and returns the handler's reply.
    """

    def __init__(self, module: str, function: str, *, start_timeout: float = 60.0):
        if not all(part.isidentifier() for part in [*module.split("."), function]):
            raise ValueError(f"not a module and function name: {module!r}, {function!r}")
        self.module, self.function, self.start_timeout = module, function, start_timeout
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._selector: selectors.BaseSelector | None = None
        self._buf = b""
        self._failed: str | None = None
        self.starts = 0  # helpers started so far (a restart after a timeout counts)
        _workers.add(self)

    def call(self, request, timeout: float):
        """The helper's reply to ``request``, waiting at most ``timeout`` seconds once it is running
        (starting it may take longer: ``start_timeout``). Raises ``WorkerTimeout``,
        ``WorkerUnavailable`` or ``WorkerError``."""
        with self._lock:
            if self._failed is not None:
                raise WorkerUnavailable(self._failed)
            if self._proc is None:
                self._start()
            try:
                data = memoryview(json.dumps(request).encode() + b"\n")
                while data:
                    data = data[self._proc.stdin.write(data):]
                reply = self._read_line(timeout)
            except (TimeoutError, EOFError, OSError, ValueError) as e:
                code = self._proc.poll()
                why = (f"exited with code {code}" if code is not None
                       else f"gave no reply within {timeout:g} s" if isinstance(e, TimeoutError) else repr(e))
                log.warning("%s.%s helper %s on %.200r; killed, a fresh one will start on the next call",
                            self.module, self.function, why, request)
                self._stop()
                raise WorkerTimeout(why) from None
            if "error" in reply:
                raise WorkerError(reply["error"])
            return reply["reply"]

    def close(self) -> None:
        """Stop the helper (it is restarted on the next call) and forget a failure to start."""
        with self._lock:
            self._stop()
            self._failed = None

    def _start(self) -> None:
        code = f"import {self.module}; {self.module}.{self.function}()"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # the caller's imports
        try:
            if os.name != "posix" or not sys.executable:
                raise OSError(f"needs POSIX and sys.executable (os.name={os.name!r}, "
                              f"sys.executable={sys.executable!r})")
            self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, env=env, bufsize=0, start_new_session=True)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._proc.stdout, selectors.EVENT_READ)
            self.starts += 1
            if self._read_line(self.start_timeout) != {"ready": True}:
                raise OSError("the helper's first line was not its ready line")
        except (OSError, TimeoutError, EOFError, ValueError) as e:
            self._stop()
            self._failed = f"cannot start the helper `python -c {code!r}`: {e!r}"
            log.warning("%s; callers fall back (see the helper's stderr above for its traceback)", self._failed)
            raise WorkerUnavailable(self._failed) from e

    def _read_line(self, timeout: float):
        end = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if self._selector.select(left):
                chunk = os.read(self._proc.stdout.fileno(), 65536)
                if not chunk:
                    raise EOFError("the helper closed its stdout")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def _stop(self) -> None:
        proc, self._proc, self._buf = self._proc, None, b""
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if proc is not None:
            proc.kill()
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()

    def _forget_after_fork(self) -> None:
        """In a forked child: the helper is the parent's; drop our copies of its pipes, start our own later."""
        self._lock = threading.Lock()
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.stdout.close()
        self._proc, self._selector, self._buf = None, None, b""


def _after_fork_in_child() -> None:
    for worker in list(_workers):
        worker._forget_after_fork()


def _close_all() -> None:
    for worker in list(_workers):
        worker.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)


def serve(handler) -> None:
    """The helper's side of ``Worker``: say ready, then answer each JSON request line with
    ``{"reply": handler(request)}`` (or ``{"error": traceback}``) until stdin closes. Requests run in
    this process's main thread, so the handler may use ``deadline``."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # whatever the handler prints goes to stderr; stdout carries replies only
    out.write(b'{"ready": true}\n')
    for line in sys.stdin.buffer:
        try:
            reply = {"reply": handler(json.loads(line))}
        except Exception:
            reply = {"error": traceback.format_exc()}
        out.write(json.dumps(reply).encode() + b"\n")
