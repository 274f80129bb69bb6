"""An admin change in one gateway process reaches every other one at once through Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import REDIS_URL, Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider
) -> Iterator[tuple[Gateway, Gateway]]:
    models = [model_entry("fake", "fake", fake_provider.base_url)]
    first = start_gateway(tmp_path_factory.mktemp("inv-a"), models=models, env={"REDIS_URL": REDIS_URL})
    # The second process shares the first one's store and Redis: two instances of one gateway.
    second = start_gateway(
        tmp_path_factory.mktemp("inv-b"),
        models=models,
        env={"REDIS_URL": REDIS_URL, "DATA_DIR": str(first.data_dir)},
    )
    yield first, second
    stop_gateway(second)
    stop_gateway(first)


def _models(gw: Gateway, key: str) -> int:
    return httpx.get(gw.v1 + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def _until(predicate: object, timeout: float = 3.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_key_revoked_on_one_instance_stops_working_on_the_other(pair: tuple[Gateway, Gateway]) -> None:
    first, second = pair
    user_id, key = first.new_user()
    other = first.admin("POST", f"/admin/users/{user_id}/keys", {"name": "other"}).json()
    assert _models(second, other["key"]) == 200  # now cached by the second instance for 30 s
    revoked = first.admin("DELETE", f"/admin/users/{user_id}/keys/{other['key_id']}")
    assert revoked.status_code == 200
    # Far sooner than the 30 s the cache would otherwise keep it.
    assert _until(lambda: _models(second, other["key"]) == 401)
    # The first key was not revoked and keeps working everywhere.
    assert _models(second, key) == 200


def test_a_key_that_failed_once_works_as_soon_as_it_is_created(pair: tuple[Gateway, Gateway]) -> None:
    first, second = pair
    user_id = f"user-{uuid.uuid4().hex[:8]}"
    assert first.admin("POST", "/admin/users", {"user_id": user_id, "balance": "1"}).status_code == 201
    created = first.admin("POST", f"/admin/users/{user_id}/keys", {}).json()
    assert _until(lambda: _models(second, created["key"]) == 200)
