"""REST API for transcription jobs. Thin: parse, call a service or selector, shape."""

from __future__ import annotations

from typing import Any

from django.http import FileResponse
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import status
from rest_framework.authentication import SessionAuthentication
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from asr import selectors
from asr import services
from asr import storage
from asr.api.serializers import TranscriptDocumentSerializer
from asr.api.serializers import TranscriptionCreateSerializer
from asr.api.serializers import TranscriptionEventSerializer
from asr.api.serializers import TranscriptionListQuerySerializer
from asr.api.serializers import TranscriptionSerializer
from asr.api.serializers import transcription_representation
from asr.formats import FORMATS
from asr.formats import render
from asr.models import Transcription
from kikipounamu.api import api_schema
from kikipounamu.api import response_header
from kikipounamu.errors import ApplicationError


class TranscriptionListCreateApi(GenericAPIView):
    parser_classes = [MultiPartParser]
    serializer_class = TranscriptionSerializer
    # The status filter is TranscriptionListQuerySerializer, not a django-filter
    # filterset (which would want a queryset to introspect).
    filter_backends: list[Any] = []

    @api_schema(
        parameters=[TranscriptionListQuerySerializer],
        responses={200: TranscriptionSerializer(many=True)},
        errors=[
            (
                400,
                "`invalid`: `status` is not a job status (the message lists them), "
                "or `page` / `page_size` is not a whole number from 1.",
            ),
            (404, "`not_found`: `page` is past the last page."),
        ],
        summary="List jobs (newest first), optionally by status",
    )
    def get(self, request: Request) -> Response:
        query = TranscriptionListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        qs = selectors.transcription_list(
            user=request.user, status=query.validated_data.get("status")
        )
        page = self.paginate_queryset(qs)
        data = TranscriptionSerializer(
            page, many=True, context={"request": request}
        ).data
        return self.get_paginated_response(data)

    @api_schema(
        request={"multipart/form-data": TranscriptionCreateSerializer},
        responses={202: TranscriptionSerializer},
        parameters=[
            response_header(
                "Location", OpenApiTypes.URI, "The new job's URL.", statuses=[202]
            )
        ],
        errors=[
            (
                400,
                "`file_missing`: no file in the multipart field `file`; "
                "`empty_audio`: the file is empty; `invalid_language`: not a "
                "language code we know; `invalid`: `language` is over 16 characters; "
                "`invalid_url`: `webhook_url` is not http(s), has credentials, or "
                "reaches a loopback, private, link-local or reserved address; "
                "`parse_error`: a malformed multipart body.",
            ),
            403,
            413,
            415,
            422,
            503,
        ],
        summary="Submit audio; answers at once with the queued job",
    )
    def post(self, request: Request) -> Response:
        serializer = TranscriptionCreateSerializer(data=request.data)
        if not serializer.is_valid():
            if "file" in serializer.errors:
                raise ApplicationError(
                    "Send the audio as a multipart form field named 'file'.",
                    code="file_missing",
                )
            serializer.is_valid(raise_exception=True)
        # The staff page posts here with its session: that door is "web".
        by_session = isinstance(request.successful_authenticator, SessionAuthentication)
        job = services.transcription_create(
            owner=request.user,
            audio=serializer.validated_data["file"],
            language=serializer.validated_data.get("language"),
            source=Transcription.Source.WEB if by_session else Transcription.Source.API,
            webhook_url=serializer.validated_data.get("webhook_url", ""),
        )
        data = transcription_representation(job, request)
        return Response(
            data,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": data["links"]["self"]},
        )


