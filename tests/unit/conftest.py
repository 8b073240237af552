"""The unit tier: pure tests of the library. No network and none of the service fixtures.

Every test here runs with IPv4/IPv6 sockets unable to connect, bind or send (AF_UNIX is
allowed: asyncio, multiprocessing and SQLite use it), so a unit test that reaches for a
server fails loudly instead of quietly depending on one. Requesting a fixture that starts
S3, the devstack or Airflow's metadata DB is an error: such a test belongs in
tests/integration/, tests/dags/ or tests/devstack/.
"""

from __future__ import annotations

import os
import socket

import pytest

_INET = (socket.AF_INET, socket.AF_INET6)


class NetworkInUnitTest(RuntimeError):
    """Not an OSError on purpose: code under test that retries or swallows connection errors
    must not turn the guard into a slow or silent pass."""


def _guard(name: str):
    real = getattr(socket.socket, name)

    def guarded(self, *args, **kwargs):
        if self.family in _INET:
            raise NetworkInUnitTest(
                f"unit tests may not use the network: socket.{name}{args!r} "
                "(move the test to tests/integration/ or fake the client)")
        return real(self, *args, **kwargs)

    guarded.__name__ = name
    return guarded


# Module-scoped, so that a test module's own module-scoped fixtures (a parsed DagBag, say)
# are made under the same guards and environment as its tests: pytest sets up autouse
# fixtures before the other fixtures of their scope.
@pytest.fixture(autouse=True, scope="module")
def no_network():
    with pytest.MonkeyPatch.context() as mp:
        for name in ("connect", "connect_ex", "bind", "sendto"):
            mp.setattr(socket.socket, name, _guard(name))
        yield


@pytest.fixture(autouse=True, scope="module")
def no_service_environment():
    """The environment a unit test sees is the same alone as after the other tiers: the
    devstack's connections and BATCHVEC_* presets that `airflow_env` exports stay out."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("BATCHVEC_", "AIRFLOW_CONN_")):
                mp.delenv(name)
        yield


# The fixtures tests/conftest.py defines to start services, refused here.
SERVICE_FIXTURES = ("s3_stack", "devstack", "fresh_bucket", "airflow_env", "dag", "no_faults")


def _refuse(name: str):
    @pytest.fixture(name=name)
    def refused():
        pytest.fail(f"unit tests may not use the {name!r} fixture: it starts services; "
                    "move the test to tests/integration/, tests/dags/ or tests/devstack/",
                    pytrace=False)

    return refused


for _name in SERVICE_FIXTURES:
    globals()[f"_refuse_{_name}"] = _refuse(_name)
