"""Run untrusted program-of-thought solutions in a warm pool of sandboxed worker processes.

    from siked_runtime.sandbox import SandboxPool

    with SandboxPool() as pool:                       # one worker per CPU core
        results = pool.run_many([
            "may = 48 / 2\\nanswer = 48 + may",
            "def solution():\\n    return 3 * 4",
        ])
    results[0]   # RunResult(status='ok', value='72', reason='', output='')

A program either assigns `answer` or defines `solution()`, which is then called.
`value` is the answer as text (numbers normalised with `format_number`); `status`
is "ok", "timeout" or "error" (with `reason`, e.g. "ZeroDivisionError: division by zero").

Isolation, outermost first:

* every worker is a separate `python -I -S` interpreter started with subprocess (never
  a fork of the caller), in its own session/process group, with an empty environment
  and its own temporary working directory (removed when the worker goes);
* when `unshare` works here, the worker gets an empty network namespace (no interfaces);
* a worker started as root drops to the `nobody` user before running anything;
* rlimits: address space, CPU seconds, file size, open files, no child processes
  (RLIMIT_NPROC = 0), no core dumps;
* an audit hook blocks, after the worker's own imports: sockets, subprocesses,
  fork/exec/spawn/kill, ctypes, loading any new module, creating code objects, file
  access outside the working directory (reading is also allowed in the stdlib);
* programs get a fresh namespace with builtins minus exec/eval/compile/input, and
  `import` limited to a list of pure-computation stdlib modules;
* the parent enforces a wall-clock timeout (SIGKILL to the process group, then a fresh
  worker), and the worker caps captured output, so a program printing 100 MB
  neither floods the pipe nor the parent's memory.

Requests and replies are length-prefixed JSON over the worker's stdin/stdout; the worker
moves the protocol to private descriptors and points fds 0-2 at /dev/null first, so
nothing a program prints can corrupt it.
"""

from __future__ import annotations

import json
import math
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable

from siked_runtime.answers import format_number

DEFAULT_TIMEOUT_S = 3.0
DEFAULT_MEMORY_MB = 512
DEFAULT_OUTPUT_CAP = 64 * 1024
MAX_PROGRAM_BYTES = 1 << 20
MAX_REPLY_BYTES = 8 << 20

# Pure-computation stdlib modules a program may import. Everything here is imported
# by the worker before the audit hook goes up, so a program's import never touches disk.
ALLOWED_MODULES: tuple[str, ...] = (
    "math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools",
    "operator", "collections", "datetime", "calendar", "random", "re", "string",
    "heapq", "bisect", "numbers", "copy", "typing", "dataclasses", "enum",
)


@dataclass(frozen=True)
class RunResult:
    """The outcome of one program: status "ok" | "timeout" | "error".

    `value` is None when the program finished without an answer (then `reason` says so)
    or did not finish. `output` is what it printed, cut at the pool's output cap
    (`truncated` says whether it was).
    """

    status: str
    value: str | None = None
    reason: str = ""
    output: str = ""
    truncated: bool = False


