"""Credentials leave the environment of a verifying process and stay usable by its clients (own process each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = r"""
import ctypes, json, os, subprocess, sys
from siked_runtime import credentials
moved = credentials.seal(["TEACHER_KEY"])
child = subprocess.run([sys.executable, "-c", "import os, json; print(json.dumps(dict(os.environ)))"],
                       capture_output=True, text=True).stdout
print(json.dumps({
    "moved": moved,
    "environ": [k for k in os.environ if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TEACHER_KEY")],
    "child": [k for k in json.loads(child) if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TEACHER_KEY")],
    "get": credentials.get("TEACHER_KEY"),
    "s3": credentials.s3_keys(),
    "dumpable": ctypes.CDLL(None).prctl(3, 0, 0, 0, 0),
    "other": os.environ.get("UNRELATED"),
}))
"""


def test_seal_moves_keys_out_of_the_environment_and_makes_the_process_not_dumpable():
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret", "TEACHER_KEY": "sk-x",
           "UNRELATED": "kept"}
    out = json.loads(subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                                    check=True).stdout)
    assert set(out["moved"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TEACHER_KEY"}
    assert out["environ"] == [] and out["child"] == []
    assert out["get"] == "sk-x" and out["s3"] == {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "secret"}
    assert out["dumpable"] == 0 and out["other"] == "kept"


def test_without_sealed_keys_boto3_keeps_its_own_chain():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    code = "from siked_runtime import credentials; credentials.seal(); print(credentials.s3_keys())"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "{}"


def test_sweep_takes_everything_named_like_a_secret():
    env = {**os.environ, "OPENAI_API_KEY": "sk-x", "HF_TOKEN": "hf-x", "DB_PASSWORD": "p", "KEEP_ME": "1"}
    code = ("import os, json; from siked_runtime import credentials; credentials.seal(sweep=True); "
            "print(json.dumps([k for k in ('OPENAI_API_KEY', 'HF_TOKEN', 'DB_PASSWORD', 'KEEP_ME') if k in os.environ]))")
    left = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                     check=True).stdout)
    assert left == ["KEEP_ME"]
