"""The asr app's pages: the staff upload page and the operators' endpoints (the REST
API has its own, ``asr.api.urls``)."""

from django.urls import path

from asr import views
from asr.ops import views as ops_views

urlpatterns = [
    path("upload/", views.upload_page, name="upload"),
    path("readyz", ops_views.readyz, name="readyz"),
    path("metrics", ops_views.metrics_view, name="metrics"),
    path("ops/", ops_views.dashboard, name="ops-dashboard"),
]
