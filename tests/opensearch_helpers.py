"""The OpenSearch stand-in started in-process for its contract tests, and a basic-auth caller."""

from __future__ import annotations

import requests

from devstack import faults
from devstack.opensearch.server import Auth, start

AK, SK = "AKIDEVSTACKTEST", "devstack-secret-key"
AUTH = Auth("admin", "pw", AK, SK)


def running_service(tmp_path_factory, name: str):
    """Generator for a module fixture: a fresh service on its own state dir, stopped after."""
    state = tmp_path_factory.mktemp(name)
    service = start(state, auth=AUTH)
    service.state_dir = state
    yield service
    faults.clear(state)
    service.stop()


def caller(url: str):
    """call(method, path, body=None, **kw) -> requests.Response, as the admin user."""
    session = requests.Session()
    session.auth = ("admin", "pw")

    def call(method, path, body=None, **kw):
        return session.request(method, url + path, json=body, **kw)

    return call
