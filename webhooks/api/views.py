"""REST API of the webhooks (``/api/v1/webhooks``). Thin: parse, call a service or a
selector, shape."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from kikipounamu.api import api_schema
from kikipounamu.parsers import JSONParser
from webhooks import selectors
from webhooks import services
from webhooks.api.serializers import DeliveryDetailSerializer
from webhooks.api.serializers import DeliveryListQuerySerializer
from webhooks.api.serializers import DeliverySerializer
from webhooks.api.serializers import EndpointInputSerializer
from webhooks.api.serializers import EndpointSerializer
from webhooks.api.serializers import EndpointUpdateSerializer
from webhooks.api.serializers import EndpointWithSecretSerializer
from webhooks.api.serializers import JobSecretSerializer
from webhooks.api.serializers import JobSecretWithSecretSerializer
from webhooks.models import JobWebhookSecret

_INVALID_URL = (
    400,
    "`invalid`: a field is wrong (`detail` names it); `invalid_url`: the URL is "
    "not http(s), has credentials, or reaches a loopback, private, link-local or "
    "reserved address (the message says which).",
)
_BAD_PAGE = (400, "`invalid`: `page` / `page_size` is not a whole number from 1.")
_NOT_FOUND = (404, "`not_found`: no such endpoint or delivery, or not one of yours.")


# Endpoints are JSON documents (a list of events does not fit a form).
_JSON = [JSONParser]


class EndpointListCreateApi(GenericAPIView):
    parser_classes = _JSON
    serializer_class = EndpointSerializer
    filter_backends: list[Any] = []

    @api_schema(
        responses={200: EndpointSerializer(many=True)},
        errors=[_BAD_PAGE, (404, "`not_found`: `page` is past the last page.")],
        summary="Your webhook endpoints",
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.endpoint_list(user=request.user))
        return self.get_paginated_response(EndpointSerializer(page, many=True).data)

    @api_schema(
        request=EndpointInputSerializer,
        responses={201: EndpointWithSecretSerializer},
        errors=[_INVALID_URL, 403],
        summary="Subscribe an endpoint; its secret is in this answer only",
    )
    def post(self, request: Request) -> Response:
        given = EndpointInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        endpoint = services.endpoint_create(owner=request.user, **given.validated_data)
        return Response(
            EndpointWithSecretSerializer(endpoint).data, status=status.HTTP_201_CREATED
        )


class EndpointDetailApi(APIView):
    parser_classes = _JSON

    @api_schema(
        responses={200: EndpointSerializer},
        errors=[_NOT_FOUND],
        summary="A webhook endpoint",
    )
    def get(self, request: Request, endpoint_id: Any) -> Response:
        endpoint = selectors.endpoint_get(user=request.user, endpoint_id=endpoint_id)
        return Response(EndpointSerializer(endpoint).data)

    @api_schema(
        request=EndpointUpdateSerializer,
        responses={200: EndpointSerializer},
        errors=[_INVALID_URL, 403, _NOT_FOUND],
        summary="Change an endpoint, or turn it off or on",
    )
    def patch(self, request: Request, endpoint_id: Any) -> Response:
        endpoint = selectors.endpoint_get(user=request.user, endpoint_id=endpoint_id)
        given = EndpointUpdateSerializer(data=request.data, partial=True)
        given.is_valid(raise_exception=True)
        endpoint = services.endpoint_update(endpoint=endpoint, **given.validated_data)
        return Response(EndpointSerializer(endpoint).data)

    @api_schema(
        responses={204: None},
        errors=[403, _NOT_FOUND],
        summary="Unsubscribe an endpoint (deliveries owed to it are not sent)",
    )
    def delete(self, request: Request, endpoint_id: Any) -> Response:
        selectors.endpoint_get(user=request.user, endpoint_id=endpoint_id).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class EndpointRotateSecretApi(APIView):
    @api_schema(
        request=None,
        responses={200: EndpointWithSecretSerializer},
        errors=[403, _NOT_FOUND],
        summary="A new secret for an endpoint (the old one signs too for a day)",
    )
    def post(self, request: Request, endpoint_id: Any) -> Response:
        endpoint = selectors.endpoint_get(user=request.user, endpoint_id=endpoint_id)
        services.endpoint_secret_rotate(endpoint=endpoint)
        endpoint.refresh_from_db()
        return Response(EndpointWithSecretSerializer(endpoint).data)


class JobSecretApi(APIView):
    @api_schema(
        responses={200: JobSecretSerializer},
        errors=[(404, "`not_found`: you have no job webhook secret yet.")],
        summary="Your per-job webhook secret: when it was made (not the secret)",
    )
    def get(self, request: Request) -> Response:
        holder = JobWebhookSecret.objects.filter(owner_id=request.user.pk).first()
        if holder is None:
            raise Http404
        return Response(JobSecretSerializer(holder).data)

    @api_schema(
        request=None,
        responses={200: JobSecretWithSecretSerializer},
        errors=[403],
        summary="Make or rotate the secret that signs jobs' own webhook_url calls",
    )
    def post(self, request: Request) -> Response:
        holder, _ = services.job_secret_rotate(owner=request.user)
        return Response(JobSecretWithSecretSerializer(holder).data)


class DeliveryListApi(GenericAPIView):
    serializer_class = DeliverySerializer
    filter_backends: list[Any] = []

    @api_schema(
        parameters=[DeliveryListQuerySerializer],
        responses={200: DeliverySerializer(many=True)},
        errors=[
            (
                400,
                "`invalid`: `job`, `endpoint` or `state` is not one (or is empty, or "
                "repeated), or `page` / `page_size` is not a whole number from 1.",
            ),
            (404, "`not_found`: `page` is past the last page."),
        ],
        summary="Webhook deliveries (newest first), by job, endpoint or state",
    )
    def get(self, request: Request) -> Response:
        query = DeliveryListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        qs = selectors.delivery_list(
            user=request.user,
            job_id=query.validated_data.get("job"),
            endpoint_id=query.validated_data.get("endpoint"),
            state=query.validated_data.get("state"),
        )
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)


class DeliveryDetailApi(APIView):
    @api_schema(
        responses={200: DeliveryDetailSerializer},
        errors=[_NOT_FOUND],
        summary="A delivery: its payload and every attempt (status code, time, error)",
    )
    def get(self, request: Request, delivery_id: Any) -> Response:
        delivery = selectors.delivery_get(user=request.user, delivery_id=delivery_id)
        return Response(DeliveryDetailSerializer(delivery).data)


class DeliveryResendApi(APIView):
    @api_schema(
        request=None,
        responses={202: DeliverySerializer},
        errors=[
            403,
            _NOT_FOUND,
            (
                409,
                "`not_failed`: only a failed delivery is re-sent; "
                "`endpoint_disabled`: turn its endpoint on first.",
            ),
        ],
        summary="Send a failed delivery again (same webhook-id)",
    )
    def post(self, request: Request, delivery_id: Any) -> Response:
        delivery = selectors.delivery_get(user=request.user, delivery_id=delivery_id)
        delivery = services.webhook_delivery_resend(delivery=delivery)
        return Response(
            DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED
        )
