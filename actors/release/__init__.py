"""Releases: how traffic moves from a model's ``champion`` to its ``candidate``.

``config`` says what a release is (canary, A/B, shadow; thresholds), ``controller`` is the
actor that decides it on live traffic, ``client`` is the gateway's side of it (routes,
signatures, outcomes in batches). The gateway, ``jobs.release`` and the controller all
import from here.
"""
