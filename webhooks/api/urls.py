from django.urls import path

from webhooks.api import views

app_name = "webhooks-api"

urlpatterns = [
    path("webhooks", views.EndpointListCreateApi.as_view(), name="endpoint-list"),
    path("webhooks/deliveries", views.DeliveryListApi.as_view(), name="delivery-list"),
    path(
        "webhooks/deliveries/<uuid:delivery_id>",
        views.DeliveryDetailApi.as_view(),
        name="delivery-detail",
    ),
    path(
        "webhooks/deliveries/<uuid:delivery_id>/resend",
        views.DeliveryResendApi.as_view(),
        name="delivery-resend",
    ),
    path("webhooks/job-secret", views.JobSecretApi.as_view(), name="job-secret"),
    path(
        "webhooks/<uuid:endpoint_id>",
        views.EndpointDetailApi.as_view(),
        name="endpoint-detail",
    ),
    path(
        "webhooks/<uuid:endpoint_id>/rotate-secret",
        views.EndpointRotateSecretApi.as_view(),
        name="endpoint-rotate-secret",
    ),
]
