from django.urls import path

from pool import dialogs, views

app_name = "pool"

urlpatterns = [
    path("", views.index, name="index"),
    # Before "<slug:vendor>/", which would otherwise match "vendors".
    path("vendors/add/", dialogs.add_vendor, name="add_vendor"),
    path("<slug:vendor>/", views.vendor_page, name="vendor"),
    path("<slug:vendor>/reorder/", views.reorder, name="reorder"),
    path("<slug:vendor>/settings/", dialogs.vendor_settings, name="vendor_settings"),
    path("<slug:vendor>/keys/add/", dialogs.add_key, name="add_key"),
    path("<slug:vendor>/keys/<int:key_id>/edit/", dialogs.edit_key, name="edit_key"),
    path("<slug:vendor>/keys/<int:key_id>/enable/", views.enable, name="enable_key"),
    path("<slug:vendor>/keys/<int:key_id>/disable/", views.disable, name="disable_key"),
    path("<slug:vendor>/keys/<int:key_id>/delete/", views.delete, name="delete_key"),
    path("<slug:vendor>/keys/<int:key_id>/move/", views.move, name="move_key"),
    path("<slug:vendor>/keys/<int:key_id>/test/", views.probe_key, name="test_key"),
    path(
        "<slug:vendor>/keys/<int:key_id>/history/",
        views.key_history,
        name="key_history",
    ),
]
