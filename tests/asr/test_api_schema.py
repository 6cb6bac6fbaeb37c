"""The OpenAPI schema tells the truth: schemathesis against the live web process.

`schemathesis run --checks all` generates requests from /api/schema/ (valid ones and
ones the schema forbids) and fails on any answer the schema does not describe: an
undocumented status, body, content type or header, a 5xx, a forbidden input taken,
an allowed one refused, a deleted job still there. The user owns a job in every
state, so cancel, delete, retry and the downloads answer for real, not only 404.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from asr.models import Transcription
from tests.asr.test_api import URL
from tests.asr.test_api import make_job
from tests.factories import UserFactory

Status = Transcription.Status

# The web of this module: a queue namespace of its own, so that no worker takes the
# jobs schemathesis submits (they just wait), and uploads limited only by the user
# rate, so that they are tested rather than throttled. The rate below stays under
# that limit: no 429s from going too fast.
NAMESPACE = {
    "KIKI_TEST_NAMESPACE": "-schema",
    "API_THROTTLE_SUBMIT": "1200/min",
}
RATE_LIMIT = "1000/m"
# Test cases per operation and phase: about 1,000 cases, 850 requests, a minute and a
# half on 2 cores.
MAX_EXAMPLES = 60

# Random bytes in `file` are a schema-valid upload that no server can transcribe
# (a schema cannot say "audio"): an upload may refuse schema-valid input with any
# error it documents.
CONFIG = """
[[operations]]
include-operation-id = "v1_transcriptions_create"
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "400", "401", "403", "413", "415", "422", "429", "503",
]
"""
# Nor can it say "a URL that reaches a public address": a webhook URL the schema
# allows may be refused (invalid_url: loopback, private, ...).
CONFIG += "".join(
    f"""
[[operations]]
include-operation-id = "{operation}"
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "400", "401", "403", "404", "429",
]
"""
    for operation in ("v1_webhooks_create", "v1_webhooks_partial_update")
)


def seed_jobs(owner: Any, *, each: int = 3) -> None:
    """Jobs in each state that decides what DELETE, retry and downloads answer, a
    few of each: the first DELETE of a finished one takes it away."""
    for _ in range(each):
        make_job(owner, status=Status.QUEUED)
        make_job(owner, status=Status.RUNNING, attempts=1)
        make_job(
            owner,
            status=Status.SUCCEEDED,
            text="hello there",
            segments=[{"start": 0.0, "end": 1.0, "text": "hello there"}],
            duration=1.0,
            language="en",
        )
        make_job(owner, status=Status.FAILED, error_code="corrupt_audio")
        make_job(owner, status=Status.CANCELLED)
        make_job(owner, status=Status.FAILED, error_code="timeout").audio.delete()


@pytest.mark.pipeline
@pytest.mark.timeout(480)  # about 90 s alone; room for a machine shared with others
def test_schemathesis_finds_nothing_the_schema_does_not_say(
    transactional_db: Any, own_web: str, tmp_path: Path
) -> None:
    # given a user who owns jobs in every state
    user = UserFactory()
    token = Token.objects.create(user=user)
    seed_jobs(user)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    har = tmp_path / "requests.har"

    # when schemathesis runs every check on every operation
    result = subprocess.run(
        [
            *(sys.executable, "-m", "schemathesis.cli"),
            *("--config-file", str(config)),
            "run",
            f"{own_web}/api/schema/",
            *("--checks", "all"),
            # DELETE on a queued job cancels it and answers 200 with the job, which
            # stays: schemathesis takes any 2xx DELETE for a deletion. The test
            # checks use after a real deletion (204) itself, below.
            *("--exclude-checks", "use_after_free"),
            *("--max-examples", str(MAX_EXAMPLES)),
            *("--rate-limit", RATE_LIMIT),
            *("--header", f"Authorization: Token {token.key}"),
            *("--generation-database", "none"),
            # The same cases every run: which seeded jobs a DELETE takes before a
            # download reaches them must not decide whether the test passes.
            *("--seed", "20261202"),
            *("--report", "har"),
            *("--report-har-path", str(har)),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=420,  # within the test's own
        cwd=tmp_path,
    )

    # then it found nothing
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-30_000:]
    entries = json.loads(har.read_text())["log"]["entries"]
    exchanges = [Exchange.of(entry) for entry in entries]
    # and the job states were reached, not only random ids' 404s
    answers = Counter((e.method, e.kind, e.status) for e in exchanges)
    assert answers[("DELETE", "job", 200)], answers  # a queued job cancelled
    assert answers[("DELETE", "job", 204)], answers  # a finished job deleted
    assert answers[("POST", "retry", 202)], answers
    assert answers[("GET", "transcript", 200)], answers
    # and a deleted job is gone for every operation (401: asked without a token;
    # 429: throttled; methods that no operation has are refused: all before any job
    # is looked up)
    deleted: set[str] = set()
    for e in exchanges:
        if e.method == "OPTIONS" or e.status == 405:
            continue
        assert e.job_id not in deleted or e.status in (401, 404, 429), e
        if (e.method, e.kind, e.status) == ("DELETE", "job", 204):
            deleted.add(e.job_id)


@dataclass(frozen=True)
class Exchange:
    """One request schemathesis made and the status it got, from its HAR file."""

    method: str
    path: str
    status: int

    @classmethod
    def of(cls, entry: dict[str, Any]) -> Exchange:
        path = urlsplit(entry["request"]["url"]).path
        return cls(entry["request"]["method"], path, entry["response"]["status"])

    @property
    def _parts(self) -> list[str]:
        return self.path.removeprefix("/api/v1/transcriptions").strip("/").split("/")

    @property
    def job_id(self) -> str:
        return self._parts[0]

    @property
    def kind(self) -> str:
        """ "list", "job", or what follows the job's id: "retry", "transcript"..."""
        parts = self._parts
        if parts == [""]:
            return "list"
        return parts[1].split(".", 1)[0] if len(parts) > 1 else "job"


