"""Admin for webhooks: endpoints (secrets shown once, on creation), deliveries with
their attempts, and re-sending failed ones by hand."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib import messages
from django.db.models import QuerySet
from django.http import HttpRequest

from kikipounamu.errors import ApplicationError
from webhooks import services
from webhooks.models import JobWebhookSecret
from webhooks.models import WebhookAttempt
from webhooks.models import WebhookDelivery
from webhooks.models import WebhookEndpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = (
        "url",
        "owner",
        "events",
        "is_active",
        "disabled_reason",
        "created_at",
    )
    list_filter = ("is_active",)
    search_fields = ("url", "owner__username", "description")
    raw_id_fields = ("owner",)
    fields = (
        "owner",
        "url",
        "events",
        "description",
        "include_text",
        "is_active",
        "disabled_reason",
        "disabled_at",
        "secret_created_at",
        "previous_secret_until",
    )
    readonly_fields = ("disabled_at", "secret_created_at", "previous_secret_until")

    def save_model(
        self, request: HttpRequest, obj: WebhookEndpoint, form: Any, change: bool
    ) -> None:
        # The same checks as the API's: a URL we would send to, known events.
        try:
            if change:
                fields = {name: getattr(obj, name) for name in form.changed_data}
                fields.pop("owner", None)
                fresh = WebhookEndpoint.objects.get(pk=obj.pk)
                services.endpoint_update(endpoint=fresh, **fields)
                return
            created = services.endpoint_create(
                owner=obj.owner,
                url=obj.url,
                events=obj.events,
                description=obj.description,
                include_text=obj.include_text,
            )
        except ApplicationError as exc:
            self.message_user(request, f"Not saved: {exc.message}", messages.ERROR)
            return
        obj.pk = created.pk
        self.message_user(
            request,
            f"Secret of this endpoint (shown only now): {created.secret}",
            messages.WARNING,
        )


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    readonly_fields = (
        "started_at",
        "finished_at",
        "status_code",
        "error",
        "duration_ms",
        "response_excerpt",
        "worker",
    )
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "event_type",
        "job_id",
        "url",
        "state",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "created_at",
    )
    list_filter = ("state", "event_type")
    search_fields = ("=job_id", "url")
    raw_id_fields = ("endpoint", "owner")
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    inlines = [WebhookAttemptInline]
    actions = ["resend"]

    @admin.action(description="Re-send the selected failed deliveries")
    def resend(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        sent = 0
        for delivery in queryset:
            try:
                services.webhook_delivery_resend(delivery=delivery)
                sent += 1
            except ApplicationError as exc:
                self.message_user(
                    request, f"{delivery.pk}: {exc.message}", messages.ERROR
                )
        self.message_user(request, f"{sent} delivery(ies) re-sent.")


@admin.register(JobWebhookSecret)
class JobWebhookSecretAdmin(admin.ModelAdmin):
    list_display = ("owner", "secret_created_at", "previous_secret_until")
    fields = ("owner", "secret_created_at", "previous_secret_until")
    readonly_fields = fields
