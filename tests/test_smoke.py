from pool.models import ApiKey


def test_first_key_is_default(vendor, make_key):
    first = make_key(vendor)
    second = make_key(vendor)

    assert first.is_default
    assert not second.is_default
    assert ApiKey.objects.get(pk=second.pk).name == "key2"
