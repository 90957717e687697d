"""Shared pytest fixtures.

`s3_server` runs moto's S3 over real HTTP on a free local port for the whole
test session, with fake AWS credentials in the environment; `s3_bucket` gives
each test a fresh bucket:

    @pytest.mark.integration
    def test_something(s3_bucket):
        store = open_store(s3_bucket.uri, endpoint_url=s3_bucket.endpoint_url)
        # or just open_store(s3_bucket.uri): SIKED_S3_ENDPOINT points at the server
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from typing import NamedTuple

import pytest

# Fake credentials for moto; also keeps tests away from a developer's real
# AWS profile and from any endpoint configured in their shell.
_FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}
_UNSET_AWS_ENV = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "SIKED_S3_ENDPOINT")


class S3Bucket(NamedTuple):
    uri: str  # s3://bucket/prefix
    endpoint_url: str


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL (http://127.0.0.1:PORT) of a moto S3 server shared by the session."""
    from moto.server import ThreadedMotoServer

    env = pytest.MonkeyPatch()
    for name, value in _FAKE_AWS_ENV.items():
        env.setenv(name, value)
    for name in _UNSET_AWS_ENV:
        env.delenv(name, raising=False)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        env.undo()


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A new, empty bucket on the session's moto server, as (uri, endpoint_url).

    `SIKED_S3_ENDPOINT` is set for the test, so code that opens the URI without
    an explicit endpoint (including subprocesses) reaches the same server.
    """
    bucket = f"siked-test-{uuid.uuid4().hex[:12]}"
    _admin_client(s3_server).create_bucket(Bucket=bucket)
    monkeypatch.setenv("SIKED_S3_ENDPOINT", s3_server)
    return S3Bucket(uri=f"s3://{bucket}/runs/test", endpoint_url=s3_server)


@functools.cache
def _admin_client(endpoint_url: str):  # noqa: ANN202 - boto3 clients have no static type
    # One client per server: creating a boto3 client costs a few hundred ms.
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=endpoint_url)
