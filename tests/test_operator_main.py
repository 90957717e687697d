"""`siked-operator`'s flags and their environment variables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from siked_operator.main import build_parser, config_from


def test_flags_become_settings(monkeypatch):
    monkeypatch.setenv("SIKED_OPERATOR_STORAGE_URI", "s3://from-env/runs")
    monkeypatch.setenv("SIKED_OPERATOR_STORAGE_SECRET", "env-secret")
    args = build_parser().parse_args(["-n", "team-a", "-n", "team-b", "--storage-uri", "s3://from-flag/runs",
                                      "--poll-interval", "0.5", "--retry-backoff", "2", "--metrics-port", "9100"])
    config = config_from(args)
    assert args.namespaces == ["team-a", "team-b"] and not args.all_namespaces
    assert config.storage_uri == "s3://from-flag/runs"      # a flag wins over its variable
    assert config.storage_secret == "env-secret"            # a variable fills what no flag set
    assert config.poll_interval == 0.5 and config.retry_backoff_seconds == 2
    assert args.metrics_port == 9100 and args.liveness_port == 8080


def test_ports_from_the_environment(monkeypatch):
    monkeypatch.setenv("SIKED_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("SIKED_OPERATOR_LIVENESS_PORT", "8181")
    args = build_parser().parse_args(["-A"])
    assert args.all_namespaces and args.metrics_port == 0 and args.liveness_port == 8181


def test_default_stage_resources_as_json(monkeypatch):
    monkeypatch.setenv("SIKED_OPERATOR_DEFAULT_RESOURCES", '{"gpus": 1, "nodeSelector": {"pool": "gpu"}}')
    assert config_from(build_parser().parse_args([])).default_resources.node_selector == {"pool": "gpu"}
    args = build_parser().parse_args(["--default-resources", '{"memory": "32Gi"}'])
    assert config_from(args).default_resources.model_dump(exclude_none=True) == {"memory": "32Gi"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--default-resources", '{"gpu": 1}'])  # a typo is an error, not ignored


def test_the_console_script_runs():
    exe = Path(sys.executable).parent / "siked-operator"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True, timeout=60).stdout
    assert "--all-namespaces" in out and "--metrics-port" in out and "--namespace" in out


def test_leader_election_flags(monkeypatch):
    assert build_parser().parse_args([]).leader_election is False
    monkeypatch.setenv("SIKED_OPERATOR_LEADER_ELECTION", "true")
    monkeypatch.setenv("SIKED_OPERATOR_LEASE_NAMESPACE", "siked-system")
    args = build_parser().parse_args([])
    assert args.leader_election is True and args.lease_namespace == "siked-system"
    assert build_parser().parse_args(["--no-leader-election"]).leader_election is False


def test_a_replica_waiting_for_the_lease_answers_its_liveness_probe():
    import urllib.request

    from siked_operator.main import _healthz

    sys.path.insert(0, str(Path(__file__).parent))
    from k8s_tools import free_port

    port = free_port()
    with _healthz(port):
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
