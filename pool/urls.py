from django.urls import path

from pool import views

app_name = "pool"

urlpatterns = [
    path("", views.index, name="index"),
]
