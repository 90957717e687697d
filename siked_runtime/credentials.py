"""Credentials out of the environment of a process that runs untrusted code's verifier.

    credentials.seal(["OPENAI_API_KEY"])    # S3 keys and the named variables leave os.environ
    credentials.get("AWS_SECRET_ACCESS_KEY")

A stage that verifies model output holds S3 keys and the teacher's API key. `seal`
moves them from `os.environ` into this module, so no child process (the sandbox's
templates, math-verify workers, vLLM or torch workers) inherits them, and marks the
process not dumpable, so no other process of its uid can read its memory or
`/proc/<pid>/environ` (which keeps the environment the process started with).
The storage and API clients read their keys through `get`.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from typing import Iterable

# Credentials boto3 reads from the environment (IRSA's token file path is not a secret;
# the file itself is out of the sandbox's reach).
S3_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")

_sealed: dict[str, str] = {}
_lock = threading.Lock()


# What `seal(sweep=True)` also takes: anything named like a secret.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def seal(names: Iterable[str] = (), sweep: bool = False) -> list[str]:
    """Move the S3 variables and `names` (with `sweep`, every variable named like a secret) out of the
    environment; returns the names moved."""
    moved = []
    with _lock:
        swept = [name for name in os.environ if sweep and _SECRET_NAME.search(name)]
        for name in (*S3_VARIABLES, *names, *swept):
            value = os.environ.pop(name, None)
            if value is not None:
                _sealed[name] = value
                moved.append(name)
    forbid_dumps()
    return moved


def get(name: str) -> str | None:
    """A sealed credential, or the environment's value when it was never sealed."""
    with _lock:
        return _sealed.get(name, os.environ.get(name))


def s3_keys() -> dict[str, str]:
    """boto3 client keyword arguments for sealed S3 keys ({} lets boto3's default chain decide)."""
    keys = {"aws_access_key_id": get("AWS_ACCESS_KEY_ID"), "aws_secret_access_key": get("AWS_SECRET_ACCESS_KEY"),
            "aws_session_token": get("AWS_SESSION_TOKEN")}
    if not (keys["aws_access_key_id"] and keys["aws_secret_access_key"]):
        return {}
    return {k: v for k, v in keys.items() if v}


def forbid_dumps() -> None:
    """PR_SET_DUMPABLE 0: this process's /proc/<pid>/{environ,mem,maps} and ptrace need CAP_SYS_PTRACE from now on."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass
