"""The response cache through the real Gateway over ASGI (``gateway_doubles``' Predictor
records every version it is asked): a hit skips the model; keys and versions never share."""

from __future__ import annotations

from gateway_doubles import ROW, post

from actors.release.routing import Mode, Route
from serve_apps.keys import KeyStore, keys_uri
from serve_apps.schemas import CachePolicy

PREDICT = "/v1/models/digits/predict"


def _cached(gateway, **policy) -> None:
    config = gateway.config.model_copy(update={"response_cache": {"digits": CachePolicy(**policy)}})
    gateway.reconfigure(config.model_dump())


def _asked(gateway) -> list[int]:
    return gateway.answers.predictors[None].asked


def test_off_by_default(client, gateway, key):
    for _ in range(2):
        assert post(client, PREDICT, {"instances": [ROW]}, key).status_code == 200
    assert _asked(gateway) == [3, 3] and len(gateway.cache) == 0


def test_a_hit_skips_the_model_and_answers_the_same(client, gateway, key):
    _cached(gateway)
    first = post(client, PREDICT, {"instances": [ROW]}, key).json()
    again = post(client, PREDICT, {"instances": [[1] * len(ROW)]}, key).json()  # 1 == 1.0
    assert _asked(gateway) == [3]
    assert again["probabilities"] == first["probabilities"] and again["version"] == 3
    assert again["request_id"] != first["request_id"]
    post(client, PREDICT, {"instances": [[2.0] * len(ROW)]}, key)  # another input: a miss
    assert _asked(gateway) == [3, 3]


def test_keys_share_answers_only_when_the_model_says_so(client, gateway, key, settings_env):
    other = KeyStore(keys_uri(settings_env.storage_root)).create("other tenant")[0]
    _cached(gateway)
    post(client, PREDICT, {"instances": [ROW]}, key)
    post(client, PREDICT, {"instances": [ROW]}, other)
    assert _asked(gateway) == [3, 3]  # per key by default
    _cached(gateway, per_key=False)
    post(client, PREDICT, {"instances": [ROW]}, key)
    post(client, PREDICT, {"instances": [ROW]}, other)
    assert _asked(gateway) == [3, 3, 3]


def test_a_new_champion_and_releases_reach_the_model(client, gateway, key):
    _cached(gateway, max_entries=2)
    post(client, PREDICT, {"instances": [ROW]}, key)
    gateway.releases.table["digits"] = Route(champion=4)  # promoted
    assert post(client, PREDICT, {"instances": [ROW]}, key).json()["version"] == 4
    assert _asked(gateway) == [3, 4] and len(gateway.cache) == 1  # v3's entry dropped
    release = Route(4, candidate=3, share=1.0, mode=Mode.CANARY, compare=True, release="r")
    gateway.releases.table["digits"] = release
    for _ in range(2):  # a release judges the models' own answers: none from the cache
        post(client, PREDICT, {"instances": [ROW]}, key)
    assert sorted(_asked(gateway)[2:]) == [3, 3, 4, 4]
    for row in ([5.0] * len(ROW), [6.0] * len(ROW), [7.0] * len(ROW)):
        gateway.releases.table["digits"] = Route(champion=4)
        post(client, PREDICT, {"instances": [row]}, key)
    assert len(gateway.cache) == 2  # max_entries
