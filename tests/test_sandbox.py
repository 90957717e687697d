"""The PoT sandbox against hostile programs, and the warm pool's bookkeeping.

Every hostile program must get a non-`correct` verdict within its timeout, leave
nothing changed outside the sandbox, and leave the pool able to verify normal
programs. Programs come in two forms: the plain one a model would write, and one that
first escapes the restricted builtins (via `object.__subclasses__()`) to reach the real
`os` module, so the audit hook and the kernel limits are exercised, not only the
import allowlist.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import tempfile
import time

import pytest

from siked_runtime.sandbox import SandboxPool
from siked_runtime.verify import Verifier

TIMEOUT = 1.5
# A timed-out worker is killed and a fresh one started before the call returns.
SLACK = 3.0

# The real `os` module, reached from inside the sandbox without `import`.
ESCAPE = (
    "os = [c for c in ().__class__.__base__.__subclasses__()"
    " if c.__name__ == '_wrap_close'][0].__init__.__globals__['sys'].modules['os']\n"
)

NORMAL = [
    ("72", "[pot]\nmay = 48 / 2\nanswer = 48 + may"),
    ("12", "[pot]\ndef solution():\n    return 3 * 4"),
    ("5", "[pot]\nimport math\nanswer = math.isqrt(26)"),
    ("0.75", "[pot]\nfrom fractions import Fraction\nanswer = Fraction(3, 4)"),
]


@pytest.fixture(scope="module")
def verifier():
    with Verifier(pool_size=2, timeout=TIMEOUT) as v:
        yield v


@pytest.fixture
def open_dir():
    """A world-writable directory outside the sandbox: only the sandbox itself can stop writes there."""
    path = tempfile.mkdtemp(prefix="sandbox-outside-")
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def assert_contained(verifier: Verifier, gold: str, program: str) -> None:
    start = time.monotonic()
    [verdict] = verifier.verify([(gold, "[pot]\n" + program)])
    elapsed = time.monotonic() - start
    assert verdict.verdict != "correct", verdict
    assert elapsed < TIMEOUT + SLACK, f"took {elapsed:.1f}s"
    assert_pool_healthy(verifier)


def assert_pool_healthy(verifier: Verifier) -> None:
    verdicts = verifier.verify(NORMAL * 3)
    assert [v.verdict for v in verdicts] == ["correct"] * len(NORMAL) * 3, verdicts
    assert all(no_children(pid) for pid in verifier.sandbox.worker_pids())


def no_children(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return f.read().strip() == ""
    except FileNotFoundError:
        return True


def processes_in_group(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                found.append(int(entry))
    return found


# -- hostile programs -------------------------------------------------------------------


def test_infinite_loop_times_out(verifier):
    start = time.monotonic()
    [verdict] = verifier.verify([("1", "[pot]\nanswer = 1\nwhile True:\n    pass")])
    assert verdict.verdict == "timeout"
    assert TIMEOUT <= time.monotonic() - start < TIMEOUT + SLACK
    assert_pool_healthy(verifier)


@pytest.mark.parametrize("program", [
    "import os\nwhile True:\n    os.fork()\nanswer = 1",
    ESCAPE + "while True:\n    os.fork()\nanswer = 1",
    ESCAPE + "os.posix_spawn('/bin/sh', ['sh', '-c', 'sleep 30'], {})\nanswer = 1",
])
def test_fork_bomb_fails(verifier, program):
    pids = verifier.sandbox.worker_pids()
    assert_contained(verifier, "1", program)
    for pid in pids:
        assert processes_in_group(pid) in ([], [pid])


@pytest.mark.parametrize("program", [
    "x = bytearray(10**10)\nanswer = 1",
    "x = [0] * 10**10\nanswer = 1",
    "x = ' ' * 10**10\nanswer = 1",
])
def test_huge_allocation_fails(verifier, program):
    assert_contained(verifier, "1", program)


@pytest.mark.parametrize("program", [
    "open({path!r}, 'w').write('pwned')\nanswer = 1",
    ESCAPE + "fd = os.open({path!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'pwned')\nanswer = 1",
    ESCAPE + "os.symlink('/etc/passwd', {path!r})\nanswer = 1",
    "open('../escaped.txt', 'w').write('pwned')\nanswer = 1",
])
def test_cannot_write_outside(verifier, open_dir, program):
    target = os.path.join(open_dir, "pwned.txt")
    assert_contained(verifier, "1", program.format(path=target))
    assert os.listdir(open_dir) == []


def test_can_write_in_its_own_directory(verifier):
    program = "with open('scratch.txt', 'w') as f:\n    f.write('41')\nanswer = int(open('scratch.txt').read()) + 1"
    [verdict] = verifier.verify([("42", "[pot]\n" + program)])
    assert verdict.verdict == "correct", verdict


@pytest.mark.parametrize("program", [
    "answer = int(open({path!r}).read())",
    ESCAPE + "fd = os.open({path!r}, os.O_RDONLY)\nanswer = int(os.read(fd, 100))",
    ESCAPE + "answer = len(os.listdir({dir!r})) * 424242",
])
def test_cannot_read_outside(verifier, open_dir, program):
    secret = os.path.join(open_dir, "secret.txt")
    with open(secret, "w") as f:
        f.write("424242")
    os.chmod(secret, 0o644)
    # A leak would make the verdict "correct": the gold answer is the secret.
    assert_contained(verifier, "424242", program.format(path=secret, dir=open_dir))


@pytest.mark.parametrize("program", [
    "import socket\ns = socket.create_connection(('127.0.0.1', {port}))\nanswer = 1",
    ESCAPE + "socket = os.sys.modules['builtins'].__import__('socket')\n"
             "socket.create_connection(('127.0.0.1', {port}))\nanswer = 1",
])
def test_no_network(verifier, program):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.3)
    try:
        assert_contained(verifier, "1", program.format(port=listener.getsockname()[1]))
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


@pytest.mark.parametrize("program", [
    "import subprocess\nsubprocess.run(['touch', {path!r}])\nanswer = 1",
    "import os\nos.system('touch {path}')\nanswer = 1",
    ESCAPE + "os.system('touch {path}')\nanswer = 1",
    ESCAPE + "os.execv('/usr/bin/touch', ['touch', {path!r}])\nanswer = 1",
    ESCAPE + "os.posix_spawn('/usr/bin/touch', ['touch', {path!r}], {{}})\nanswer = 1",
])
def test_no_subprocess(verifier, open_dir, program):
    target = os.path.join(open_dir, "touched")
    assert_contained(verifier, "1", program.format(path=target))
    time.sleep(0.1)
    assert not os.path.exists(target)


@pytest.mark.parametrize("program", [
    "import ctypes\nctypes.CDLL(None).system(b'touch {path}')\nanswer = 1",
    ESCAPE + "ctypes = os.sys.modules['builtins'].__import__('ctypes')\n"
             "ctypes.CDLL(None).system(b'touch {path}')\nanswer = 1",
])
def test_no_ctypes(verifier, open_dir, program):
    target = os.path.join(open_dir, "touched")
    assert_contained(verifier, "1", program.format(path=target))
    assert not os.path.exists(target)


@pytest.mark.parametrize("program", [
    "print('x' * 10**8)",
    "for _ in range(100_000):\n    print('y' * 1000)",
    ESCAPE + "os.write(1, b'garbage' * 100000)\nos.write(2, b'garbage')\nprint(7)",
])
def test_flood_of_output_is_capped(verifier, program):
    assert_contained(verifier, "1", program)


def test_output_cap_and_protocol_survive_printing():
    with SandboxPool(size=1, timeout=5, output_cap=1000) as pool:
        [big, noisy] = pool.run_many([
            "print('x' * 10**8)\nanswer = 3",
            ESCAPE + "os.write(1, b'\\x00\\x00\\x00\\x05garbage')\nprint('hi')\nanswer = 4",
        ])
    assert (big.status, big.value, big.truncated, len(big.output)) == ("ok", "3", True, 1000)
    assert (noisy.status, noisy.value, noisy.output) == ("ok", "4", "hi\n")


def test_cannot_leave_state_for_the_next_program(verifier):
    [first] = verifier.sandbox.run_many(["__builtins__['abs'] = lambda x: 99\nanswer = abs(-1)"])
    assert first.value == "99"
    results = verifier.sandbox.run_many(["answer = abs(-1)"] * 4)
    assert [r.value for r in results] == ["1"] * 4


def test_worker_is_replaced_after_a_blocked_attempt():
    with SandboxPool(size=1, timeout=2) as pool:
        [first] = pool.worker_pids()
        assert pool.run("import os").status == "error"  # refused by the import allowlist only
        assert pool.worker_pids() == [first]
        assert pool.run(ESCAPE + "os.listdir('/')").status == "error"  # tripped the audit hook
        assert pool.worker_pids() != [first]
        assert pool.run("answer = 6 * 7").value == "42"


# -- pool bookkeeping -------------------------------------------------------------------


def test_killed_worker_is_replaced(verifier):
    pool = verifier.sandbox
    before = pool.worker_pids()
    workdir = os.readlink(f"/proc/{before[0]}/cwd")
    os.kill(before[0], signal.SIGKILL)
    assert_pool_healthy(verifier)
    after = pool.worker_pids()
    assert before[0] not in after and len(after) == len(before)
    assert not os.path.exists(workdir)


def test_timed_out_worker_is_replaced_and_cleaned_up():
    with SandboxPool(size=1, timeout=0.5) as pool:
        [pid] = pool.worker_pids()
        workdir = os.readlink(f"/proc/{pid}/cwd")
        [result] = pool.run_many(["while True:\n    pass"])
        assert result.status == "timeout"
        assert pid not in pool.worker_pids()
        assert not os.path.exists(workdir)
        assert not os.path.exists(f"/proc/{pid}")
        assert pool.run("answer = 2 + 2").value == "4"
    assert not any(os.path.exists(f"/proc/{p}") for p in pool.worker_pids())


def test_close_removes_workers_and_directories():
    pool = SandboxPool(size=2)
    pids = pool.worker_pids()
    dirs = [os.readlink(f"/proc/{pid}/cwd") for pid in pids]
    pool.close()
    for pid, path in zip(pids, dirs):
        assert not os.path.exists(f"/proc/{pid}")
        assert not os.path.exists(path)


def test_limits_are_in_place(verifier):
    pool = verifier.sandbox
    pid = pool.worker_pids()[0]
    with open(f"/proc/{pid}/limits") as f:
        limits = {line[:26].strip(): line[26:].split() for line in f.readlines()[1:]}
    assert limits["Max address space"][0] == str(512 * 1024 * 1024)
    assert limits["Max file size"][0] == str(1 << 20)
    assert limits["Max processes"][0] == "0"
    assert limits["Max core file size"][0] == "0"
    assert limits["Max cpu time"][0] != "unlimited"
    assert os.readlink(f"/proc/{pid}/cwd").startswith(tempfile.gettempdir())
    with open(f"/proc/{pid}/environ", "rb") as f:
        assert set(f.read().split(b"\0")) - {b""} <= {b"PATH=/usr/bin:/bin", b"LC_ALL=C.UTF-8"}
    if os.geteuid() == 0:
        with open(f"/proc/{pid}/status") as f:
            uid_line = next(line for line in f if line.startswith("Uid:"))
        assert "0" not in uid_line.split()[1:]
    if pool.isolation.get("netns"):
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")


def test_run_many_keeps_order_and_handles_everything():
    programs = [f"answer = {i} * 2" for i in range(200)]
    programs[17] = "answer = 1 / 0"
    programs[42] = "x = 1"
    programs[99] = "def solution():\n    return 'seven'"
    programs[150] = "answer = 10 / 4"
    with SandboxPool(size=2) as pool:
        results = pool.run_many(programs)
    assert results[17].status == "error" and results[17].reason == "ZeroDivisionError: division by zero"
    assert (results[42].status, results[42].value) == ("ok", None)
    assert results[99].value == "seven"
    assert results[150].value == "2.5"
    for i, r in enumerate(results):
        if i not in (17, 42, 99, 150):
            assert (r.status, r.value) == ("ok", str(i * 2))


def test_warm_pool_reuses_workers_across_a_large_batch():
    # Throughput itself is measured by benchmarks/verify_bench.py, not here.
    programs = [f"a = {i}\nb = {i % 7 + 1}\nanswer = a * b + a // b" for i in range(1000)]
    with SandboxPool(size=2) as pool:
        pids = set(pool.worker_pids())
        results = pool.run_many(programs)
        assert set(pool.worker_pids()) == pids
    assert [r.value for r in results] == [str(i * (i % 7 + 1) + i // (i % 7 + 1)) for i in range(1000)]


def test_workdir_is_private():
    with SandboxPool(size=1) as pool:
        mode = os.stat(os.readlink(f"/proc/{pool.worker_pids()[0]}/cwd")).st_mode
    assert not mode & (stat.S_IRWXG | stat.S_IRWXO)