class TranscriptionDetailApi(APIView):
    @api_schema(
        responses={200: TranscriptionSerializer},
        errors=[404],
        summary="A job: status and result",
    )
    def get(self, request: Request, transcription_id: Any) -> Response:
        job = selectors.transcription_get(
            user=request.user, transcription_id=transcription_id
        )
        return Response(transcription_representation(job, request))

    @api_schema(
        responses={200: TranscriptionSerializer, 204: None},
        errors=[
            403,
            404,
            (
                409,
                "`not_finished`: the job is running (it cannot be stopped; delete it "
                "once it has finished); `not_cancellable`: it started meanwhile.",
            ),
        ],
        summary="Cancel a queued job (200), or delete a finished one with its audio (204)",
    )
    def delete(self, request: Request, transcription_id: Any) -> Response:
        job = selectors.transcription_get(
            user=request.user, transcription_id=transcription_id
        )
        cancelled = services.transcription_delete_or_cancel(transcription=job)
        if cancelled is not None:
            return Response(transcription_representation(cancelled, request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class TranscriptionTranscriptApi(APIView):
    @api_schema(
        parameters=[
            OpenApiParameter(
                "fmt", OpenApiTypes.STR, OpenApiParameter.PATH, enum=list(FORMATS)
            )
        ],
        responses={
            (200, "text/plain"): OpenApiTypes.STR,
            (200, "application/x-subrip"): OpenApiTypes.STR,
            (200, "text/vtt"): OpenApiTypes.STR,
            (200, "application/json"): TranscriptDocumentSerializer,
        },
        errors=[
            404,
            (409, "`not_ready`: the job has not succeeded (yet)."),
        ],
        operation_id="v1_transcriptions_transcript_retrieve",
        summary="Download the transcript as txt, srt, vtt or json",
    )
    def get(self, request: Request, transcription_id: Any, fmt: str) -> HttpResponse:
        job = selectors.transcription_get(
            user=request.user, transcription_id=transcription_id
        )
        if job.status != Transcription.Status.SUCCEEDED:
            raise ApplicationError(
                f"This job is {job.status}; the transcript exists once it has succeeded.",
                code="not_ready",
                status=409,
            )
        body = render(
            fmt,
            job.text,
            job.segments,
            id=str(job.id),
            language=job.detected_language or job.language or None,
            duration=job.duration,
        )
        response = HttpResponse(body, content_type=FORMATS[fmt])
        stem = (job.original_filename.rsplit(".", 1)[0] or "transcript").replace(
            '"', ""
        )
        response["Content-Disposition"] = f'attachment; filename="{stem}.{fmt}"'
        return response


class TranscriptionRetryApi(APIView):
    @api_schema(
        request=None,
        responses={202: TranscriptionSerializer},
        errors=[
            403,
            404,
            (
                409,
                "`not_retryable`: only failed or cancelled jobs run again; "
                "`audio_missing`: its audio is no longer stored; `conflict`: the job "
                "changed meanwhile.",
            ),
            (
                503,
                "`storage_unavailable`: the audio store could not be reached; wait "
                "`Retry-After` seconds.",
            ),
        ],
        summary="Run a failed or cancelled job again",
    )
    def post(self, request: Request, transcription_id: Any) -> Response:
        job = selectors.transcription_get(
            user=request.user, transcription_id=transcription_id
        )
        job = services.transcription_retry(transcription=job)
        return Response(
            transcription_representation(job, request),
            status=status.HTTP_202_ACCEPTED,
        )


class TranscriptionEventsApi(APIView):
    @api_schema(
        responses={200: TranscriptionEventSerializer(many=True)},
        errors=[404],
        summary="A job's history: every state change, oldest first, with its seq",
    )
    def get(self, request: Request, transcription_id: Any) -> Response:
        events = selectors.transcription_events(
            user=request.user, transcription_id=transcription_id
        )
        return Response(TranscriptionEventSerializer(events, many=True).data)


class TranscriptionAudioApi(APIView):
    @api_schema(
        responses={
            (200, "audio/*"): OpenApiTypes.BINARY,
            # A stored name without a known audio extension (audio_content_type).
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
        },
        errors=[
            (
                404,
                "`not_found`: no such job, or not one of yours; `audio_missing`: its "
                "audio is no longer stored.",
            ),
            (
                503,
                "`storage_unavailable`: the audio store could not be reached; wait "
                "`Retry-After` seconds.",
            ),
        ],
        summary="The uploaded audio",
    )
    def get(self, request: Request, transcription_id: Any) -> FileResponse:
        job = selectors.transcription_get(
            user=request.user, transcription_id=transcription_id
        )
        try:
            audio = storage.audio_file(job.audio.name)
        except storage.AudioMissing:
            raise ApplicationError(
                "The audio of this job is no longer stored.",
                code="audio_missing",
                status=404,
            ) from None
        except storage.StorageUnavailable as exc:
            raise services.storage_error(exc) from exc
        response = FileResponse(
            audio, content_type=audio_content_type(job.audio.name or "")
        )
        response["Content-Disposition"] = "inline"
        return response


_AUDIO_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".m4a": "audio/mp4",
    ".webm": "audio/webm",
}


def audio_content_type(name: str) -> str:
    for ext, content_type in _AUDIO_TYPES.items():
        if name.endswith(ext):
            return content_type
    return "application/octet-stream"