# The same promises, in-process ------------------------------------------------------


def test_every_operation_documents_its_errors_in_the_error_shape() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    error = {"$ref": "#/components/schemas/ApiError"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            errors = {code: r for code, r in responses.items() if code >= "400"}
            assert {"401", "429"} <= set(errors), (method, path)
            for code, response in errors.items():
                assert response["content"]["application/json"]["schema"] == error
                assert response["description"], (method, path, code)
            for code in {"429", "503"} & set(errors):
                assert "Retry-After" in errors[code]["headers"], (method, path, code)
            ids = [p for p in operation.get("parameters", []) if p["in"] == "path"]
            for parameter in ids:
                if parameter["name"] == "transcription_id":
                    assert parameter["schema"]["format"] == "uuid", path
                    assert "404" in errors, (method, path)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("status=", "queued, running, succeeded, failed, cancelled"),
        ("status=sleeping", "queued, running, succeeded, failed, cancelled"),
        ("status=queued&status=failed", "one status"),
        ("page_size=abc", "page_size"),
        ("page_size=0", "page_size"),
        ("page_size=", "page_size"),
        ("page=last", "page"),
        ("page=+1", "page"),
    ],
)
def test_a_list_query_the_schema_forbids_is_a_400_that_says_why(
    api_client: APIClient, query: str, names: str
) -> None:
    response = api_client.get(f"{URL}?{query}")
    assert response.status_code == 400
    assert names in response.json()["error"]["message"]


@pytest.mark.django_db
def test_page_size_over_the_maximum_gives_the_maximum(
    api_client: APIClient, user: Any
) -> None:
    make_job(user, status=Status.QUEUED)
    response = api_client.get(URL, {"page_size": 10_000})
    assert response.status_code == 200
    assert response.json()["count"] == 1
    assert api_client.get(URL, {"page": 2}).status_code == 404


@pytest.mark.django_db
def test_a_transcript_of_no_job_is_a_404(api_client: APIClient) -> None:
    # 36 characters that the old pattern took for an id, and no UUID: not a 400.
    response = api_client.get(f"{URL}/{'0' * 36}/transcript.txt")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    unknown = api_client.get(f"{URL}/00000000-0000-0000-0000-000000000000/x.doc")
    assert unknown.status_code == 404
