"""Hostile PoT completions fed through `siked verify`, as an attacker would write them.

One test per attack class: each writes a JSONL of hostile rows (whose gold answer is
a secret the program would have to steal to be judged `correct`) interleaved with
normal rows, runs the real `siked verify` command, and asserts that the command
completes, writes every row, judges no hostile row `correct`, gives every normal row
its true verdict (so nothing a hostile program did reached a later program), and that
no canary credential from the verifier's environment appears in any output.

Every class runs twice: as root (the sandbox drops to `nobody`) and as uid 10001
(the uid of a stage pod: sandbox and verifier share it, so only the kernel layers
stand between a program and the verifier's /proc, memory and files). As root the
test makes the interpreter reachable for uid 10001 in a private mount namespace
(the venv's interpreter lives under /root, which other uids cannot traverse).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from hostile_programs import DISARM, ESCAPE  # noqa: E402

pytestmark = pytest.mark.integration

SIKED = str(Path(sys.executable).with_name("siked"))
UNPRIVILEGED = 10001
CANARIES = {
    "AWS_ACCESS_KEY_ID": "AKIACANARY7Q2X9Z",
    "AWS_SECRET_ACCESS_KEY": "canary-secret-5f1d0c2e9b7a",
    "OPENAI_API_KEY": "sk-canary-8e3b1f0a4d6c",
}
# Gold answers of hostile rows: a program is `correct` only if it steals one.
SECRET = "861753094"


NORMAL = [  # (gold, completion, verdict)
    ("72", "[pot]\nmay = 48 / 2\nanswer = 48 + may", "correct"),
    ("12", "[pot]\ndef solution():\n    return 3 * 4", "correct"),
    ("7", "[pot]\nimport math\nanswer = math.floor(7.9)", "correct"),
    ("0.75", "[pot]\nfrom fractions import Fraction\nanswer = Fraction(3, 4)", "correct"),
    ("3", "[pot]\nanswer = abs(-3) + round(0.4)", "correct"),
    ("10", "[pot]\nanswer = 2 + 2", "wrong"),
    ("9", "[cot]\n4 + 5 = 9\nAnswer: 9", "correct"),
    ("8", "[cot]\n4 + 5 = 9\nAnswer: 9", "wrong"),
]


# -- running `siked verify` as root or as an unprivileged uid --------------------------------------


def _blocking_ancestor(path: Path) -> Path | None:
    """The first directory above `path` that other users cannot traverse."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
            return parent
    return None


