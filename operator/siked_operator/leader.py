"""One active operator: a coordination.k8s.io Lease, held while the operator runs.

    lease = Lease(api_client, namespace="siked-system", name="siked-operator", identity="pod-abc")
    lease.acquire()          # blocks until this process holds the lease
    lease.keep(on_lost)      # renews it in a thread; on_lost() when it could not for a whole lease duration

The pattern of client-go's leader election: replicas wait for the lease; the holder renews it every
`renew_seconds`; a lease not renewed for `duration_seconds` may be taken by another replica. Writes
carry the resourceVersion they read (a JSON patch `test`), so two replicas cannot both take it. A
holder that loses the lease stops at once (the Deployment restarts it as a waiting replica): a
partitioned operator must not go on driving runs another replica now drives.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def _micro(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class Lease:
    def __init__(self, client: kubernetes.client.ApiClient, namespace: str, name: str, identity: str,
                 duration_seconds: int = 15, renew_seconds: float = 5.0, timeout: float = 10.0):
        self.api = kubernetes.client.CoordinationV1Api(client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration, self.renew, self.timeout = duration_seconds, renew_seconds, timeout
        self._stop = threading.Event()

    def _spec(self, acquired: datetime | None, transitions: int) -> dict[str, Any]:
        now = _now()
        return {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                "acquireTime": _micro(acquired or now), "renewTime": _micro(now), "leaseTransitions": transitions}

    def try_acquire(self) -> bool:
        """One attempt to take or renew the lease; True while this process holds it."""
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(None, 0)}
            try:
                self.api.create_namespaced_lease(self.namespace, body, _request_timeout=self.timeout)
            except ApiException as exc2:
                if exc2.status == 409:
                    return False  # another replica created it first
                raise
            return True
        spec = lease.spec
        mine = spec.holder_identity == self.identity
        renewed = spec.renew_time or spec.acquire_time
        expired = renewed is None or _now() > renewed + timedelta(seconds=spec.lease_duration_seconds or self.duration)
        if not (mine or expired or not spec.holder_identity):
            return False
        transitions = (spec.lease_transitions or 0) + (0 if mine else 1)
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": lease.metadata.resource_version},
                 {"op": "replace", "path": "/spec", "value": self._spec(spec.acquire_time if mine else None,
                                                                       transitions)}]
        try:
            self.api.patch_namespaced_lease(self.name, self.namespace, patch, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status in (409, 422):
                return False  # someone else wrote it since we read it
            raise
        if not mine:
            logger.info(f"took the lease {self.namespace}/{self.name} (previous holder: {spec.holder_identity})")
        return True

    def acquire(self) -> None:
        logged = False
        while not self._stop.is_set():
            try:
                if self.try_acquire():
                    return
            except Exception as exc:  # noqa: BLE001 - the API may be down; keep trying
                logger.warning(f"cannot read the lease {self.namespace}/{self.name}: {exc}")
            if not logged:
                logger.info(f"waiting for the lease {self.namespace}/{self.name}: another replica is active")
                logged = True
            self._stop.wait(self.renew)

    def keep(self, on_lost: Callable[[], None]) -> threading.Thread:
        def renew() -> None:
            held_until = time.monotonic() + self.duration
            while not self._stop.wait(self.renew):
                try:
                    if self.try_acquire():
                        held_until = time.monotonic() + self.duration
                        continue
                except Exception as exc:  # noqa: BLE001
                    logger.warning(f"renewing the lease failed: {exc}")
                if time.monotonic() >= held_until or not self._holds_or_unknown():
                    logger.error(f"lost the lease {self.namespace}/{self.name}; stopping")
                    on_lost()
                    return

        thread = threading.Thread(target=renew, name="lease", daemon=True)
        thread.start()
        return thread

    def _holds_or_unknown(self) -> bool:
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.timeout)
        except Exception:  # noqa: BLE001 - unknown: keep going until the lease would have expired
            return True
        return lease.spec.holder_identity == self.identity

    def stop(self) -> None:
        self._stop.set()
