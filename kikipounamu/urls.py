from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest
from django.http import HttpResponse
from django.http import JsonResponse
from django.urls import include
from django.urls import path
from django.views import defaults
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView
from drf_spectacular.views import SpectacularRedocView
from drf_spectacular.views import SpectacularSwaggerView

from kikipounamu import api


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("", RedirectView.as_view(url="/upload/", permanent=False)),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("webhooks.api.urls")),
    path("api/v1/", include("asr.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="schema"),
        name="swagger-ui",
    ),
    path(
        "api/redoc/",
        SpectacularRedocView.as_view(url_name="schema", template_name="asr/redoc.html"),
        name="redoc",
    ),
    path("healthz", healthz, name="healthz"),
    # The apps' URL confs, by name: the project imports nothing from the apps.
    path("", include("asr.urls")),
]


def handler404(
    request: HttpRequest, exception: Exception | None = None
) -> HttpResponse:
    if request.path.startswith("/api/"):
        return api.handler404(request, exception)
    return defaults.page_not_found(request, exception or Exception())


def handler500(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return api.handler500(request)
    return defaults.server_error(request)
