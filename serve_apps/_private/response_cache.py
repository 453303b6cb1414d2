"""Answers kept in a gateway replica's memory, for the models the gateway's config lists
(``response_cache``): the same validated input to the same version answers from memory,
without a Predictor call.

An entry's key is (version, API key id unless the model shares answers between keys, a
digest of the input array): the input as the model sees it (float32, its shape), so
``1`` and ``1.0`` hit the same entry. Per model, entries are an LRU of ``max_entries``;
when the version serving a model changes, its entries of other versions are dropped.
Only plain answers are cached: a request a release sends to a candidate, compares or
shadows reaches the models, since the release is judged on those answers.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from serve_apps._private.prediction import Prediction
from serve_apps._private.routing import Plan
from serve_apps.schemas import CachePolicy

Key = tuple[int, str | None, bytes]


class ResponseCache:
    def __init__(self, policies: dict[str, CachePolicy]) -> None:
        self.policies = policies
        self._entries: dict[str, OrderedDict[Key, Prediction]] = {}
        self._versions: dict[str, int] = {}  # the version each model's entries are of

    def reconfigure(self, policies: dict[str, CachePolicy]) -> None:
        self.policies = policies
        for name in list(self._entries):
            if name not in policies:
                del self._entries[name], self._versions[name]  # its memory goes now
            else:
                self._trim(name)

    def key(self, name: str, plan: Plan, caller: str, inputs: np.ndarray) -> Key | None:
        """The entry ``inputs`` would have, or None when this answer is not cached (the
        model is not listed, or a release needs the models' answers)."""
        policy = self.policies.get(name)
        if policy is None or plan.fallback or plan.compare_with or plan.shadow:
            return None
        digest = hashlib.blake2b(digest_size=16)
        digest.update(str(inputs.shape).encode())
        digest.update(np.ascontiguousarray(inputs, dtype=np.float32).tobytes())
        return plan.answers, caller if policy.per_key else None, digest.digest()

    def get(self, name: str, key: Key) -> Prediction | None:
        found = self._current(name, key[0]).get(key)
        if found is not None:
            self._entries[name].move_to_end(key)
        return found

    def put(self, name: str, key: Key, answer: Prediction) -> None:
        if name in self.policies:
            self._current(name, key[0])[key] = answer
            self._trim(name)

    def _current(self, name: str, version: int) -> OrderedDict[Key, Prediction]:
        """``name``'s entries, emptied first when they are of another version than the
        one answering now (a promotion, a rollback: what the old one said is stale)."""
        if self._versions.get(name) != version:
            self._versions[name] = version
            self._entries[name] = OrderedDict()
        return self._entries[name]

    def __len__(self) -> int:
        return sum(len(e) for e in self._entries.values())

    def _trim(self, name: str) -> None:
        entries, cap = self._entries.get(name), self.policies[name].max_entries
        while entries and len(entries) > cap:
            entries.popitem(last=False)