# The worker's whole program. It only uses the stdlib and runs as `python -I -S -c`,
# so it neither sees nor imports the caller's packages. argv[1] is its JSON config.
_WORKER_SOURCE = r'''
import builtins, io, json, os, resource, sys, time

IN, OUT = os.dup(0), os.dup(1)
_null = os.open(os.devnull, os.O_RDWR)
for _fd in (0, 1, 2):
    os.dup2(_null, _fd)
os.close(_null)
config = json.loads(sys.argv[1])

def read_exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(IN, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)

def send(obj):
    data = json.dumps(obj).encode()
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(OUT, data):]

allowed = frozenset(config["modules"])
for name in allowed:
    __import__(name)
import numbers
# Lazily imported stdlib helpers, loaded now because new imports are blocked later.
import datetime, decimal, fractions, statistics
datetime.datetime.strptime("2024-01-02", "%Y-%m-%d")
"{:,.2f} {:.1%}".format(decimal.Decimal("1.5"), float(fractions.Fraction(1, 3)))
statistics.median([1, 2, 3]); statistics.stdev([1.0, 2.0])
json.loads(json.dumps({"a": [1.5, "x", None]}))

class Capped(io.TextIOBase):
    """stdout/stderr for programs: keeps the first `cap` characters, counts the rest."""
    def __init__(self, cap):
        self.cap, self.parts, self.size = cap, [], 0
    def writable(self):
        return True
    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        room = self.cap - self.size
        if room > 0:
            self.parts.append(s[:room])
        self.size += len(s)
        return len(s)
    def take(self):
        text, truncated = "".join(self.parts), self.size > self.cap
        self.parts, self.size = [], 0
        return text, truncated

out = Capped(config["output_cap"])
sys.stdout = sys.stderr = out
sys.stdin = io.StringIO()

def safe_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name in allowed:
        return sys.modules[name]
    raise ImportError(f"import of {name!r} is not allowed in the sandbox")

base_builtins = {k: v for k, v in vars(builtins).items()
                 if k not in ("exec", "eval", "compile", "input", "breakpoint", "help",
                              "exit", "quit", "copyright", "credits", "license")}
base_builtins["__import__"] = safe_import

isolation = {"uid": os.getuid(), "netns": config["netns"]}
if config["drop_to"] is not None and os.geteuid() == 0:
    uid, gid = config["drop_to"]
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    isolation["uid"] = os.getuid()

def limit(which, value):
    try:
        resource.setrlimit(which, (value, value))
        return True
    except (ValueError, OSError):
        return False

mem = config["memory_bytes"]
isolation["rlimits"] = {
    "cpu": limit(resource.RLIMIT_CPU, config["cpu_budget_s"]),
    "fsize": limit(resource.RLIMIT_FSIZE, config["file_bytes"]),
    "nofile": limit(resource.RLIMIT_NOFILE, 32),
    "core": limit(resource.RLIMIT_CORE, 0),
    # After setuid: RLIMIT_NPROC is not enforced for root, and counts the new uid.
    "nproc": limit(resource.RLIMIT_NPROC, 0),
    "as": limit(resource.RLIMIT_AS, mem) if mem else False,
}
# Root keeps CAP_SYS_RESOURCE and could fork despite RLIMIT_NPROC.
isolation["nproc_enforced"] = isolation["rlimits"]["nproc"] and os.geteuid() != 0

workdir = os.path.realpath(os.getcwd())
read_roots = tuple(os.path.realpath(p) + os.sep for p in config["read_roots"])
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
BLOCKED = ("os.", "posix.", "socket.", "subprocess.", "_posixsubprocess.", "ctypes.",
           "shutil.", "pty.", "fcntl.", "resource.", "signal.", "mmap.", "sqlite3.",
           "syslog.", "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.",
           "poplib.", "imaplib.", "nntplib.", "telnetlib.", "glob.", "tempfile.",
           "gc.", "code.__new__", "function.__new__", "marshal.", "pickle.",
           "sys._current_frames", "sys.setrecursionlimit", "builtins.input",
           "cpython.", "winreg.", "msvcrt.", "_winapi.")

def check_open(path, flags):
    if isinstance(path, int):
        raise PermissionError("sandbox: opening file descriptors is not allowed")
    path = os.path.realpath(os.fsdecode(path))
    if path == workdir or path.startswith(workdir + os.sep):
        return
    if not (flags or 0) & WRITE_FLAGS and path.startswith(read_roots):
        return
    raise PermissionError(f"sandbox: access to {path!r} is not allowed")

blocked = []

def audit(event, args):
    try:
        if event == "open":
            check_open(args[0], args[2])
        elif event == "import":
            raise ImportError(f"sandbox: loading module {args[0]!r} is not allowed")
        elif event.startswith(BLOCKED):
            raise PermissionError(f"sandbox: {event} is not allowed")
    except Exception:
        blocked.append(event)
        raise

sys.addaudithook(audit)
send({"ready": True, "pid": os.getpid(), "isolation": isolation})

def describe(exc):
    try:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except BaseException:
        text = type(exc).__name__
    return text[:500]

def encode(value):
    """The answer as a JSON-safe tagged value; the parent normalises numbers."""
    if value is None:
        return None
    if isinstance(value, bool):
        return {"text": str(value)}
    if isinstance(value, numbers.Integral):
        return {"int": str(int(value))}
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        return {"float": float(value)}
    return {"text": str(value)[:config["value_cap"]]}

while True:
    header = read_exact(4)
    if header is None:
        break
    request = json.loads(read_exact(int.from_bytes(header, "big")))
    reply = {"status": "ok", "value": None, "reason": ""}
    namespace = {"__builtins__": dict(base_builtins), "__name__": "__sandbox__"}
    try:
        exec(compile(request["program"], "<program>", "exec"), namespace)
        if "answer" in namespace:
            answer = namespace["answer"]
        elif callable(namespace.get("solution")):
            answer = namespace["solution"]()
        else:
            answer = None
            reply["reason"] = "program never assigns `answer`"
        reply["value"] = encode(answer)
        if answer is None and not reply["reason"]:
            reply["reason"] = "`answer` is None"
    except BaseException as exc:
        reply = {"status": "error", "value": None, "reason": describe(exc)}
    namespace = answer = None
    reply["output"], reply["truncated"] = out.take()
    # A program that got past the restricted builtins may have tampered with this
    # interpreter; the parent then replaces it rather than reuse it.
    reply["tainted"] = bool(blocked)
    blocked.clear()
    reply["cpu"] = time.process_time()
    send(reply)
'''


