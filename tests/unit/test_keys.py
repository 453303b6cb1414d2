import hmac

import pytest

from actors.rate_limiter import Quota
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


def test_quota_and_scopes_are_stored_with_the_record_but_not_the_key(store, tmp_path):
    key, record = store.create("metered", ("predict", "admin"), rate=50, burst=100)
    again = KeyStore(store.uri).records()[record.id]
    assert again == record and again.quota == Quota(50, 100)
    assert store.authenticate(key, scope="admin").quota == Quota(50, 100)
    assert key.split("_", 2)[2] not in (tmp_path / "gateway" / "api_keys.json").read_text()
    assert store.create("open")[1].quota is None
    assert store.create("default-burst", rate=2.5)[1].quota == Quota(2.5, 3)


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [(0, None, "rate=0"), (5, 0, "burst=0"), (None, 10, "needs a rate")],
)
def test_bad_quotas_are_refused_naming_the_field(store, rate, burst, message):
    with pytest.raises(ValueError, match=message):
        store.create("x", rate=rate, burst=burst)


def test_records_written_before_scopes_and_quotas_still_read(tmp_path):
    import json

    uri = keys_uri(str(tmp_path))
    (tmp_path / "gateway").mkdir()
    old = {"id": "0123456789ab", "name": "old", "salt": "s", "hash": "h", "created": "2024"}
    (tmp_path / "gateway" / "api_keys.json").write_text(json.dumps({"keys": [old]}))
    record = KeyStore(uri).records()[old["id"]]
    assert record.scopes == ("predict",) and record.quota is None and record.revoked is None


def test_cli_creates_and_lists_keys_with_scope_and_quota(settings_env, capsys):
    from cluster.cli import aimass as cli

    cli.main(["keys", "create", "metered", "--scope", "predict", "--rate", "50", "--burst", "100"])
    key = capsys.readouterr().out.strip().splitlines()[-1]
    record = KeyStore(keys_uri(settings_env.storage_root)).authenticate(key)
    assert record.quota == Quota(50, 100) and record.scopes == ("predict",)
    cli.main(["keys", "list"])
    listed = capsys.readouterr().out
    assert "metered" in listed and "50/s, burst 100" in listed and key not in listed


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_the_key_store_is_readable_by_its_owner_only_after_every_write(store, tmp_path):
    """S3: 0600 like the cluster token, on create and when a revoke rewrites the file; a
    file an older version left 0644 is tightened by the next write."""
    path = tmp_path / "gateway" / "api_keys.json"
    _, record = store.create("alice")
    assert _mode(path) == 0o600
    path.chmod(0o644)
    store.revoke(record.id)
    assert _mode(path) == 0o600 and store.records()[record.id].revoked
    store.create("bob")
    assert _mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["api_keys.json"]  # no temp file left
