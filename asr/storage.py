"""Audio in Django's storage: the one way any process reads, writes or deletes it.

The default storage is a folder (one machine) or an S3-compatible object store
(``STORAGE_BACKEND=s3``: workers on other machines read what the web stored). The
backends fail in their own ways (``FileNotFoundError``, botocore's errors); here
they become two kinds a caller can act on: :class:`AudioMissing` (the object is
not there: retrying cannot help) and :class:`StorageUnavailable` (the store could
not be reached or answered with an error: it may work again later). Neither
message carries an endpoint, a key or a credential.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterable
from collections.abc import Iterator
from contextlib import closing
from contextlib import contextmanager
from typing import IO
from typing import Any

from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError
from botocore.exceptions import ClientError
from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import default_storage
from s3transfer.exceptions import RetriesExceededError
from storages.utils import clean_name
from storages.utils import safe_join

logger = logging.getLogger(__name__)

# S3's answers for "no such object" (HEAD answers a bare 404).
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class AudioMissing(Exception):
    """The named object is not in the store."""


class StorageUnavailable(Exception):
    """The store could not be reached, or failed: a transient problem."""

    def __init__(self, doing: str, exc: BaseException) -> None:
        # The error's class and S3 code say enough; botocore's own text may name
        # the endpoint, and a backend's may name a path.
        reason = type(exc).__name__
        if isinstance(exc, ClientError):
            reason = f"{exc.response.get('Error', {}).get('Code', '?')} from the store"
        super().__init__(f"The audio store could not {doing} ({reason}).")
        self.reason = reason


def _is_missing(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code")) in _MISSING_CODES
    return False


# What a backend raises when the store is down or refuses: botocore's errors, boto3's
# and s3transfer's for transfers that gave up, and the OS's for a folder (a lost
# network mount, a full disk).
_BACKEND_ERRORS = (
    BotoCoreError,
    ClientError,
    Boto3Error,
    RetriesExceededError,
    OSError,
)


def audio_file(name: str | None) -> IO[bytes]:
    """The stored object ``name``, opened for reading, whole and local; the caller
    closes it (a FileResponse does).

    An S3 object is read into a temporary file at once (in memory up to
    S3_MAX_MEMORY_BYTES, on disk past it), so that a decoder's reads and seeks never
    touch the network and a store failing half-way is a storage error, not corrupt
    audio.
    """
    if not name:
        raise AudioMissing(name)
    try:
        if getattr(default_storage, "bucket", None) is not None:
            return _object_download(default_storage, name)
        fh = default_storage.open(name, "rb")
        # A lost mount or a permission shows now, not in the decoder.
        fh.read(1)
        fh.seek(0)
    except _BACKEND_ERRORS as exc:
        if _is_missing(exc):
            raise AudioMissing(name) from None
        raise StorageUnavailable("read the audio", exc) from exc
    return fh


# Bytes a download writes at a time.
_DOWNLOAD_CHUNK = 1 << 16


def _object_download(store: Any, name: str) -> File:
    """The object ``name`` read whole by one GET into a temporary file (in memory up
    to S3_MAX_MEMORY_BYTES, on disk past it).

    Not ``default_storage.open()``: django-storages' S3File asks for the object with
    a HEAD, then hands the download to s3transfer, which asks again with another
    HEAD and runs the GET in a thread pool made for that one call. For a short
    job's upload (100 KB, SeaweedFS on the same machine) that took 9.5 ms against
    4.3 for the GET alone (21 against 6 on a busier machine), and the worker's read
    and decode 16 ms against 8 (bench/pipeline.py --only storage): half of what S3
    added to a short job. s3transfer's ranged GETs in parallel pay off for objects of
    hundreds of MB far from the worker; a single GET reads long audio at the
    link's speed, and a job's bounded retries cover one that breaks off (botocore
    checks the length read against Content-Length).
    """
    key = safe_join(store.location, clean_name(name))
    # Closed by the caller, as an opened file is (or below, if the GET fails).
    spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115
        max_size=store.max_memory_size,
        suffix=".S3File",
        dir=settings.FILE_UPLOAD_TEMP_DIR,
    )
    try:
        client = store.bucket.meta.client
        body = client.get_object(Bucket=store.bucket_name, Key=key)["Body"]
        with closing(body):
            for chunk in body.iter_chunks(_DOWNLOAD_CHUNK):
                spool.write(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return File(spool, name=name)


@contextmanager
def audio_open(name: str | None) -> Iterator[IO[bytes]]:
    """:func:`audio_file`, closed at the end of the block."""
    fh = audio_file(name)
    try:
        yield fh
    finally:
        fh.close()


def audio_read(name: str) -> bytes:
    """The stored object ``name`` as bytes (small objects: a chunk's WAV)."""
    with audio_open(name) as fh:
        return fh.read()


def audio_save(name: str, content: File | IO[bytes] | bytes) -> str:
    """Store ``content`` under ``name``; the name the store used.

    On failure nothing is left under the name: a multipart upload that broke off is
    aborted by boto3, and whatever a folder got is removed.
    """
    if isinstance(content, bytes):
        content = io.BytesIO(content)
    if not isinstance(content, File):
        content = File(content, name=name)
    try:
        return default_storage.save(name, content)
    except _BACKEND_ERRORS as exc:
        audio_delete([name])
        raise StorageUnavailable("store the audio", exc) from exc


def audio_delete(names: Iterable[str]) -> int:
    """Delete stored objects, quietly: a store that is down keeps them, and
    retention or the next delete removes them later. The count deleted."""
    deleted = 0
    for name in names:
        if not name:
            continue
        try:
            default_storage.delete(name)
        except _BACKEND_ERRORS as exc:
            logger.warning(
                "audio %s not deleted: %s", name, StorageUnavailable("delete", exc)
            )
            continue
        deleted += 1
    return deleted


def audio_delete_prefix(prefix: str) -> int:
    """Delete every object under the folder ``prefix`` (a fanned-out job's chunks,
    also those of a fan-out that never committed). The count deleted."""
    try:
        _, files = default_storage.listdir(prefix)
    except FileNotFoundError:
        return 0
    except _BACKEND_ERRORS as exc:
        logger.warning("%s not listed: %s", prefix, StorageUnavailable("list", exc))
        return 0
    deleted = audio_delete(f"{prefix}/{name}" for name in files)
    if not _is_object_store():
        # A folder stays behind a folder's files; an object store has no folders.
        audio_delete([prefix])
    return deleted


def _is_object_store() -> bool:
    try:
        default_storage.path("")
    except NotImplementedError:
        return True
    return False


def audio_exists(name: str | None) -> bool:
    """Whether ``name`` is stored (one HEAD on S3); StorageUnavailable if unsure."""
    if not name:
        return False
    try:
        return default_storage.exists(name)
    except _BACKEND_ERRORS as exc:
        raise StorageUnavailable("check the audio", exc) from exc


def store_check() -> None:
    """Raise StorageUnavailable unless the store answers (readiness): the bucket is
    there and these credentials may use it, or the folder is writable."""
    try:
        bucket = getattr(default_storage, "bucket", None)
        if bucket is not None:
            bucket.meta.client.head_bucket(Bucket=bucket.name)
            return
        root = default_storage.path("")
        if not os.access(root, os.W_OK) and os.path.exists(root):
            raise PermissionError(root)
    except _BACKEND_ERRORS as exc:
        raise StorageUnavailable("be used", exc) from exc


def bucket_create() -> bool:
    """Create the S3 bucket if it is not there (set-up, the test suite); True if it
    was created. Nothing to do for a folder."""
    bucket = getattr(default_storage, "bucket", None)
    if bucket is None:
        return False
    client = bucket.meta.client
    try:
        client.head_bucket(Bucket=bucket.name)
        return False
    except ClientError as exc:
        if not _is_missing(exc):
            raise StorageUnavailable("be used", exc) from exc
    except _BACKEND_ERRORS as exc:
        raise StorageUnavailable("be reached", exc) from exc
    try:
        client.create_bucket(Bucket=bucket.name)
    except _BACKEND_ERRORS as exc:
        raise StorageUnavailable("create its bucket", exc) from exc
    return True


def store_name() -> str:
    """The store in words, for operators: never a credential."""
    bucket = getattr(default_storage, "bucket", None)
    if bucket is None:
        return f"folder {default_storage.path('')}"
    endpoint = bucket.meta.client.meta.endpoint_url
    return f"bucket {bucket.name} at {endpoint}"
