"""Run untrusted program-of-thought solutions, each in a fresh, locked-down process.

    from siked_runtime.verification.sandbox import SandboxPool

    with SandboxPool() as pool:                       # one template process per CPU core
        results = pool.run_many([
            "may = 48 / 2\\nanswer = 48 + may",
            "def solution():\\n    return 3 * 4",
        ])
    results[0]   # RunResult(status='ok', value='72', reason='', output='', truncated=False)
    pool.layers  # {'seccomp': (True, '...'), 'landlock': (True, '...'), ...}

A program either assigns `answer` or defines `solution()`, which is then called.
`value` is the answer as text (numbers normalised with `format_number`); `status` is
"ok", "timeout" or "error" (with `reason`).

Each lane of the pool is a template process (`template.py`): a `python -I -S`
interpreter started with an empty environment, in an empty network namespace where
`unshare` works, that pre-imports the allowed modules and locks itself down once
(root drops to `nobody`, no new privileges, not dumpable, Landlock with no
filesystem access). For every program it forks a child that no earlier program has
touched; the child closes every descriptor but its own reply pipe, sets rlimits,
loads a seccomp allow-list and runs the program with an in-memory scratch directory.
Nothing a program does survives it: its process, memory, files and descriptors end
with it. The template SIGKILLs a child at the wall-clock timeout, and this pool
kills a template that stops answering.

The parent trusts nothing a child writes: `replies.parse_reply` checks it against a
closed schema and a malformed, oversized or missing reply is an `error` for that
program alone; a batch always completes. The gold answer never leaves the verifier.

`require` names layers (see `policy.LAYERS`) without which the pool refuses to
start, with a message saying which are missing and why.
"""

from __future__ import annotations

import functools
import json
import math
import os
import queue
import select
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from pydantic import ValidationError

from siked_runtime.verification import policy
from siked_runtime.verification.replies import RunResult, TemplateHeader, parse_reply

DEFAULT_TIMEOUT_S = 3.0
DEFAULT_MEMORY_MB = 256
DEFAULT_OUTPUT_CAP = 64 * 1024
DEFAULT_SCRATCH_MB = 8
MAX_PROGRAM_BYTES = 1 << 20
CHUNK = 32  # programs per request to a template: fewer round trips, and a late chunk never waits on one lane
# Time a template may take beyond a program's own timeout (fork, kill, reap) before it counts as stuck.
TEMPLATE_GRACE_S = 5.0
# Children a template forks back to back before collecting them (see template.run_wave);
# also how many programs of one lane can hold memory at once (fewer when memory is short).
WAVE = 8
# Descriptors a child may hold: 0-2 on /dev/null, 3 its reply pipe, 4 its program pipe (closed once read).
CHILD_FDS = 5
# A timed-out program that used less CPU than this share of its timeout is run again alone.
STARVED_CPU_SHARE = 0.8
TEMPLATE = Path(__file__).with_name("template.py")

# Pure-computation stdlib modules a program may import, all imported by the template
# before any program runs.
ALLOWED_MODULES: tuple[str, ...] = (
    "math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools",
    "operator", "collections", "datetime", "calendar", "random", "re", "string",
    "heapq", "bisect", "numbers", "copy", "typing", "dataclasses", "enum",
)


class SandboxUnavailable(OSError):
    """The sandbox cannot start here, or lacks a layer the caller requires (another machine may have it)."""


class _Stuck(Exception):
    """The template did not answer in time."""


class _Died(Exception):
    """The template's pipe closed."""


