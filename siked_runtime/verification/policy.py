"""The kernel policies a sandbox child runs under, built in the parent with the field's libraries.

    bpf = seccomp_program()          # hex of the compiled filter, or None where libseccomp is missing
    ruleset = landlock_ruleset()     # a Landlock ruleset fd granting no filesystem access, or None

The seccomp filter is an allow-list compiled by libseccomp (through `pyseccomp`): a
program may compute, allocate memory, read the clock and random bytes, write to the
descriptors it already holds and exit. Everything else fails with EPERM: opening
any path (so /proc, the verify input and every secret on disk are out of reach),
fork, clone and threads, exec, sockets, signals to any process, ptrace and
process_vm_*, prctl, setrlimit, mount and namespaces, ioctl, io_uring, bpf.
Syscalls of other ABIs (32-bit `int 0x80`, x32) kill the process (libseccomp's
bad-architecture action).

Memory may be mapped executable, so a program that reaches ctypes can run native code;
that code is confined by the same filter (the filter, not Python, is the boundary).

The template loads the compiled filter in each child with one prctl, so the
per-program cost is a syscall, not a compilation.
"""

from __future__ import annotations

import errno
import os
import tempfile

from siked_runtime.spec import SANDBOX_LAYERS

# What a running Python program needs once its modules are imported. prlimit64 on
# itself without a new limit is allowed below, so a program can read its own limits.
ALLOWED_SYSCALLS: tuple[str, ...] = (
    "read", "readv", "write", "writev", "lseek", "close",
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise",
    "rt_sigreturn", "rt_sigaction", "rt_sigprocmask", "sigaltstack",
    "futex", "sched_yield", "getrandom",
    "clock_gettime", "clock_getres", "gettimeofday", "time", "nanosleep", "clock_nanosleep",
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid",
    "getrusage", "times", "getrlimit", "restart_syscall",
    "exit", "exit_group",
)

LAYERS: tuple[str, ...] = SANDBOX_LAYERS
LAYER_HELP = {
    "seccomp": "syscall allow-list in every child (no open, fork, exec, sockets, signals, ptrace)",
    "landlock": "no filesystem access for the template and its children",
    "netns": "an empty network namespace (unshare)",
    "nondumpable": "the template's /proc files and memory closed to its own uid",
    "no_new_privs": "no privileges gained through exec",
    "rlimits": "memory, CPU seconds, no files written, no processes, no new descriptors, no core",
    "separate_uid": "children run as another uid than the verifier (root drops to nobody)",
}


def seccomp_program() -> tuple[str | None, str]:
    """The child's filter as hex-encoded BPF, and why not when it cannot be built here."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:  # the package, or libseccomp.so.2 itself
        return None, f"libseccomp unavailable: {exc}"
    try:
        rules = seccomp.SyscallFilter(seccomp.ERRNO(errno.EPERM))
        for name in ALLOWED_SYSCALLS:
            try:
                rules.add_rule(seccomp.ALLOW, name)
            except (OSError, ValueError, RuntimeError):
                continue  # not a syscall on this architecture
        # Reading its own limits only: pid 0 and no new limit (another pid would tell which pids exist).
        rules.add_rule(seccomp.ALLOW, "prlimit64", seccomp.Arg(0, seccomp.EQ, 0), seccomp.Arg(2, seccomp.EQ, 0))
        with tempfile.TemporaryFile() as out:
            rules.export_bpf(out)
            out.seek(0)
            program = out.read()
    except (OSError, ValueError, RuntimeError) as exc:
        return None, f"seccomp filter could not be built: {exc}"
    return program.hex(), ""


def landlock_ruleset() -> tuple[int | None, str]:
    """A Landlock ruleset fd that handles every filesystem right and grants none (close it after use)."""
    try:
        import ctypes

        from landlock.plumbing import FSAccess, RulesetAttr, get_create_ruleset

        attr = RulesetAttr(FSAccess.all())
        fd = get_create_ruleset()(ctypes.byref(attr), ctypes.sizeof(attr), 0)
    except Exception as exc:  # noqa: BLE001 - ImportError, or the kernel's ENOSYS/EOPNOTSUPP
        return None, f"Landlock unavailable: {exc}".splitlines()[0]
    os.set_inheritable(fd, False)
    return fd, ""
