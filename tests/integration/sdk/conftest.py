"""Fixtures of the mini-app SDK tests: the app in process, a released mini-app and its access token, one of
each per test module (a module may override one, as test_sdk_tokens.py gives each test a fresh app)."""

from __future__ import annotations

import pytest

from core.stores import Stores
from tests.integration.sdk.support import MiniApp, app_token, released_miniapp
from tests.integration.test_miniapps_support import ApiClient


@pytest.fixture(scope="module")
def api(client: ApiClient) -> ApiClient:
    """The app in process (the session's one: one app per test process)."""
    return client


@pytest.fixture(scope="module")
async def app(api: ApiClient, stores: Stores) -> MiniApp:
    """A released mini-app of a new organisation (its manifest asks for real-name level L2)."""
    return await released_miniapp(api, stores)


@pytest.fixture(scope="module")
async def token(api: ApiClient, app: MiniApp) -> str:
    """The mini-app's access token (GET /cgi-bin/token)."""
    return await app_token(api, app)