def _unprivileged_prefix(workdir: Path) -> list[str]:
    """A command prefix that runs the rest as uid 10001, with the interpreter reachable."""
    if os.geteuid() != 0:
        return []  # already unprivileged
    for tool in ("unshare", "setpriv"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")
    drop = ["setpriv", f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups", "--inh-caps=-all"]
    python = Path(sys.executable).resolve()
    blocked = _blocking_ancestor(python)
    if blocked is None:
        return drop
    # In a private mount namespace: a tmpfs over the blocking directory, with only the
    # interpreter's tree bound back into it.
    inner = blocked / python.relative_to(blocked).parts[0]
    stage = workdir / "interpreter"
    stage.mkdir()
    script = ('set -e; mount --bind "$1" "$2"; mount -t tmpfs -o mode=0755 tmpfs "$3"; '
              'mkdir -p "$1"; mount --bind "$2" "$1"; shift 3; exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
            str(inner), str(stage), str(blocked), *drop]


@pytest.fixture
def tmp_path():
    """A directory every uid can reach (pytest's own lies under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="siked-attacks-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["root", "uid-10001"] if os.geteuid() == 0 else ["unprivileged"])
def verify(request, tmp_path):
    """run(rows, timeout) -> (exit code, output rows, everything printed)."""
    prefix = _unprivileged_prefix(tmp_path) if request.param != "root" else []
    home = tmp_path / "home"
    home.mkdir(mode=0o777)

    def run(rows: list[dict], timeout: float = 1.5) -> tuple[int, list[dict], str]:
        source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in rows))
        source.chmod(0o644)  # readable by the verifier's uid: only the sandbox keeps a program from it
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(tmp_path),
               "LC_ALL": "C.UTF-8", **CANARIES}
        done = subprocess.run([*prefix, SIKED, "verify", str(source), "--out", str(out), "--quiet",
                               "--timeout", str(timeout), "--require", "seccomp,rlimits,nondumpable,no_new_privs"],
                              env=env, capture_output=True, text=True, timeout=300)
        printed = done.stdout + done.stderr
        text = out.read_text() if out.exists() else ""
        if done.returncode == 0:  # the layers it ran with, as it reported them
            assert "seccomp on" in printed and "rlimits on" in printed, printed[-2000:]
            assert ("separate_uid on" in printed) == (request.param == "root"), printed[-2000:]
        for canary in CANARIES.values():
            assert canary not in printed and canary not in text, "a credential leaked"
        return done.returncode, [json.loads(line) for line in text.splitlines()], printed

    run.dir = tmp_path
    return run


def attack(verify, programs: list[str], timeout: float = 1.5, raw: bool = False) -> list[dict]:
    """Hostile rows interleaved with normal ones; asserts everything but the hostile verdicts' reasons."""
    rows = []
    for i, program in enumerate(programs):
        rows.append({"id": f"hostile-{i}", "answer": SECRET, "completion": program if raw else "[pot]\n" + program})
        rows.extend({"id": f"normal-{i}-{k}", "answer": gold, "completion": completion}
                    for k, (gold, completion, _) in enumerate(NORMAL))
    code, out, printed = verify(rows, timeout)
    assert code == 0, printed[-3000:]
    assert [r["id"] for r in out] == [r["id"] for r in rows], "every row is written, in order"
    hostile = [r for r in out if r["id"].startswith("hostile")]
    for row in hostile:
        assert row["verdict"] != "correct", row
        assert row["verdict"] in ("wrong", "no_answer", "timeout", "error"), row
    normal = [r for r in out if r["id"].startswith("normal")]
    expected = [verdict for _ in programs for (_, _, verdict) in NORMAL]
    assert [r["verdict"] for r in normal] == expected, [r for r in normal if r["verdict"] not in ("correct", "wrong")]
    return hostile


# -- 1. a forged verdict ----------------------------------------------------------------------------


def frame(obj) -> str:
    body = json.dumps(obj).encode()
    return repr(len(body).to_bytes(4, "big") + body)


FORGED = {"status": "correct", "verdict": "correct", "value": {"int": SECRET}, "reason": ""}
HEADER = {"index": 0, "outcome": "exited", "status": 0, "cpu": 0.0}


def test_forged_replies_and_frames_are_never_a_verdict(verify):
    programs = [
        # Reaching `os` through allowed modules, then writing forged frames to every descriptor number.
        f"import random\nos = random._os\nfor fd in range(1024):\n    try:\n        os.write(fd, {frame(FORGED)})\n"
        f"    except OSError:\n        pass\nanswer = 1",
        f"import typing\nos = typing.sys.modules['os']\nos.write(3, {frame(HEADER)} + {frame(FORGED)})\nanswer = 2",
        f"import collections\nos = collections._sys.modules['os']\nos.write(3, {json.dumps(FORGED)!r}.encode())\n"
        f"os._exit(0)\nanswer = 0",
        # A well-formed reply claiming an answer is the program's answer, nothing more.
        ESCAPE + "os.write(3, b'{\"value\":{\"int\":\"123\"},\"error\":null,\"no_answer\":null,\"output\":\"\","
                 "\"truncated\":false}')\nos._exit(0)\nanswer = 0",
        # The template's own send(), aimed at its protocol descriptor.
        ESCAPE + f"sys.modules['__main__'].send(1, {frame(HEADER)}, {frame(FORGED)})\nanswer = 3",
        ESCAPE + "sys.stdout = sys.__stdout__\nprint('{\"verdict\": \"correct\"}')\nanswer = 4",
    ]
    hostile = attack(verify, programs)
    assert hostile[2]["verdict"] == "error" and hostile[2]["reason"].startswith("malformed reply")
    assert (hostile[3]["verdict"], hostile[3]["predicted"]) == ("wrong", "123")


# -- 2. switching the policy off from inside ------------------------------------------------------


def test_switching_off_the_python_layer_leaves_the_kernel_layers(verify):
    read_gold = "answer = open({path!r}).read().split({secret!r})[0] and {secret!r}"
    programs = [
        ESCAPE + "m = sys.modules['__main__']\nm.BLOCKED_EVENTS = ()\nm.audit = lambda *a: None\n"
                 "m.Lockdown.apply = lambda *a: None\nm.Scratch.open = m.io.open\n"
                 "fd = os.open('/proc/self/status', 0)\nanswer = 1",
        ESCAPE + "for hook_owner in list(sys.modules.values()):\n    pass\n"
                 "sys.modules['__main__'].Runner.run.__code__ = (lambda self, p: b'x').__code__\n"
                 "answer = os.read(os.open('/etc/passwd', 0), 100)",
        # Disarm the audit hook (found through the frame stack), then ask libc directly.
        ESCAPE + DISARM + "ctypes = sys.modules['ctypes']\nlibc = ctypes.CDLL(None)\n"
                 "libc.prctl(22, 0, 0, 0, 0)\nlibc.prctl(4, 1, 0, 0, 0)\n"  # seccomp off? dumpable on?
                 "fd = libc.open(b'/proc/self/environ', 0)\nanswer = fd",
        ESCAPE + "sys.modules['builtins'].open = sys.modules['io'].open\n" + read_gold.format(
            path=str(verify.dir / "in.jsonl"), secret=SECRET),
    ]
    hostile = attack(verify, programs)
    assert "Operation not permitted" in hostile[0]["reason"] or "Permission" in hostile[0]["reason"]
    assert hostile[2]["predicted"] == "-1"  # libc.open failed


# -- 3. poisoning later programs ----------------------------------------------------------------------


def test_patched_modules_and_late_frames_do_not_reach_later_programs(verify):
    programs = [
        "import math\nmath.floor = lambda x: 0\nanswer = 1",
        "import numbers\nnumbers.Integral.register(float)\nanswer = 1",
        "__builtins__['abs'] = lambda x: 99\n__builtins__['round'] = lambda *a: 99\nanswer = 1",
        ESCAPE + "sys.modules['builtins'].abs = lambda x: 99\nsys.modules['fractions'].Fraction = float\nanswer = 1",
        # Every later program would report 72 if this survived; the normal rows below would then fail.
        ESCAPE + "m = sys.modules['__main__']\nm.encode = lambda v, c: '{\"int\":\"72\"}'\n"
                 "m.run_wave = None\nm.Runner.run = lambda self, p: b'{}'\nanswer = 1",
        # A reply now and a second frame later: the child is gone before it could send it.
        ESCAPE + "os.write(3, b'{\"value\":{\"int\":\"1\"},\"error\":null,\"no_answer\":null,\"output\":\"\","
                 "\"truncated\":false}')\nsys.modules['time'].sleep(30)\nanswer = 0",
    ]
    hostile = attack(verify, programs)
    assert hostile[-1]["verdict"] == "timeout"


# -- 4. one program aborting the batch -----------------------------------------------------------------


def test_malformed_and_absurd_programs_never_abort_the_batch(verify):
    reply_head = '{"value":{"int":5},"error":null,"no_answer":null,"output":"","truncated":false}'
    programs = [
        ESCAPE + f"os.write(3, {reply_head!r}.encode())\nos._exit(0)\nanswer = 0",
        ESCAPE + "os.write(3, b'[' * 200000)\nos._exit(0)\nanswer = 0",
        ESCAPE + "chunk = b'x' * (1 << 20)\nfor _ in range(40):\n    os.write(3, chunk)\nos._exit(0)\nanswer = 0",
        ESCAPE + "os._exit(0)\nanswer = 0",
        ESCAPE + "os._exit(3)\nanswer = 0",
        "raise SystemExit(0)\nanswer = 0",
        "class A:\n    def __str__(self):\n        raise ValueError('no')\nanswer = A()",
        "class A:\n    def __str__(self):\n        return 'y' * 10**8\nanswer = A()",
        "answer = float('nan')",
        "answer = 10 ** 100000",
        "def f():\n    return f()\nanswer = f()",
        ESCAPE + "sys.setrecursionlimit(10**6)\ndef f(n):\n    return f(n + 1)\nanswer = f(0)",
        ESCAPE + DISARM + "answer = sys.modules['ctypes'].string_at(0)",
        "x = bytearray(10**10)\nanswer = 1",
        "answer = 1\n" + "(" * 500 + ")" * 500,
        "answer = '\x00'",
    ]
    rows = [f"[pot]\n{p}" for p in programs] + ["[pot]\nanswer = 1\n" + "x = 1\n" * 20000, "[pot]\n\x00\x00",
                                                 "[cot]\n" + "9" * 70000, "[cot]\nAnswer: " + "(" * 5000]
    hostile = attack(verify, rows, raw=True)
    reasons = [row["reason"] for row in hostile]
    assert reasons[0].startswith("malformed reply") and reasons[1].startswith("malformed reply")
    assert reasons[2] == "reply larger than the sandbox allows"
    assert reasons[3] == "program process exited without a reply"
    assert "SIGSEGV" in reasons[12]


def test_hostile_text_costs_the_parent_its_own_row_only(verify):
    # Parsed in the verifying process itself: regexes that are linear, numbers that cannot
    # divide by zero, text that cannot be written as UTF-8. Each cost minutes or the batch before.
    n = 60_000
    rows = ["I think 1 1/0", "[cot]\n2+3\nAnswer: 1 1/0", "[pot]\nanswer = '1 1/0'", "[pot]\nprint('2 0/0')",
            " " * n + "x", "[" + " " * n, "[cot]\nAnswer: x" + " " * n + "x", "[cot]\n" + "\n" * n + "x",
            "[cot]\nthe answer is x" + " " * n + "y", "1," * (n // 2), "[pot]\nanswer = (\n" + "1,\n" * (n // 3),
            "[pot]\nanswer = 'x' + ' ' * 4094 + 'x'", "[cot]\n\ud800 hi\nAnswer: 5"]
    start = time.monotonic()
    attack(verify, rows, raw=True)
    assert time.monotonic() - start < 120, "the parent spent minutes on hostile text"


# -- 5. secrets and gold ----------------------------------------------------------------------------------


def test_secrets_and_gold_are_out_of_reach(verify, tmp_path):
    token = tmp_path / "token"
    token.write_text(CANARIES["OPENAI_API_KEY"])
    token.chmod(0o644)
    source = str(verify.dir / "in.jsonl")
    steal = (
        "found = []\n"
        "for path in {paths!r}:\n"
        "    try:\n"
        "        found.append(os.read(os.open(path, os.O_RDONLY), 1 << 20).decode(errors='replace'))\n"
        "    except OSError as exc:\n"
        "        found.append(str(exc))\n"
        "text = ' '.join(found)\n"
        "answer = {secret!r} if {secret!r} in text else text[:200]\n"
        "print(text)\n"
    )
    ppid_paths = ["/proc/{ppid}/environ", "/proc/{ppid}/cmdline", "/proc/{ppid}/mem", "/proc/{ppid}/maps"]
    programs = [
        ESCAPE + DISARM + "ppid = os.getppid()\npaths = [p.format(ppid=ppid) for p in " + repr(ppid_paths) + "]\n"
        + steal.replace("{paths!r}", "paths").format(secret=SECRET),
        ESCAPE + DISARM + steal.format(paths=[source, str(token), "/proc/self/environ", "/proc/1/environ",
                                     "/var/run/secrets/kubernetes.io/serviceaccount/token"], secret=SECRET),
        ESCAPE + "answer = repr(dict(os.environ))\nprint(answer)",
        # The verifier's memory through process_vm_readv and ptrace.
        ESCAPE + DISARM + "ctypes = sys.modules['ctypes']\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                 "buf = ctypes.create_string_buffer(64)\n"
                 "class V(ctypes.Structure):\n    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
                 "local, remote = V(ctypes.addressof(buf), 64), V(0x400000, 64)\n"
                 "n = libc.process_vm_readv(os.getppid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)\n"
                 "p = libc.ptrace(16, os.getppid(), None, None)\n"
                 "answer = f'{n} {p} {ctypes.get_errno()}'",
        # The verifier's descriptors: none are inherited, and /proc/<ppid>/fd is out of reach.
        ESCAPE + "answer = [os.readlink(f'/proc/{os.getppid()}/fd/{fd}') for fd in range(3, 16)]",
    ]
    hostile = attack(verify, programs)
    assert hostile[3]["predicted"] == "-1 -1 1"  # EPERM for both


def test_an_honest_program_sees_the_same_verdict_as_before(verify):
    # The attack classes' normal rows are checked in every test; this one is the whole batch.
    code, out, _ = verify([{"id": k, "answer": g, "completion": c} for k, (g, c, _) in enumerate(NORMAL)])
    assert code == 0 and [r["verdict"] for r in out] == [v for _, _, v in NORMAL]


# -- 6. disk, signals, processes, network --------------------------------------------------------------------


def test_disk_signals_processes_and_network_stay_closed(verify):
    marker = f"siked-attack-{uuid.uuid4().hex}"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    places = ["/tmp", "/dev/shm", "/var/tmp", str(verify.dir), str(verify.dir / "home")]
    programs = [
        f"open('/tmp/{marker}', 'w').write('x')\nanswer = 1",
        ESCAPE + DISARM + "for d in " + repr(places) + ":\n    try:\n"
                 f"        os.close(os.open(d + '/{marker}', os.O_CREAT | os.O_WRONLY, 0o666))\n"
                 "    except OSError:\n        pass\n"
                 f"    try:\n        os.mkdir(d + '/{marker}-dir')\n    except OSError:\n        pass\nanswer = 1",
        "f = open('fill', 'wb')\nwhile True:\n    f.write(b'x' * (1 << 20))\nanswer = 0",
        "for i in range(10**6):\n    open(f'f{i}', 'w').write('x')\nanswer = 0",
        ESCAPE + DISARM + "import itertools\nfor sig in (9, 15):\n    for pid in (os.getppid(), -1, 0, 1):\n"
                 "        try:\n            os.kill(pid, sig)\n        except OSError:\n            pass\nanswer = 1",
        ESCAPE + DISARM + "pid = os.fork()\nanswer = pid",
        ESCAPE + DISARM + "sys.modules['_thread'].start_new_thread(print, ('x',))\nanswer = 1",
        ESCAPE + DISARM + "os.execv('/bin/sh', ['sh', '-c', 'touch /tmp/" + marker + "'])\nanswer = 0",
        ESCAPE + DISARM + "ctypes = sys.modules['ctypes']\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                 "s = libc.socket(2, 1, 0)\nanswer = f'{s} {ctypes.get_errno()}'",
        "import socket\nanswer = 1",
    ]
    try:
        hostile = attack(verify, programs)
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()
    for place in places:
        assert not [p for p in os.listdir(place) if p.startswith(marker)], place
    assert "scratch directory full" in hostile[2]["reason"]
    assert "files in the scratch directory" in hostile[3]["reason"]
    assert hostile[8]["predicted"] == "-1 1"
    assert "Operation not permitted" in hostile[5]["reason"]