class _Timeout(Exception):
    """No reply before the deadline."""


class _Crashed(Exception):
    """The worker's pipe closed: it died (or was killed) before replying."""


def _network_namespace_prefix() -> list[str]:
    """`unshare` arguments that give a child an empty network namespace here, or []."""
    unshare = shutil.which("unshare")
    if not unshare:
        return []
    candidates = [[unshare, "--net", "--"]]
    if os.geteuid() != 0:
        candidates.append([unshare, "--user", "--net", "--"])
    for prefix in candidates:
        try:
            probe = subprocess.run(prefix + ["true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return []


def _nobody() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


def _signal_name(returncode: int | None) -> str:
    if returncode is None or returncode >= 0:
        return f"exit status {returncode}"
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


class _Worker:
    """One sandboxed interpreter and its temp directory."""

    def __init__(self, command: list[str], config: dict, owner: tuple[int, int] | None):
        self.workdir = tempfile.mkdtemp(prefix="siked-sandbox-")
        try:
            if owner is not None:
                os.chown(self.workdir, *owner)
            self.proc = subprocess.Popen(
                command + [json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=self.workdir, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
                start_new_session=True, close_fds=True,
            )
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self.pid = self.proc.pid
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        self._poll = select.poll()
        self._poll.register(self._out, select.POLLIN | select.POLLHUP | select.POLLERR)
        self.tasks = 0
        self.cpu_s = 0.0
        self.isolation: dict = {}

    def wait_ready(self, timeout: float) -> None:
        try:
            hello = self._read(time.monotonic() + timeout)
        except (_Timeout, _Crashed) as exc:
            detail = self._stderr_tail() or str(exc)
            self.kill()
            raise RuntimeError(f"sandbox worker failed to start: {detail}") from None
        self.isolation = hello.get("isolation", {})
        # The worker sends nothing to stderr after its handshake (fd 2 is /dev/null there).
        self.proc.stderr.close()

    def _stderr_tail(self) -> str:
        try:
            self.proc.wait(timeout=1)
            return self.proc.stderr.read().decode(errors="replace").strip()[-2000:]
        except (subprocess.TimeoutExpired, ValueError, OSError):
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, program: str, timeout: float) -> dict:
        data = json.dumps({"program": program}).encode()
        try:
            self._write_all(len(data).to_bytes(4, "big") + data)
        except OSError as exc:  # BrokenPipeError: it died before the program started
            raise _Crashed(f"worker gone ({exc})") from None
        return self._read(time.monotonic() + timeout)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._in, view):]

    def _read(self, deadline: float) -> dict:
        buf = bytearray()
        length = -1
        while True:
            if length < 0 and len(buf) >= 4:
                length = int.from_bytes(buf[:4], "big")
                # Honest replies are small (output and value are capped); anything else
                # is a program that got hold of the protocol descriptor.
                if length > MAX_REPLY_BYTES:
                    raise _Crashed("worker sent a malformed reply")
            if 0 <= length <= len(buf) - 4:
                try:
                    return json.loads(bytes(buf[4:4 + length]))
                except ValueError:
                    raise _Crashed("worker sent a malformed reply") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._poll.poll(math.ceil(remaining * 1000)):
                raise _Timeout()
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                self.proc.wait()
                raise _Crashed(f"worker died ({_signal_name(self.proc.returncode)})")
            buf += chunk

    def kill(self) -> None:
        # Only while not yet reaped: afterwards the pid may belong to someone else.
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)


