from __future__ import annotations

import json
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from kikipounamu.api import StrictQuerySerializer
from webhooks.models import EventType
from webhooks.models import JobWebhookSecret
from webhooks.models import WebhookAttempt
from webhooks.models import WebhookDelivery
from webhooks.models import WebhookEndpoint

EVENTS = [choice.value for choice in EventType]


class EndpointInputSerializer(serializers.Serializer):
    url = serializers.CharField(
        max_length=2048,
        help_text="http or https, reaching a public address (checked after DNS, "
        "and again at every delivery).",
    )
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENTS),
        required=False,
        max_length=len(EVENTS),
        help_text="The events wanted; none or empty: all of them.",
    )
    description = serializers.CharField(
        max_length=255, required=False, allow_blank=True
    )
    include_text = serializers.BooleanField(
        required=False,
        help_text="The transcript's text and segments in the payload (default: "
        "links only).",
    )


class EndpointUpdateSerializer(EndpointInputSerializer):
    url = serializers.CharField(max_length=2048, required=False)
    is_active = serializers.BooleanField(
        required=False, help_text="Turn the endpoint off, or on again after a 410."
    )


class EndpointSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "events",
            "description",
            "include_text",
            "is_active",
            "disabled_reason",
            "disabled_at",
            "secret_created_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    events = serializers.ListField(child=serializers.ChoiceField(choices=EVENTS))


class EndpointWithSecretSerializer(EndpointSerializer):
    """An endpoint as created or rotated: the one time its secret is shown."""

    class Meta(EndpointSerializer.Meta):
        fields = [*EndpointSerializer.Meta.fields, "secret"]
        read_only_fields = fields

    secret = serializers.CharField(
        help_text="whsec_...: verify each webhook's signature with it (Standard "
        "Webhooks). Shown only now."
    )


class JobSecretSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobWebhookSecret
        fields = ["secret_created_at", "previous_secret_until"]
        read_only_fields = fields


class JobSecretWithSecretSerializer(JobSecretSerializer):
    class Meta(JobSecretSerializer.Meta):
        fields = [*JobSecretSerializer.Meta.fields, "secret"]
        read_only_fields = fields

    secret = serializers.CharField(
        help_text="whsec_...: signs the webhooks of jobs submitted with "
        "webhook_url. Shown only now."
    )


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = [
            "started_at",
            "finished_at",
            "status_code",
            "error",
            "duration_ms",
            "response_excerpt",
        ]
        read_only_fields = fields


class DeliverySerializer(serializers.ModelSerializer):
    webhook_id = serializers.CharField(
        help_text="The webhook-id header, the same on every attempt."
    )

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "webhook_id",
            "event_type",
            "job_id",
            "endpoint",
            "url",
            "state",
            "attempts",
            "next_attempt_at",
            "give_up_at",
            "last_status_code",
            "last_error",
            "created_at",
            "delivered_at",
        ]
        read_only_fields = fields


class DeliveryDetailSerializer(DeliverySerializer):
    attempt_log = AttemptSerializer(many=True)
    payload = serializers.SerializerMethodField()

    class Meta(DeliverySerializer.Meta):
        fields = [*DeliverySerializer.Meta.fields, "payload", "attempt_log"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_payload(self, obj: WebhookDelivery) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(obj.body)
        return value


class DeliveryListQuerySerializer(StrictQuerySerializer):
    job = serializers.UUIDField(required=False, help_text="Only this job's.")
    endpoint = serializers.UUIDField(required=False, help_text="Only this endpoint's.")
    state = serializers.ChoiceField(
        choices=WebhookDelivery.State.choices, required=False
    )
