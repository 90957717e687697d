"""The sandbox's template process: pre-imported, locked down once, one fresh child per program.

`SandboxPool` starts this file as `python -I -S template.py` (stdlib only, empty
environment, inside `unshare --net` where that works) and talks to it over its
stdin/stdout. The template itself never runs, compiles or parses untrusted code: for
every program it forks a child from its clean state, the child locks itself down
further and runs the program, and the template relays the child's raw reply bytes,
untouched, to the parent, which parses them strictly and decides the verdict.

Once, in the template (inherited by every child):
  drop root to `nobody`; no new privileges; not dumpable (its /proc files belong to
  root, so no process of the same uid can read them or ptrace it); the Landlock
  ruleset the parent built (no filesystem access at all); the allowed modules
  imported and warmed up, then `gc.freeze()` so children share those pages.

In each child, before the program runs:
  fds 0-2 on /dev/null and the reply pipe on fd 3, every other descriptor closed;
  rlimits (address space, CPU seconds, no files written, no processes, no new
  descriptors, no core); the seccomp allow-list the parent compiled (no open, no
  fork or threads, no exec, no sockets, no signals to anyone, no ptrace); an audit
  hook as a second layer for clearer errors; a scratch directory that lives in the
  child's own memory and dies with it.

Protocol (all frames are a 4-byte big-endian length and a body):
  parent -> template  config (JSON), then batches {"programs": [...], "timeout": s}
  template -> parent  hello (JSON: pid, layers), then per program a header frame
                      (JSON: index, outcome, wait status, CPU seconds) followed by a
                      frame with the child's raw reply bytes.
"""

import builtins
import ctypes
import decimal
import gc
import io
import json
import math
import mmap
import numbers
import os
import posixpath
import resource
import select
import signal
import sys
import time

PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 38, 39
PR_SET_DUMPABLE, PR_GET_DUMPABLE = 4, 3
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
PR_SET_PDEATHSIG = 1
SYS_LANDLOCK_RESTRICT_SELF = 446  # the same number on every architecture
REPLY_FD, PROGRAM_FD = 3, 4

_libc = ctypes.CDLL(None, use_errno=True)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _prctl(option, arg=0):
    return _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                       ctypes.c_ulong(0))


# -- framing ---------------------------------------------------------------------------


def read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame(fd):
    header = read_exact(fd, 4)
    if header is None:
        return None
    return read_exact(fd, int.from_bytes(header, "big"))


def write_all(fd, data):
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])


def send(fd, *bodies):
    write_all(fd, b"".join(len(b).to_bytes(4, "big") + b for b in bodies))


# -- the template's own lockdown ----------------------------------------------------------


def drop_root(target):
    if target is None or os.geteuid() != 0:
        return False
    uid, gid = target
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    return True