class SandboxPool:
    """A warm pool of sandboxed interpreters; thread-safe, one program per worker at a time."""

    def __init__(
        self,
        size: int | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        memory_mb: int = DEFAULT_MEMORY_MB,
        output_cap: int = DEFAULT_OUTPUT_CAP,
        max_tasks_per_worker: int = 1000,
        isolate_network: bool = True,
        drop_privileges: bool = True,
        start_timeout: float = 30.0,
    ):
        self.size = max(1, size or os.cpu_count() or 1)
        self.timeout = timeout
        self.max_tasks_per_worker = max_tasks_per_worker
        self.start_timeout = start_timeout
        # A worker's CPU limit is for its whole life, so it is recycled well before.
        self._cpu_budget_s = int(max(60, 20 * timeout))
        self._owner = _nobody() if drop_privileges else None
        netns = _network_namespace_prefix() if isolate_network else []
        self._command = netns + [sys.executable, "-I", "-S", "-c", _WORKER_SOURCE]
        paths = sysconfig.get_paths()
        self._config = {
            "modules": list(ALLOWED_MODULES),
            "memory_bytes": memory_mb * 1024 * 1024 if memory_mb else 0,
            "cpu_budget_s": self._cpu_budget_s,
            "file_bytes": 1 << 20,
            "output_cap": output_cap,
            "value_cap": 4096,
            "drop_to": list(self._owner) if self._owner else None,
            "netns": bool(netns),
            "read_roots": sorted({paths["stdlib"], paths["platstdlib"]}),
        }
        self._lock = threading.Lock()
        self._workers: set[_Worker] = set()
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._closed = False
        started = [self._spawn() for _ in range(self.size)]
        try:
            for worker in started:
                worker.wait_ready(start_timeout)
        except BaseException:
            self.close()
            raise
        for worker in started:
            self._idle.put(worker)
        self._threads = ThreadPoolExecutor(self.size, thread_name_prefix="sandbox")

    # -- public API ---------------------------------------------------------------

    def run(self, program: str, timeout: float | None = None) -> RunResult:
        """Run one program on the next free worker."""
        if self._closed:
            raise RuntimeError("SandboxPool is closed")
        timeout = self.timeout if timeout is None else timeout
        if len(program.encode("utf-8", "replace")) > MAX_PROGRAM_BYTES:
            return RunResult("error", reason=f"program larger than {MAX_PROGRAM_BYTES} bytes")
        worker = self._idle.get()
        try:
            for attempt in range(2):
                if not worker.alive():
                    worker = self._replace(worker)
                try:
                    reply = worker.request(program, timeout)
                except _Timeout:
                    worker = self._replace(worker)
                    return RunResult("timeout", reason=f"no result within {timeout:g}s")
                except _Crashed as exc:
                    worker = self._replace(worker)
                    # Retried once: the worker may have been killed from outside just
                    # before (or while) we handed it the program.
                    if attempt == 0:
                        continue
                    return RunResult("error", reason=str(exc))
                worker.tasks += 1
                worker.cpu_s = float(reply.get("cpu", 0.0))
                if (reply.get("tainted") or worker.tasks >= self.max_tasks_per_worker
                        or worker.cpu_s > self._cpu_budget_s - timeout - 5):
                    worker = self._replace(worker)
                return _result(reply)
            raise AssertionError("unreachable")
        finally:
            self._idle.put(worker)

    def run_many(self, programs: Iterable[str], timeout: float | None = None) -> list[RunResult]:
        """Run programs concurrently across the workers; results in input order."""
        programs = list(programs)
        if len(programs) <= 1:
            return [self.run(p, timeout) for p in programs]
        return list(self._threads.map(lambda p: self.run(p, timeout), programs))

    def worker_pids(self) -> list[int]:
        with self._lock:
            return sorted(w.pid for w in self._workers)

    @property
    def isolation(self) -> dict:
        """What the workers report about their isolation (uid, netns, which rlimits took)."""
        with self._lock:
            for worker in self._workers:
                if worker.isolation:
                    return dict(worker.isolation)
        return {}

    def close(self) -> None:
        self._closed = True
        threads = getattr(self, "_threads", None)
        if threads is not None:
            threads.shutdown(wait=True)
        with self._lock:
            workers, self._workers = list(self._workers), set()
        for worker in workers:
            worker.kill()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    # -- workers --------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        worker = _Worker(self._command, self._config, self._owner)
        with self._lock:
            self._workers.add(worker)
        return worker

    def _replace(self, worker: _Worker) -> _Worker:
        with self._lock:
            self._workers.discard(worker)
        worker.kill()
        if self._closed:
            return worker
        fresh = self._spawn()
        try:
            fresh.wait_ready(self.start_timeout)
        except RuntimeError:
            with self._lock:
                self._workers.discard(fresh)
            raise
        return fresh


def _result(reply: dict) -> RunResult:
    value = reply.get("value")
    text: str | None
    if value is None:
        text = None
    elif "int" in value:
        text = value["int"]
    elif "float" in value:
        text = format_number(value["float"])
    else:
        text = value["text"]
    return RunResult(reply["status"], text, reply.get("reason", ""), reply.get("output", ""),
                     bool(reply.get("truncated")))
