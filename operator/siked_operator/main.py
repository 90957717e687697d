"""`siked-operator`: runs the DistillationRun operator.

    siked-operator --all-namespaces --storage-uri s3://siked-runs/runs
    siked-operator -n team-a -n team-b --metrics-port 9090 --liveness-port 8080

Credentials: in-cluster service account, else the kubeconfig (KUBECONFIG).
Every setting also reads from the environment (SIKED_OPERATOR_STORAGE_URI,
SIKED_OPERATOR_NAMESPACES=a,b, …), which is how the Helm chart passes them;
a flag wins over its variable.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.server
import os
import sys
import threading
from collections.abc import Iterator

from siked_operator.config import Config
from siked_runtime.spec import ResourceSpec


def _env(name: str) -> str | None:
    return os.environ.get(f"SIKED_OPERATOR_{name}") or None


def resources(text: str) -> ResourceSpec:
    """JSON shaped like a run's spec.resources.default."""
    return ResourceSpec.model_validate_json(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="siked-operator", description=__doc__.split("\n\n")[0])
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", dest="namespaces", action="append",
                       help="watch this namespace (repeatable); default: all namespaces")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    p.add_argument("--metrics-port", type=int, default=int(_env("METRICS_PORT") or 9090),
                   help="Prometheus metrics on this port (0: off; default 9090)")
    p.add_argument("--liveness-port", type=int, default=int(_env("LIVENESS_PORT") or 8080),
                   help="liveness probe at http://:PORT/healthz (0: off; default 8080)")
    p.add_argument("--default-image", help="stage Jobs' image for runs without spec.image")
    p.add_argument("--default-resources", type=resources, metavar="JSON",
                   help="stage Jobs' resources under each run's spec.resources, shaped like "
                        "spec.resources.default, e.g. '{\"gpus\": 1, \"memory\": \"32Gi\"}'")
    p.add_argument("--storage-uri", help="runs without spec.storage.uri live at URI/<namespace>/<name>")
    p.add_argument("--s3-endpoint", help="S3 endpoint (MinIO, Ceph) for runs without spec.storage.endpoint")
    p.add_argument("--storage-secret", help="Secret with AWS_* keys for runs without spec.storage.secretRef")
    p.add_argument("--service-account", help="service account of stage Jobs' pods")
    p.add_argument("--poll-interval", type=float, help="seconds between re-derivations of each run (default 1)")
    p.add_argument("--retry-backoff", dest="retry_backoff_seconds", type=float,
                   help="seconds before the first retry of a failed stage; doubles per failure (default 10)")
    p.add_argument("--pending-check", dest="pending_check_seconds", type=float,
                   help="seconds between looks at the pods of a stage Job that has not started (default 10)")
    p.add_argument("--outage-backoff-max", dest="outage_backoff_max_seconds", type=float,
                   help="longest wait between passes of a run whose storage or API calls fail (default 30)")
    p.add_argument("--leader-election", action=argparse.BooleanOptionalAction,
                   default=(_env("LEADER_ELECTION") or "false").lower() == "true",
                   help="hold a Lease while running, so that of several replicas one is active (default: off)")
    p.add_argument("--lease-namespace", default=_env("LEASE_NAMESPACE") or "default",
                   help="namespace of the Lease `siked-operator` (default: default)")
    p.add_argument("--verbose", action="store_true", help="log more")
    p.add_argument("--debug", action="store_true", help="log everything, API calls included")
    return p


def config_from(args: argparse.Namespace) -> Config:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                 if getattr(args, f.name, None) is not None}
    return dataclasses.replace(Config.from_env(), **overrides)


@contextlib.contextmanager
def _healthz(port: int) -> Iterator[None]:
    """`GET /healthz` answered 200 on `port` (0: nothing) while the block runs."""
    if not port:
        yield
        return

    class Alive(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Alive)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from(args)
    namespaces = args.namespaces or [n for n in (_env("NAMESPACES") or "").split(",") if n]
    clusterwide = args.all_namespaces or not namespaces

    import kopf

    import siked_operator.handlers as handlers

    kopf.configure(verbose=args.verbose, debug=args.debug)
    if args.leader_election:
        from siked_operator.kube import api_client
        from siked_operator.leader import Lease

        lease = Lease(api_client(), args.lease_namespace, "siked-operator", handlers.identity(),
                      timeout=config.request_timeout)
        # A waiting replica is alive: answer the liveness probe until kopf serves it.
        with _healthz(args.liveness_port):
            lease.acquire()
        # Losing the lease ends the process at once: another replica drives the runs now.
        lease.keep(on_lost=lambda: os._exit(1))
    kopf.run(
        clusterwide=clusterwide,
        namespaces=[] if clusterwide else namespaces,
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None,
        memo=kopf.Memo(config=config, metrics_port=args.metrics_port, namespaces=[] if clusterwide else namespaces),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