def lock_down_template(config):
    """Everything applied once and inherited by every child; returns what took."""
    layers = {"oom_score_adj": None}
    try:
        # Under memory pressure the kernel kills a program's process before the verifier's.
        # Before dropping root: afterwards /proc/self belongs to root.
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
        layers["oom_score_adj"] = 1000
    except OSError:
        pass
    layers["dropped_root"] = drop_root(config["drop_to"])
    layers["uid"], layers["gid"] = os.getuid(), os.getgid()
    try:
        layers["net_namespace"] = os.readlink("/proc/self/ns/net")
    except OSError:
        layers["net_namespace"] = None
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    layers["no_new_privs"] = _prctl(PR_GET_NO_NEW_PRIVS) == 1
    _prctl(PR_SET_DUMPABLE, 0)
    layers["nondumpable"] = _prctl(PR_GET_DUMPABLE) == 0
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    layers["landlock"] = False
    ruleset = config["landlock_fd"]
    if ruleset is not None:
        if _libc.syscall(ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0:
            # Checked, not assumed: the template itself can no longer open anything.
            layers["landlock"] = _attempt(lambda: _libc.open(b"/proc/self/status", os.O_RDONLY)) != "allowed"
        else:
            layers["landlock_error"] = os.strerror(ctypes.get_errno())
        os.close(ruleset)
    return layers


def preimport(modules):
    for name in modules:
        __import__(name)
    # Lazily loaded helpers of the allowed modules, loaded now: children cannot open files.
    import datetime, decimal, fractions, statistics, random, re  # noqa: E401,F401
    datetime.datetime.strptime("2024-01-02", "%Y-%m-%d")
    datetime.datetime.now().strftime("%A %B")
    time.localtime()
    "{:,.2f} {:.1%} {:n}".format(decimal.Decimal("1.5"), float(fractions.Fraction(1, 3)), 1234)
    statistics.median([1, 2, 3]), statistics.stdev([1.0, 2.0])
    random.Random(0).random()
    # Every child starts from this state (see _fork): a program using `random` gets the
    # same numbers in every child of every template, so its verdict is reproducible.
    random.seed(0)
    re.compile(r"\d+(?:\.\d+)?").findall("1.5 and 2")
    json.loads(json.dumps({"a": [1.5, "x", None]}))


# -- the child ------------------------------------------------------------------------


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
        return "".join(self.parts), self.size > self.cap


class Scratch:
    """The program's working directory, in its own memory: at most `cap` bytes written in all."""

    def __init__(self, cap, max_files):
        self.cap, self.max_files, self.written, self.files = cap, max_files, 0, {}

    def charge(self, n):
        if self.written + n > self.cap:
            raise OSError(28, f"sandbox: scratch directory full ({self.cap} bytes written in all)")
        self.written += n

    def open(self, file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True,
             opener=None):
        if not isinstance(file, str):
            raise PermissionError("sandbox: only files of the scratch directory can be opened, by name")
        name = posixpath.normpath(file)
        if name.startswith(("/", "..")) or name in (".", ""):
            raise PermissionError(f"sandbox: {file!r} is outside the scratch directory")
        if not set(mode) <= set("rwxab+t") or sum(mode.count(c) for c in "rwxa") != 1:
            raise ValueError(f"invalid mode: {mode!r}")
        exists = name in self.files
        if "r" in mode and not exists:
            raise FileNotFoundError(2, "No such file or directory", file)
        if "x" in mode and exists:
            raise FileExistsError(17, "File exists", file)
        if not exists and len(self.files) >= self.max_files:
            raise OSError(28, f"sandbox: at most {self.max_files} files in the scratch directory")
        start = b"" if ("w" in mode or "x" in mode or not exists) else self.files[name]
        handle = _ScratchFile(self, name, start, readable="r" in mode or "+" in mode,
                              writable=bool(set(mode) & set("wxa+")))
        if handle.writable():
            self.files[name] = start
        if "a" in mode:
            handle.seek(0, 2)
        if "b" in mode:
            return handle
        return io.TextIOWrapper(handle, encoding=encoding or "utf-8", errors=errors, newline=newline)


class _ScratchFile(io.BytesIO):
    def __init__(self, scratch, name, data, readable, writable):
        super().__init__(data)
        self._scratch, self._name, self._r, self._w = scratch, name, readable, writable

    def readable(self):
        return self._r

    def writable(self):
        return self._w

    def read(self, *args):
        if not self._r:
            raise io.UnsupportedOperation("not readable")
        return super().read(*args)

    def write(self, b):
        if not self._w:
            raise io.UnsupportedOperation("not writable")
        self._scratch.charge(len(b))
        n = super().write(b)
        self._scratch.files[self._name] = self.getvalue()
        return n


_quote = json.encoder.encode_basestring_ascii  # C; escapes to pure ASCII


def encode(value, value_cap):
    """The answer as a JSON fragment tagging its type; the parent normalises numbers."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is int or (kind is not bool and isinstance(value, numbers.Integral)):
        return '{"int":"%d"}' % int(value)
    if kind is float or (kind is not bool and isinstance(value, (numbers.Real, decimal.Decimal))):
        number = float(value)
        return '{"float":%r}' % number if math.isfinite(number) else '{"text":%s}' % _quote(str(number))
    return '{"text":%s}' % _quote(str(value)[:value_cap])


def describe(exc):
    try:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except BaseException:
        text = type(exc).__name__
    return text[:500]


BLOCKED_EVENTS = ("os.", "posix.", "socket.", "subprocess.", "_posixsubprocess.", "ctypes.", "shutil.", "pty.",
                  "fcntl.", "resource.", "signal.", "mmap.", "sys._current_frames", "sys.setrecursionlimit",
                  "gc.", "marshal.", "pickle.", "builtins.input", "import", "open", "cpython.")


class Runner:
    """What every child needs to run a program, built once in the template so children only use it.

    Built before the fork, a child touches (and copies) far fewer pages: at a
    millisecond per program, page faults are most of the cost.
    """

    def __init__(self, config):
        self.config = config
        self.out = Capped(config["output_cap"])
        self.stdin = io.StringIO()
        self.scratch = Scratch(config["scratch_bytes"], config["scratch_files"])
        allowed = frozenset(config["modules"])

        def safe_import(name, globals=None, locals=None, fromlist=(), level=0):
            if level == 0 and name in allowed:
                return sys.modules[name]
            raise ImportError(f"import of {name!r} is not allowed in the sandbox")

        self.names = {k: v for k, v in vars(builtins).items()
                      if k not in ("exec", "eval", "compile", "input", "breakpoint", "help", "exit", "quit",
                                   "copyright", "credits", "license", "open")}
        self.names["__import__"] = safe_import
        self.names["open"] = self.scratch.open
        armed = self.armed = [False]

        def audit(event, args):
            # A second layer with clearer messages; the kernel (seccomp, Landlock) is the boundary.
            if armed[0] and event.startswith(BLOCKED_EVENTS):
                raise PermissionError(f"sandbox: {event} is not allowed")

        sys.addaudithook(audit)

    def run(self, program):
        """The reply for one program, as JSON bytes (the parent trusts none of it)."""
        sys.stdout = sys.stderr = self.out
        sys.stdin = self.stdin
        self.armed[0] = True
        namespace = {"__builtins__": self.names, "__name__": "__sandbox__"}
        value, error, no_answer = "null", None, None
        try:
            exec(compile(program, "<program>", "exec"), namespace)
            if "answer" in namespace:
                answer = namespace["answer"]
            elif callable(namespace.get("solution")):
                answer = namespace["solution"]()
            else:
                answer, no_answer = None, "program never assigns `answer`"
            value = encode(answer, self.config["value_cap"])
            if answer is None and no_answer is None:
                no_answer = "`answer` is None"
        except BaseException as exc:
            value, error, no_answer = "null", describe(exc), None
        output, truncated = self.out.take()
        return ('{"value":%s,"error":%s,"no_answer":%s,"output":%s,"truncated":%s}' % (
            value, "null" if error is None else _quote(error), "null" if no_answer is None else _quote(no_answer),
            _quote(output), "true" if truncated else "false")).encode()


def _within_hard(which, value):
    """`value`, or the hard limit this process already has when that is lower (a limit can only go down)."""
    hard = resource.getrlimit(which)[1]
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


class Lockdown:
    """A child's descriptors, rlimits and seccomp filter, prepared in the template so a child only applies them."""

    def __init__(self, config, null_fd):
        self.null_fd = null_fd
        self.template = os.getpid()
        limits = config["limits"]
        wanted = ((resource.RLIMIT_AS, limits["memory_bytes"] or None), (resource.RLIMIT_CPU, limits["cpu_s"]),
                  (resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_NPROC, 0), (resource.RLIMIT_NOFILE, PROGRAM_FD + 1),
                  (resource.RLIMIT_CORE, 0))
        self.rlimits = tuple((which, (_within_hard(which, value),) * 2) for which, value in wanted if value is not None)
        self.seccomp = None
        if config["seccomp_bpf"] is not None:
            bpf = bytes.fromhex(config["seccomp_bpf"])
            self._bpf = ctypes.create_string_buffer(bpf, len(bpf))
            self._fprog = _SockFprog(len(bpf) // 8, ctypes.cast(self._bpf, ctypes.c_void_p))
            self.seccomp = (ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                            ctypes.byref(self._fprog), ctypes.c_ulong(0), ctypes.c_ulong(0))

    def apply(self, reply_fd, program_fd):
        """In the child: exits (status 71) without running anything if the filter does not load."""
        # Dies with the template, so no child outlives a template the OOM killer took.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.template:
            os._exit(72)
        for fd in (0, 1, 2):
            os.dup2(self.null_fd, fd)
        os.dup2(reply_fd, REPLY_FD)
        os.dup2(program_fd, PROGRAM_FD)
        os.closerange(PROGRAM_FD + 1, 1 << 16)
        for which, value in self.rlimits:
            resource.setrlimit(which, value)
        if self.seccomp is not None and _libc.prctl(*self.seccomp) != 0:
            os._exit(71)


def read_program():
    """The child's program, from its own pipe (the template never held it when it forked)."""
    parts = []
    while chunk := os.read(PROGRAM_FD, 1 << 16):
        parts.append(chunk)
    os.close(PROGRAM_FD)
    return b"".join(parts).decode("utf-8", "replace")


def child(runner, lockdown, reply_fd, program_fd):
    try:
        lockdown.apply(reply_fd, program_fd)
        data = runner.run(read_program())
        write_all(REPLY_FD, data)
        os._exit(0)
    finally:
        os._exit(70)


# -- the template's loop ----------------------------------------------------------------

# libc's fork, not os.fork: CPython's after-fork work in the child (re-initialising
# locks and threads, at-fork callbacks such as random's reseed) writes to a hundred
# shared pages, and each copy-on-write fault costs microseconds; at a millisecond per
# program that is a sixth of the cost. The template is single-threaded and holds no
# lock when it forks, which is what that work exists for. PyDLL keeps the GIL held.
# A side effect: every child starts from the template's random state, seeded with 0,
# so programs using `random` are deterministic.
_fork = ctypes.PyDLL(None, use_errno=True).fork


class Kid:
    """A running child as the template sees it; its reply is read into a buffer dropped after use."""

    __slots__ = ("pid", "fd", "reply", "size", "outcome")

    def __init__(self, pid, fd):
        self.pid, self.fd, self.outcome, self.reply, self.size = pid, fd, None, None, 0

    def open_reply(self, cap):
        # Made after the wave's last fork, so no child inherits it; a private mapping of its
        # own, unmapped after use, so the reply leaves the template's memory with it.
        self.reply = mmap.mmap(-1, cap + 1, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def wipe(self):
        self.reply.close()


def relay_program(source, sink):
    """Move one program frame from the parent to a child's pipe through a buffer that is wiped afterwards.

    The template never decodes a program (no str copies of it live on in its heap), and
    the buffer is zeroed before the next fork, so no child holds another's program.
    """
    length = int.from_bytes(read_into(source, bytearray(4)), "big")
    buffer = read_into(source, bytearray(length))
    try:
        view = memoryview(buffer)
        while view:
            try:
                view = view[os.write(sink, view):]
            except BrokenPipeError:
                break  # the child died before reading it; its outcome says so
    finally:
        buffer[:] = bytes(length)
        os.close(sink)


def read_into(fd, buffer):
    view, got = memoryview(buffer), 0
    while got < len(buffer):
        n = os.readv(fd, [view[got:]])
        if n == 0:
            raise EOFError("the parent closed the pipe mid-frame")
        got += n
    return buffer


def spawn(runner, lockdown, source):
    reply_r, reply_w = os.pipe()
    program_r, program_w = os.pipe()
    pid = _fork()
    if pid == 0:
        child(runner, lockdown, reply_w, program_r)
    os.close(reply_w)
    os.close(program_r)
    if pid < 0:
        os.close(reply_r)
        os.close(program_w)
        raise OSError(ctypes.get_errno(), "fork failed")
    relay_program(source, program_w)
    return Kid(pid, reply_r)


def _exited_by(pid, deadline):
    """Whether the child exits before the deadline (it closed its reply pipe, or is exiting)."""
    if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
        return True
    exited = os.pidfd_open(pid)
    try:
        return bool(select.select([exited], [], [], max(0.0, deadline - time.monotonic()))[0])
    finally:
        os.close(exited)


def run_wave(count, timeout, runner, lockdown, source, sink):
    """Run `count` programs, read one by one from `source`, in children forked back to back.

    Forking the whole wave before servicing it means the template writes to few pages
    between forks, so it takes few copy-on-write faults per child. Each child gets its
    program after it is forked, over its own pipe. Results go to `sink` in order: a header
    (outcome, wait status, CPU seconds) and the child's raw reply bytes, sent from the
    buffer they were read into, which is then wiped.
    """
    kids = [spawn(runner, lockdown, source) for _ in range(count)]
    deadline = time.monotonic() + timeout
    cap = runner.config["reply_cap"]
    for kid in kids:
        kid.open_reply(cap)
    open_fds = {kid.fd: kid for kid in kids}
    poller = select.poll()
    for fd in open_fds:
        poller.register(fd, select.POLLIN)
    while open_fds:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for fd, _ in poller.poll(int(remaining * 1000) + 1):
            kid = open_fds[fd]
            with memoryview(kid.reply) as whole, whole[kid.size:] as rest:
                n = os.readv(fd, [rest])
            kid.size += n
            if n and kid.size <= cap:
                continue
            if kid.size > cap:
                kid.outcome = "oversized"
            poller.unregister(fd)
            del open_fds[fd]
    for index, kid in enumerate(kids):
        if kid.fd in open_fds or (kid.outcome is None and not _exited_by(kid.pid, deadline)):
            kid.outcome = "timeout"
        os.close(kid.fd)
        if kid.outcome is not None:
            os.kill(kid.pid, signal.SIGKILL)
        _, status, usage = os.wait4(kid.pid, 0)
        outcome = kid.outcome or "exited"
        header = ('{"index":%d,"outcome":"%s","status":%d,"cpu":%r}' % (
            index, outcome, status, usage.ru_utime + usage.ru_stime)).encode()
        size = kid.size if outcome == "exited" else 0
        try:
            write_all(sink, b"".join((len(header).to_bytes(4, "big"), header, size.to_bytes(4, "big"))))
            with memoryview(kid.reply) as whole, whole[:size] as reply:
                write_all(sink, reply)
        finally:
            kid.wipe()


PTRACE_ATTACH = 16


def _attempt(call):
    """'denied (<errno name>)' or 'allowed' for a libc call made through ctypes (no audit hook sees it)."""
    ctypes.set_errno(0)
    if call() >= 0:
        return "allowed"
    return f"denied ({os.strerror(ctypes.get_errno())})"


def _fork_attempt():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return 0


def probe_child(runner, lockdown):
    """What the kernel enforces in a locked-down child (not what was asked for), checked by trying."""
    read_fd, write_fd = os.pipe()
    empty_r, empty_w = os.pipe()
    os.close(empty_w)
    pid = _fork()
    if pid == 0:
        os.close(read_fd)
        try:
            lockdown.apply(write_fd, empty_r)
            found = {
                "open": _attempt(lambda: _libc.open(b"/proc/self/status", os.O_RDONLY)),
                "socket": _attempt(lambda: _libc.socket(2, 1, 0)),
                "kill": _attempt(lambda: _libc.kill(os.getppid(), 0)),
                "ptrace": _attempt(lambda: _libc.ptrace(PTRACE_ATTACH, os.getppid(), None, None)),
            }
            try:
                found["fork"] = _attempt(_fork_attempt)
            except OSError as exc:
                found["fork"] = f"denied ({exc.strerror})"
            found["rlimits"] = {name[7:].lower(): resource.getrlimit(getattr(resource, name))[0]
                                for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NPROC",
                                             "RLIMIT_NOFILE", "RLIMIT_CORE")}
            found["runs"] = json.loads(runner.run("answer = 6 * 7")).get("value") == {"int": "42"}
            write_all(REPLY_FD, json.dumps(found).encode())
            os._exit(0)
        finally:
            os._exit(70)
    os.close(write_fd)
    os.close(empty_r)
    data = bytearray()
    while chunk := os.read(read_fd, 1 << 16):
        data += chunk
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return json.loads(bytes(data)) if code == 0 else {"error": f"the probe child exited with {code}"}


def main():
    IN, OUT = 0, 1
    config = json.loads(read_frame(IN))
    null_fd = os.open(os.devnull, os.O_RDWR)  # the last path this process opens
    preimport(config["modules"])
    layers = lock_down_template(config)
    runner = Runner(config)
    lockdown = Lockdown(config, null_fd)
    layers["child"] = probe_child(runner, lockdown)
    send(OUT, json.dumps({"pid": os.getpid(), "layers": layers}).encode())
    gc.collect()
    gc.freeze()
    while True:
        body = read_frame(IN)  # {"count": n, "timeout": s}, then n program frames
        if body is None:
            return
        request = json.loads(body)
        run_wave(request["count"], request["timeout"], runner, lockdown, IN, OUT)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