@functools.lru_cache(maxsize=1)
def _network_namespace_prefix() -> tuple[str, ...]:
    """`unshare` arguments that give a child an empty network namespace here, or ()."""
    unshare = shutil.which("unshare")
    if not unshare:
        return ()
    candidates = [(unshare, "--net", "--")]
    if os.geteuid() != 0:
        candidates.append((unshare, "--user", "--net", "--"))
    for prefix in candidates:
        try:
            probe = subprocess.run([*prefix, "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


def available_cpus() -> int:
    """CPUs this process may use: its affinity, and its cgroup's CPU quota where one is set."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _memory_limit() -> int:
    """Bytes this process may use: its cgroup's memory.max, else the machine's memory."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            return int(limit)
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def fitting_wave(lanes: int, memory_mb: int) -> int:
    """Children per lane at once: WAVE, or fewer, so that every child at its memory limit fits in half the memory."""
    budget = _memory_limit() // 2
    if not memory_mb or budget <= 0:
        return WAVE
    return max(1, min(WAVE, budget // (lanes * memory_mb * 1024 * 1024)))


def _real_uid(pid: int) -> int | None:
    """A process's real uid as this process sees it (inside a user namespace it calls itself nobody)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(line for line in f if line.startswith("Uid:")).split()[1])
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _nobody() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


class _Template:
    """One template process and the frames it sends."""

    def __init__(self, command: Sequence[str], config: dict, pass_fds: tuple[int, ...], start_timeout: float):
        self.proc = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd="/", env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
            start_new_session=True, close_fds=True, pass_fds=pass_fds,
        )
        self.pid = self.proc.pid
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        self._poll = select.poll()
        self._poll.register(self._out, select.POLLIN | select.POLLHUP | select.POLLERR)
        self._buf = bytearray()
        try:
            self._send(json.dumps(config).encode())
            self.hello = json.loads(self._frame(time.monotonic() + start_timeout))
        except (_Stuck, _Died, OSError, ValueError) as exc:
            detail = self._stderr_tail() or type(exc).__name__
            self.kill()
            raise SandboxUnavailable(f"sandbox template failed to start: {detail}") from None

    def _stderr_tail(self) -> str:
        try:
            self.proc.wait(timeout=2)
            return self.proc.stderr.read().decode(errors="replace").strip()[-2000:]
        except (subprocess.TimeoutExpired, ValueError, OSError):
            return ""

    def _send(self, *bodies: bytes) -> None:
        view = memoryview(b"".join(len(body).to_bytes(4, "big") + body for body in bodies))
        while view:
            view = view[os.write(self._in, view):]

    def _frame(self, deadline: float) -> bytes:
        while True:
            if len(self._buf) >= 4:
                length = int.from_bytes(self._buf[:4], "big")
                if len(self._buf) >= 4 + length:
                    body = bytes(self._buf[4:4 + length])
                    del self._buf[:4 + length]
                    return body
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._poll.poll(math.ceil(remaining * 1000)):
                raise _Stuck()
            chunk = os.read(self._out, 1 << 20)
            if not chunk:
                raise _Died()
            self._buf += chunk

    def run(self, programs: list[bytes], timeout: float, wave: int) -> Iterator[tuple[TemplateHeader, bytes]]:
        """(header, raw reply) per program, in order, `wave` children at a time; raises _Died or _Stuck
        at the program the template failed on."""
        for start in range(0, len(programs), wave):
            batch = programs[start:start + wave]
            try:
                self._send(json.dumps({"count": len(batch), "timeout": timeout}).encode(),
                           *batch)
            except OSError:
                raise _Died() from None
            for index in range(len(batch)):
                deadline = time.monotonic() + timeout + TEMPLATE_GRACE_S
                try:
                    header = TemplateHeader.model_validate_json(self._frame(deadline))
                except ValidationError:
                    raise _Died() from None
                if header.index != index:
                    raise _Died()
                yield header, self._frame(deadline)

    def kill(self) -> None:
        # The whole group, even when the template is gone: its children may not be.
        try:
            os.killpg(self.pid, 9)
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


class SandboxPool:
    """Template processes, one program at a time each; thread-safe."""

    def __init__(
        self,
        size: int | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        memory_mb: int = DEFAULT_MEMORY_MB,
        output_cap: int = DEFAULT_OUTPUT_CAP,
        scratch_mb: int = DEFAULT_SCRATCH_MB,
        isolate_network: bool = True,
        drop_privileges: bool = True,
        require: Iterable[str] = (),
        start_timeout: float = 30.0,
    ):
        self.size = max(1, size or available_cpus())
        self.timeout = timeout
        self.output_cap = output_cap
        self.start_timeout = start_timeout
        self.require = tuple(require)
        unknown = [name for name in self.require if name not in policy.LAYERS]
        if unknown:
            raise ValueError(f"unknown sandbox layer(s) {unknown}; expected some of {', '.join(policy.LAYERS)}")
        self._closed = False
        self._lock = threading.Lock()
        self._templates: set[_Template] = set()
        self._idle: queue.SimpleQueue[_Template] = queue.SimpleQueue()
        self._threads: ThreadPoolExecutor | None = None
        owner = _nobody() if drop_privileges else None
        bpf, self._seccomp_problem = policy.seccomp_program()
        self._ruleset, self._landlock_problem = policy.landlock_ruleset()
        self._netns = _network_namespace_prefix() if isolate_network else ()
        self._command = (*self._netns, sys.executable, "-I", "-S", str(TEMPLATE))
        self._limits = {"memory_bytes": memory_mb * 1024 * 1024 if memory_mb else 0,
                        "cpu_s": int(math.ceil(timeout)) + 1}
        self._config = {
            "modules": list(ALLOWED_MODULES),
            "drop_to": list(owner) if owner else None,
            "landlock_fd": self._ruleset,
            "seccomp_bpf": bpf,
            "limits": self._limits,
            "output_cap": output_cap,
            "value_cap": 4096,
            # JSON escapes a character in at most 12 bytes (a surrogate pair, \\ud83d\\ude00).
            "reply_cap": 12 * output_cap + 64 * 1024,
            "scratch_bytes": scratch_mb * 1024 * 1024,
            "scratch_files": 64,
        }
        self._wave = fitting_wave(self.size, memory_mb)
        try:
            started = [self._spawn() for _ in range(self.size)]
            self._first_pid = started[0].pid
            self.layers = self._layers(started[0].hello)
            missing = [name for name in self.require if not self.layers[name][0]]
            if missing:
                raise SandboxUnavailable("required sandbox layer(s) missing: " + "; ".join(
                    f"{name} ({self.layers[name][1]})" for name in missing))
        except BaseException:
            self.close()
            raise
        for template in started:
            self._idle.put(template)
        self._threads = ThreadPoolExecutor(self.size, thread_name_prefix="sandbox")

    # -- public API ---------------------------------------------------------------

    def run(self, program: str, timeout: float | None = None) -> RunResult:
        """Run one program in a fresh child."""
        return self.run_many([program], timeout)[0]

    def run_many(self, programs: Iterable[str], timeout: float | None = None) -> list[RunResult]:
        """Run programs concurrently across the templates; one result per program, in input order."""
        if self._closed:
            raise RuntimeError("SandboxPool is closed")
        timeout = self.timeout if timeout is None else timeout
        programs = list(programs)
        results: list[RunResult | None] = [None] * len(programs)
        encoded: dict[int, bytes] = {}  # what a child receives, encoded once
        for i, program in enumerate(programs):
            if not isinstance(program, str):
                results[i] = RunResult("error", reason=f"program is {type(program).__name__}, not text")
                continue
            encoded[i] = program.encode("utf-8", "surrogatepass")
            if len(encoded[i]) > MAX_PROGRAM_BYTES:
                del encoded[i]
                results[i] = RunResult("error", reason=f"program larger than {MAX_PROGRAM_BYTES} bytes")
        runnable = list(encoded)
        size = max(1, min(CHUNK, math.ceil(len(runnable) / self.size)))
        chunks = [runnable[k:k + size] for k in range(0, len(runnable), size)]

        def lane(chunk: list[int]) -> None:
            for i, result in zip(chunk, self._run_chunk([encoded[i] for i in chunk], timeout)):
                results[i] = result

        if len(chunks) == 1:
            lane(chunks[0])
        elif chunks:
            for future in [self._threads.submit(lane, chunk) for chunk in chunks]:
                future.result()
        return results  # type: ignore[return-value]

    def template_pids(self) -> list[int]:
        with self._lock:
            return sorted(t.pid for t in self._templates)

    def explain(self) -> str:
        """One line per layer: whether it is active here, what it does, and the evidence or the reason."""
        lines = []
        for name in policy.LAYERS:
            active, detail = self.layers[name]
            lines.append(f"{'on ' if active else 'OFF'}  {name:<13} {policy.LAYER_HELP[name]}"
                         + (f" — {detail}" if detail else ""))
        return "\n".join(lines)

    def close(self) -> None:
        self._closed = True
        if self._threads is not None:
            self._threads.shutdown(wait=True)
        with self._lock:
            templates, self._templates = list(self._templates), set()
        for template in templates:
            template.kill()
        ruleset, self._ruleset = getattr(self, "_ruleset", None), None
        if ruleset is not None:
            os.close(ruleset)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    # -- templates ------------------------------------------------------------------

    def _spawn(self) -> _Template:
        fds = (self._ruleset,) if self._ruleset is not None else ()
        template = _Template(self._command, self._config, fds, self.start_timeout)
        with self._lock:
            self._templates.add(template)
        return template

    def _replace(self, template: _Template) -> _Template:
        with self._lock:
            self._templates.discard(template)
        template.kill()
        return self._spawn()

    def _run_chunk(self, programs: list[bytes], timeout: float) -> list[RunResult]:
        """Results for a chunk on one template."""
        template = self._idle.get()
        try:
            template, outcomes = self._run_on(template, programs, timeout, self._wave)
            # Out of wall-clock time without having used its CPU time: it shared the CPU with
            # its wave (perhaps with spinning neighbours), so it runs again, alone.
            starved = [i for i, (header, _) in enumerate(outcomes)
                       if self._wave > 1 and header is not None and header.outcome == "timeout"
                       and header.cpu < STARVED_CPU_SHARE * timeout]
            if starved:
                template, again = self._run_on(template, [programs[i] for i in starved], timeout, 1)
                for i, outcome in zip(starved, again):
                    outcomes[i] = outcome
        finally:
            self._idle.put(template)
        return [raw if header is None else parse_reply(header, raw, self.output_cap, timeout)
                for header, raw in outcomes]

    def _run_on(self, template: _Template, programs: list[bytes], timeout: float, wave: int):
        """(template, [(header, raw reply) or (None, RunResult)]): a program the template fails on is retried once
        on a fresh template, and from then on one child at a time, so that a second failure names its program."""
        outcomes: list = []
        retried_at = -1
        while len(outcomes) < len(programs):
            try:
                for outcome in template.run(programs[len(outcomes):], timeout, wave):
                    outcomes.append(outcome)
            except (_Died, _Stuck) as exc:
                template = self._replace(template)
                wave = 1
                if retried_at == len(outcomes):
                    what = "stopped answering" if isinstance(exc, _Stuck) else "died"
                    outcomes.append((None, RunResult("error", reason=f"sandbox template {what} while running this program")))
                else:
                    retried_at = len(outcomes)
        return template, outcomes

    def _layers(self, hello: dict) -> dict[str, tuple[bool, str]]:
        """What the first template reported, as layer -> (active, evidence or reason)."""
        layers = hello.get("layers", {})
        child = layers.get("child", {})
        denied = {k: str(v) for k, v in child.items() if k in ("open", "socket", "kill", "ptrace", "fork")}
        seccomp_on = self._config["seccomp_bpf"] is not None and all(
            v.startswith("denied (Operation not permitted)") for v in denied.values()) and len(denied) == 5
        probe_failed = child.get("error", "")
        try:
            own_netns = os.readlink("/proc/self/ns/net")
        except OSError:
            own_netns = None
        limits = child.get("rlimits", {})
        uid = _real_uid(self._first_pid)
        wanted = {"nproc": 0, "fsize": 0, "core": 0, "nofile": CHILD_FDS, "cpu": self._limits["cpu_s"]}
        if self._limits["memory_bytes"]:
            wanted["as"] = self._limits["memory_bytes"]
        rlimits_on = all(limits.get(k) == v for k, v in wanted.items())
        return {
            "seccomp": (seccomp_on, self._seccomp_problem or probe_failed
                        or ", ".join(f"{k} {v}" for k, v in denied.items())),
            "landlock": (bool(layers.get("landlock")),
                         self._landlock_problem or layers.get("landlock_error", "")
                         or ("opening any path is refused" if layers.get("landlock") else "")),
            "netns": (bool(self._netns) and layers.get("net_namespace") not in (None, own_netns),
                      "unshare --net" if self._netns else "unshare is not possible here"),
            "nondumpable": (bool(layers.get("nondumpable")), ""),
            "no_new_privs": (bool(layers.get("no_new_privs")), ""),
            "rlimits": (rlimits_on, probe_failed or ", ".join(f"{k}={limits.get(k)}" for k in wanted)),
            "separate_uid": (uid is not None and uid != os.getuid(),
                             f"children run as uid {uid}, the verifier as uid {os.getuid()}"),
        }

