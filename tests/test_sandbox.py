"""The PoT sandbox pool: its layers, limits and bookkeeping, with real processes.

The attack suite, hostile programs fed through `siked verify` as root and as an
unprivileged uid, is tests/test_verify_attacks.py; the reply schema is
tests/test_replies.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from hostile_programs import DISARM, ESCAPE  # noqa: E402

from siked_runtime.verification import sandbox as sandbox_module
from siked_runtime.verification.sandbox import SandboxPool, SandboxUnavailable



@pytest.fixture(scope="module")
def pool():
    with SandboxPool(size=2, timeout=1.5) as p:
        yield p


def test_layers_are_checked_not_assumed(pool):
    layers = pool.layers
    for name in ("seccomp", "rlimits", "no_new_privs", "nondumpable"):
        assert layers[name][0], (name, layers[name])
    # The child probe tried the forbidden calls and saw the kernel refuse them.
    assert "open denied" in layers["seccomp"][1] and "fork denied" in layers["seccomp"][1]
    assert "nproc=0" in layers["rlimits"][1] and "fsize=0" in layers["rlimits"][1]
    if os.geteuid() == 0:
        assert layers["separate_uid"][0]
    lines = pool.explain().splitlines()
    assert len(lines) == len(layers) and all(line.startswith(("on ", "OFF")) for line in lines)


def test_a_missing_required_layer_refuses_to_start():
    with pytest.raises(SandboxUnavailable, match="netns"):
        SandboxPool(size=1, isolate_network=False, require=["netns"])
    with pytest.raises(ValueError, match="unknown sandbox layer"):
        SandboxPool(size=1, require=["selinux"])


def test_every_program_gets_a_fresh_process(pool):
    pids = pool.run_many([ESCAPE + "answer = os.getpid()"] * 40)
    assert all(r.status == "ok" for r in pids), pids
    assert len({r.value for r in pids}) == 40
    assert not set(map(str, pool.template_pids())) & {r.value for r in pids}


def test_nothing_a_program_changes_survives_it(pool):
    poison = [
        "import math\nmath.floor = lambda x: 0\nanswer = math.floor(7.5)",
        "import numbers\nnumbers.Integral.register(float)\nanswer = 1",
        "__builtins__['abs'] = lambda x: 99\nanswer = abs(-1)",
        ESCAPE + "sys.modules['builtins'].round = lambda *a: 1234\nanswer = 1",
        "import random\nrandom.seed(99)\nanswer = 1",
    ]
    after = ["import math\nanswer = math.floor(7.5)", "answer = abs(-1)", "answer = round(2.6)",
             "answer = 2.5", "import random\nanswer = random.random()"]
    first = pool.run_many(after)
    assert [r.value for r in pool.run_many(poison)][:3] == ["0", "1", "99"]
    assert [r.value for r in pool.run_many(after * 4)] == [r.value for r in first] * 4
    assert [r.value for r in first[:4]] == ["7", "1", "3", "2.5"]


def test_programs_using_random_are_deterministic(pool):
    # Children start from the template's random state (no reseed after fork).
    values = {r.value for r in pool.run_many(["import random\nanswer = random.randint(1, 10**9)"] * 6)}
    assert len(values) == 1


def test_infinite_loop_times_out_and_is_killed(pool):
    start = time.monotonic()
    [result] = pool.run_many(["answer = 1\nwhile True:\n    pass"])
    assert result.status == "timeout" and "1.5s" in result.reason
    assert 1.5 <= time.monotonic() - start < 4.5
    assert pool.run("answer = 6 * 7").value == "42"


def test_ignored_signals_do_not_survive_the_wall_clock(pool):
    program = ESCAPE + (
        "signal = sys.modules['signal']\n"
        "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU):\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "sys.modules['time'].sleep(30)\nanswer = 1"
    )
    start = time.monotonic()
    assert pool.run(program).status == "timeout"
    assert time.monotonic() - start < 4.5


def test_cpu_limit_follows_the_timeout():
    with SandboxPool(size=1, timeout=30) as pool:
        limits = pool.layers["rlimits"][1]
        assert "cpu=31" in limits


def test_output_is_capped_and_the_reply_still_arrives():
    with SandboxPool(size=1, timeout=5, output_cap=1000) as p:
        [big, raw] = p.run_many([
            "print('x' * 10**7)\nanswer = 3",
            ESCAPE + "os.write(1, b'garbage' * 100000)\nos.write(2, b'garbage')\nprint('hi')\nanswer = 4",
        ])
    assert (big.status, big.value, big.truncated, len(big.output)) == ("ok", "3", True, 1000)
    assert (raw.status, raw.value, raw.output) == ("ok", "4", "hi\n")


def test_scratch_directory_lives_in_the_program_and_is_capped(pool):
    ok, appended, outside, full, many = pool.run_many([
        "with open('scratch.txt', 'w') as f:\n    f.write('41')\nanswer = int(open('scratch.txt').read()) + 1",
        "open('a', 'w').write('1')\nopen('a', 'a').write('2')\nanswer = open('a').read()",
        "answer = open('/etc/hostname').read()",
        "f = open('big', 'wb')\nfor _ in range(100):\n    f.write(b'x' * (1 << 20))\nanswer = 1",
        "for i in range(1000):\n    open(f'f{i}', 'w')\nanswer = 1",
    ])
    assert (ok.value, appended.value) == ("42", "12")
    assert outside.status == "error" and "outside the scratch directory" in outside.reason
    assert full.status == "error" and "scratch directory full" in full.reason
    assert many.status == "error" and "files in the scratch directory" in many.reason
    # The next program finds none of it.
    assert pool.run("answer = open('scratch.txt').read()").reason.startswith("FileNotFoundError")


def test_run_many_keeps_order_and_handles_everything():
    programs = [f"answer = {i} * 2" for i in range(200)]
    programs[17] = "answer = 1 / 0"
    programs[42] = "x = 1"
    programs[99] = "def solution():\n    return 'seven'"
    programs[150] = "answer = 10 / 4"
    programs[151] = "x" * (sandbox_module.MAX_PROGRAM_BYTES + 1)
    programs[152] = "answer = 10 ** 5000"
    with SandboxPool(size=2) as p:
        results = p.run_many(programs)
    assert results[17].status == "error" and results[17].reason == "ZeroDivisionError: division by zero"
    assert (results[42].status, results[42].value) == ("ok", None)
    assert results[99].value == "seven"
    assert results[150].value == "2.5"
    assert results[151].status == "error" and "larger than" in results[151].reason
    assert results[152].status == "error" and "ValueError" in results[152].reason
    for i, r in enumerate(results):
        if i not in (17, 42, 99, 150, 151, 152):
            assert (r.status, r.value) == ("ok", str(i * 2))


def test_a_killed_template_is_replaced_and_its_program_retried():
    with SandboxPool(size=1, timeout=5) as p:
        [template] = p.template_pids()
        killer = threading.Timer(0.3, os.kill, (template, signal.SIGKILL))
        killer.start()
        results = p.run_many([ESCAPE + "sys.modules['time'].sleep(1)\nanswer = 1"] + [f"answer = {i}" for i in range(5)])
        killer.join()
        assert [r.value for r in results] == ["1", "0", "1", "2", "3", "4"]
        assert p.template_pids() != [template]
        assert not os.path.exists(f"/proc/{template}")


def test_a_stuck_template_is_killed_by_the_parent(monkeypatch):
    monkeypatch.setattr(sandbox_module, "TEMPLATE_GRACE_S", 0.5)
    with SandboxPool(size=1, timeout=0.5) as p:
        [template] = p.template_pids()
        os.kill(template, signal.SIGSTOP)
        start = time.monotonic()
        [result] = p.run_many(["answer = 1"])
        # Retried once on a fresh template, which answers.
        assert result.value == "1" and time.monotonic() - start < 5
        assert p.template_pids() != [template]


def test_close_removes_templates_and_their_children():
    p = SandboxPool(size=2)
    pids = p.template_pids()
    p.close()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")


def test_a_child_holds_no_descriptor_but_its_own(pool):
    ours = os.open(os.devnull, os.O_RDONLY)
    try:
        result = pool.run(ESCAPE + (
            "fds = []\n"
            "for fd in range(1024):\n"
            "    try:\n"
            "        os.lseek(fd, 0, 1)\n"
            "    except OSError as exc:\n"
            "        if exc.errno == 9:\n"
            "            continue\n"
            "    fds.append(fd)\n"
            "answer = str(fds)\n"
            "env = sorted(os.environ)\n"
            "print(env)\n"))
    finally:
        os.close(ours)
    # 0-2 on /dev/null and 3, its own reply pipe: nothing of the template's or ours.
    assert result.value == "[0, 1, 2, 3]", result
    assert result.output.strip() in ("[]", "['LC_ALL', 'PATH']")


# Finds the bytes of SIBLINGMARKER anywhere in the child's memory except in its own needle,
# probing each page with a shared futex wake first (EFAULT, not a crash, where nothing readable is mapped).
SCAN = ESCAPE + DISARM + (
    "ctypes = sys.modules['ctypes']\n"
    "libc = ctypes.CDLL(None)\n"
    "needle = ''.join(['SIBLING', 'MARKER']).encode()\n"
    "own = (id(needle), id(needle) + 64)\n"
    "found = 0\n"
    "centre = id(object()) & ~4095\n"
    "for page in range(centre - (64 << 20), centre + (64 << 20), 4096):\n"
    "    if libc.syscall(202, ctypes.c_void_p(page), 1, 0, None, None, 0) != 0:\n"
    "        continue\n"
    "    data = ctypes.string_at(page, 4096)\n"
    "    at = data.find(needle)\n"
    "    while at >= 0:\n"
    "        if not own[0] <= page + at < own[1]:\n"
    "            found += 1\n"
    "        at = data.find(needle, at + 1)\n"
    "answer = found\n"
)


def test_no_program_finds_another_programs_text_or_reply_in_its_memory():
    # Before, every child held its whole batch (other programs it could run and copy the answers of).
    sibling = "marker = 'SIBLINGMARKER'\nprint(marker * 3)\nanswer = 7"
    with SandboxPool(size=1, timeout=10) as p:
        results = p.run_many([sibling] * 3 + [SCAN] * 2 + [sibling] * 4 + [SCAN] * 3)
    assert [r.value for r in results] == ["7"] * 3 + ["0"] * 2 + ["7"] * 4 + ["0"] * 3, results


def test_a_program_starved_by_its_wave_runs_again_alone():
    # Seven spinners share the CPU with an honest program whose timeout is three times what it needs alone.
    honest = "total = 0\nfor i in range(2_000_000):\n    total += i\nanswer = total"
    with SandboxPool(size=1, timeout=30) as p:
        start = time.monotonic()
        alone = p.run(honest)
        timeout = 3 * (time.monotonic() - start)
        results = p.run_many(["while True:\n    pass\nanswer = 1"] * 7 + [honest], timeout=timeout)
    assert alone.status == "ok"
    assert results[-1].value == alone.value, results[-1]
    assert all(r.status == "timeout" for r in results[:-1])


def test_children_do_not_outlive_their_template():
    with SandboxPool(size=1, timeout=2) as p:
        [template] = p.template_pids()
        threading.Timer(0.5, os.kill, (template, signal.SIGKILL)).start()
        p.run_many([ESCAPE + "sys.modules['time'].sleep(30)\nanswer = 1"] * 2)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and processes_in_group(template):
            time.sleep(0.1)
        assert processes_in_group(template) == []


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
