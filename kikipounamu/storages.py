"""The S3 storage's declaration, built from plain values (settings.py's S3_*
variables, or a test's own server): one copy of the options we run it with."""

from __future__ import annotations

from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def s3_storage(
    *,
    bucket: str,
    endpoint_url: str | None,
    region: str | None,
    addressing_style: str | None,
    access_key: str | None,
    secret_key: str | None,
    sse: str = "",
    sse_kms_key_id: str = "",
    max_memory_size: int = 1_048_576,
    connect_timeout: float = 5,
    read_timeout: float = 30,
    max_attempts: int = 3,
) -> dict[str, Any]:
    """A ``STORAGES["default"]`` entry for django-storages' S3Storage.
    https://django-storages.readthedocs.io/en/latest/backends/amazon-S3.html"""
    object_parameters = {"ServerSideEncryption": sse} if sse else {}
    if sse_kms_key_id:
        object_parameters["SSEKMSKeyId"] = sse_kms_key_id
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": endpoint_url,
            "region_name": region,
            "addressing_style": addressing_style,
            "access_key": access_key,
            "secret_key": secret_key,
            "object_parameters": object_parameters,
            # Reads spill from memory to a temporary file past this size.
            "max_memory_size": max_memory_size,
            # Uploads run in the saving thread. s3transfer's default makes a pool of
            # threads for each upload and waits for it: a short job's upload (100 KB,
            # one PUT to SeaweedFS on this machine) took p50 9.3-10.9 ms against
            # 8.1-8.9 here, p90 12-16 against 10-11, and 17 against 11 on a busier
            # machine. What is lost: an upload past 8 MB sends its parts one after
            # another instead of ten at once, which matters far from the store, not
            # beside it.
            "transfer_config": TransferConfig(use_threads=False),
            # Names are job and chunk UUIDs: one object per name, never renamed.
            "file_overwrite": True,
            # Audio is private; the API serves it to its owner, never a bucket URL.
            "default_acl": None,
            "querystring_auth": True,
            "client_config": Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                # botocore's "standard" mode backs off between tries.
                retries={"mode": "standard", "max_attempts": max_attempts},
                s3={"addressing_style": addressing_style} if addressing_style else None,
            ),
        },
    }
