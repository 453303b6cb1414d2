import hmac

import pytest

from serve_apps import keys as keys_module
from serve_apps.keys import AuthError, KeyStore, keys_uri, presented_key


@pytest.fixture
def store(tmp_path):
    return KeyStore(keys_uri(str(tmp_path)), ttl_s=0)


def test_created_key_authenticates_and_is_never_stored_in_plain(store, tmp_path):
    key, record = store.create("alice", ("predict",))
    assert store.authenticate(key).id == record.id
    stored = (tmp_path / "gateway" / "api_keys.json").read_text()
    assert key.split("_", 2)[2] not in stored
    assert record.hash in stored and record.salt in stored


@pytest.mark.parametrize(
    ("presented", "status", "message"),
    [
        (None, 401, "Missing"),
        ("", 401, "Missing"),
        ("not-a-key", 401, "Malformed"),
        ("amk_000000000000_" + "x" * 43, 401, "Invalid"),
    ],
)
def test_missing_malformed_and_unknown_keys_get_401(store, presented, status, message):
    store.create("alice")
    with pytest.raises(AuthError, match=message) as err:
        store.authenticate(presented)
    assert err.value.status == status


def test_wrong_secret_is_401_and_compared_in_constant_time(store, monkeypatch):
    key, _ = store.create("alice")
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(
        keys_module.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b)
    )
    with pytest.raises(AuthError) as err:
        store.authenticate(key[:-4] + "abcd")
    assert err.value.status == 401 and calls, "secrets must be compared with hmac.compare_digest"


def test_revoked_key_gets_403_and_missing_scope_gets_403(store):
    key, record = store.create("alice")
    store.revoke(record.id)
    with pytest.raises(AuthError) as err:
        store.authenticate(key)
    assert err.value.status == 403
    admin_only, _ = store.create("ops", ("admin",))
    with pytest.raises(AuthError) as err:
        store.authenticate(admin_only, scope="predict")
    assert err.value.status == 403


def test_revoking_unknown_key_and_unknown_scope_are_errors(store):
    with pytest.raises(KeyError, match="No API key"):
        store.revoke("nope")
    with pytest.raises(ValueError, match="Unknown scopes"):
        store.create("x", ("root",))


def test_auth_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(AuthError(403, "revoked")))
    assert (err.status, str(err)) == (403, "revoked")


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "expected"),
    [
        ("Bearer abc", None, "abc"),
        ("bearer abc ", None, "abc"),
        (None, "xyz", "xyz"),
        ("Bearer abc", "xyz", "xyz"),
        ("Basic abc", None, "Basic abc"),
        (None, None, None),
    ],
)
def test_key_is_read_from_either_header(authorization, x_api_key, expected):
    assert presented_key(authorization, x_api_key) == expected


def test_a_key_created_elsewhere_is_accepted_at_once_despite_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(keys_module, "_MISS_REREAD_S", 0.0)  # no rate limit within the test
    gateway_view = KeyStore(keys_uri(str(tmp_path)), ttl_s=3600)
    gateway_view.authenticate(KeyStore(keys_uri(str(tmp_path))).create("first")[0])
    cli_view = KeyStore(keys_uri(str(tmp_path)))
    key, _ = cli_view.create("second")  # the gateway's cached copy predates this key
    assert gateway_view.authenticate(key).name == "second"
