"""The admin API as an operator uses it: accounts, keys shown once, revocation, credits, limits."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.support import assert_openai_error, bearer


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("admin"),
        models=[model_entry("fake", "admin+chunks-2", fake_provider.base_url)],
    )
    yield gateway
    stop_gateway(gateway)


def _decimal_json(r: httpx.Response) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(r.text, parse_float=Decimal, parse_int=Decimal)
    return data


def _uid() -> str:
    return f"adm-{uuid.uuid4().hex[:10]}"


def _chat(gw: Gateway, key: str) -> httpx.Response:
    return httpx.post(
        gw.v1 + "/chat/completions",
        json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
        headers=bearer(key),
        timeout=30,
    )


# --- admin authentication ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-admin-key-0123456789"},
        {"Authorization": f"Basic {ADMIN_KEY}"},
        {"Authorization": ADMIN_KEY},
        {"Authorization": f"Bearer {ADMIN_KEY}x"},
        {"Authorization": f"Bearer {ADMIN_KEY[:-1]}"},
    ],
    ids=["missing", "wrong", "basic", "no-scheme", "longer", "prefix"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/admin/users"),
        ("GET", "/admin/users/demo"),
        ("POST", "/admin/users/demo/keys"),
        ("DELETE", "/admin/users/demo/keys/key_x"),
        ("POST", "/admin/users/demo/credits"),
        ("PUT", "/admin/users/demo/limits"),
    ],
)
def test_admin_api_refuses_wrong_credentials(
    gw: Gateway, headers: dict[str, str], method: str, path: str
) -> None:
    r = httpx.request(method, gw.url + path, json={"amount": 5}, headers=headers, timeout=30)
    assert_openai_error(r, 401, "authentication_error", "invalid_api_key")


def test_a_user_api_key_is_not_an_admin_key(gw: Gateway) -> None:
    _, key = gw.new_user(balance=1)
    r = httpx.post(gw.url + "/admin/users", json={}, headers=bearer(key), timeout=30)
    assert r.status_code in (401, 403)
    assert_openai_error(r, r.status_code, r.json()["error"]["type"], any_code=True)


def test_admin_api_is_disabled_without_admin_key(tmp_path: Path, fake_provider: FakeProvider) -> None:
    gateway = start_gateway(
        tmp_path, models=[model_entry("fake", "admin", fake_provider.base_url)], env={"ADMIN_API_KEY": ""}
    )
    try:
        for headers in ({}, bearer(ADMIN_KEY)):
            r = httpx.post(gateway.url + "/admin/users", json={"user_id": "x"}, headers=headers, timeout=30)
            error = assert_openai_error(r, 403, "permission_error", any_code=True)
            assert "ADMIN_API_KEY" in error["message"]
    finally:
        stop_gateway(gateway)


# --- accounts ---------------------------------------------------------------------------------


def test_create_user_with_id_and_balance(gw: Gateway) -> None:
    user_id = _uid()
    r = gw.admin("POST", "/admin/users", {"user_id": user_id, "balance": "12.5"})
    assert r.status_code == 201, r.text
    assert _decimal_json(r) == {"user_id": user_id, "balance": Decimal("12.5")}
    r = gw.admin("GET", f"/admin/users/{user_id}")
    assert r.status_code == 200
    assert _decimal_json(r)["balance"] == Decimal("12.5")
    assert _decimal_json(r)["reserved"] == 0


def test_create_user_without_a_body_gets_a_generated_id_and_zero_balance(gw: Gateway) -> None:
    first = gw.admin("POST", "/admin/users", {})
    second = gw.admin("POST", "/admin/users", {})
    assert first.status_code == second.status_code == 201, first.text
    a, b = first.json(), second.json()
    assert a["user_id"] and b["user_id"] and a["user_id"] != b["user_id"]
    assert a["balance"] == 0
    assert gw.admin("GET", f"/admin/users/{a['user_id']}").status_code == 200


def test_opening_balance_is_in_the_ledger(gw: Gateway) -> None:
    user_id = _uid()
    assert gw.admin("POST", "/admin/users", {"user_id": user_id, "balance": 3}).status_code == 201
    key = gw.admin("POST", f"/admin/users/{user_id}/keys", {}).json()["key"]
    rows = httpx.get(gw.url + "/billing/transactions", headers=bearer(key), timeout=30)
    data = _decimal_json(rows)["transactions"]
    assert [t["amount"] for t in data] == [Decimal(3)]


def test_duplicate_user_is_409_and_keeps_the_first_balance(gw: Gateway) -> None:
    user_id = _uid()
    assert gw.admin("POST", "/admin/users", {"user_id": user_id, "balance": 1}).status_code == 201
    r = gw.admin("POST", "/admin/users", {"user_id": user_id, "balance": 100})
    error = assert_openai_error(r, 409, "invalid_request_error", "user_exists")
    assert user_id in error["message"]
    assert _decimal_json(gw.admin("GET", f"/admin/users/{user_id}"))["balance"] == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"balance": -1}, "balance"),
        ({"balance": "lots"}, "balance"),
        ({"balance": "0.000000001"}, "balance"),
        ({"balance": True}, "balance"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": 12}, "user_id"),
        ({"user_id": "x" * 500}, "user_id"),
        ({"user_id": "team/alice"}, "user_id"),  # could never be addressed as /admin/users/{id}
        ({"user_id": "bob\n"}, "user_id"),
        ({"user_id": " carol"}, "user_id"),
    ],
)
def test_create_user_rejects_bad_input(gw: Gateway, body: dict[str, Any], param: str) -> None:
    r = gw.admin("POST", "/admin/users", body)
    assert assert_openai_error(r, 400, "invalid_request_error", any_code=True)["param"] == param


def test_user_ids_from_identity_providers_are_addressable(gw: Gateway) -> None:
    for user_id in (
        f"auth0|{uuid.uuid4().hex}",
        f"{uuid.uuid4().hex}@example.com",
        f"a b {uuid.uuid4().hex}",
    ):
        assert gw.admin("POST", "/admin/users", {"user_id": user_id, "balance": 1}).status_code == 201
        r = httpx.get(
            gw.url + "/admin/users/" + httpx.URL("/" + user_id).raw_path.decode()[1:],
            headers=bearer(ADMIN_KEY),
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["user_id"] == user_id, r.text


def test_unknown_user_is_404(gw: Gateway) -> None:
    for method, path, body in [
        ("GET", "/admin/users/nobody-here", None),
        ("POST", "/admin/users/nobody-here/keys", {}),
        ("POST", "/admin/users/nobody-here/credits", {"amount": 1}),
        ("PUT", "/admin/users/nobody-here/limits", {"rpm_limit": 1}),
        ("DELETE", "/admin/users/nobody-here/keys/key_0000", None),
    ]:
        r = gw.admin(method, path, body)
        assert_openai_error(r, 404, "invalid_request_error", any_code=True)


# --- keys -------------------------------------------------------------------------------------


def test_a_new_key_works_and_is_shown_only_once(gw: Gateway) -> None:
    user_id = _uid()
    assert gw.admin("POST", "/admin/users", {"user_id": user_id, "balance": 1}).status_code == 201
    r = gw.admin("POST", f"/admin/users/{user_id}/keys", {"name": "laptop"})
    assert r.status_code == 201, r.text
    issued = r.json()
    key, key_id = issued["key"], issued["key_id"]
    assert key.startswith("sk-") and len(key) >= 40 and key_id and key_id not in key
    assert _chat(gw, key).status_code == 200
    r = httpx.get(gw.url + "/billing/balance", headers=bearer(key), timeout=30)
    assert r.json()["user_id"] == user_id
    # Nothing the admin API answers afterwards contains the key again.
    for method, path in [
        ("GET", f"/admin/users/{user_id}"),
        ("GET", f"/admin/users/{user_id}/keys"),
        ("GET", f"/admin/users/{user_id}/keys/{key_id}"),
    ]:
        assert key not in gw.admin(method, path).text
    # The store keeps a hash only: the key is nowhere on disk.
    for path in gw.data_dir.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    # A second key is a different key for the same account.
    other = gw.admin("POST", f"/admin/users/{user_id}/keys", {}).json()
    assert other["key"] != key and other["key_id"] != key_id
    r = httpx.get(gw.url + "/billing/balance", headers=bearer(other["key"]), timeout=30)
    assert r.json()["user_id"] == user_id


def test_revoked_key_stops_working_at_once(gw: Gateway) -> None:
    user_id = _uid()
    assert gw.admin("POST", "/admin/users", {"user_id": user_id, "balance": 1}).status_code == 201
    first = gw.admin("POST", f"/admin/users/{user_id}/keys", {}).json()
    second = gw.admin("POST", f"/admin/users/{user_id}/keys", {}).json()
    assert _chat(gw, first["key"]).status_code == 200  # now cached as valid
    r = gw.admin("DELETE", f"/admin/users/{user_id}/keys/{first['key_id']}")
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert_openai_error(_chat(gw, first["key"]), 401, "authentication_error", "invalid_api_key")
    r = httpx.get(gw.url + "/billing/balance", headers=bearer(first["key"]), timeout=30)
    assert r.status_code == 401
    # Only that key: the account's other key still works.
    assert _chat(gw, second["key"]).status_code == 200
    # Revoking twice, or through another user, is a 404.
    r = gw.admin("DELETE", f"/admin/users/{user_id}/keys/{first['key_id']}")
    assert_openai_error(r, 404, "invalid_request_error", any_code=True)
    other_user = _uid()
    assert gw.admin("POST", "/admin/users", {"user_id": other_user}).status_code == 201
    r = gw.admin("DELETE", f"/admin/users/{other_user}/keys/{second['key_id']}")
    assert_openai_error(r, 404, "invalid_request_error", any_code=True)
    assert _chat(gw, second["key"]).status_code == 200


# --- credits ----------------------------------------------------------------------------------


def _new_account(gw: Gateway, balance: str = "10") -> tuple[str, str]:
    user_id = _uid()
    assert gw.admin("POST", "/admin/users", {"user_id": user_id, "balance": balance}).status_code == 201
    return user_id, gw.admin("POST", f"/admin/users/{user_id}/keys", {}).json()["key"]


def test_credit_raises_the_balance_exactly(gw: Gateway) -> None:
    user_id, key = _new_account(gw, "0")
    for _ in range(3):
        r = gw.admin("POST", f"/admin/users/{user_id}/credits", {"amount": 0.1, "description": "top-up"})
        assert r.status_code == 200, r.text
    assert _decimal_json(r)["balance"] == Decimal("0.3")
    assert gw.balance(key) == Decimal("0.3")
    rows = _decimal_json(httpx.get(gw.url + "/billing/transactions", headers=bearer(key), timeout=30))
    assert [t["description"] for t in rows["transactions"]][:3] == ["top-up"] * 3


def test_credit_with_idempotency_key_is_applied_once(gw: Gateway) -> None:
    user_id, key = _new_account(gw, "10")
    body = {"amount": "5", "idempotency_key": "stripe-evt-123"}
    first = gw.admin("POST", f"/admin/users/{user_id}/credits", body)
    second = gw.admin("POST", f"/admin/users/{user_id}/credits", body)
    assert first.status_code == second.status_code == 200
    assert first.json()["applied"] is True and second.json()["applied"] is False
    assert _decimal_json(second)["balance"] == 15
    assert gw.balance(key) == 15
    # The same key for another user is that user's own payment.
    other_id, other_key = _new_account(gw, "0")
    assert gw.admin("POST", f"/admin/users/{other_id}/credits", body).json()["applied"] is True
    assert gw.balance(other_key) == 5


def test_concurrent_retries_of_one_payment_credit_once(gw: Gateway) -> None:
    user_id, key = _new_account(gw, "0")
    body = {"amount": "2.5", "idempotency_key": "webhook-retry-storm"}
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(
            pool.map(lambda _: gw.admin("POST", f"/admin/users/{user_id}/credits", body), range(10))
        )
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert sum(r.json()["applied"] for r in results) == 1
    assert gw.balance(key) == Decimal("2.5")


def test_negative_adjustment(gw: Gateway) -> None:
    user_id, key = _new_account(gw, "10")
    r = gw.admin("POST", f"/admin/users/{user_id}/credits", {"amount": "-4", "description": "refund"})
    assert r.status_code == 200 and _decimal_json(r)["balance"] == 6
    r = gw.admin("POST", f"/admin/users/{user_id}/credits", {"amount": "-6.00000001"})
    error = assert_openai_error(r, 400, "invalid_request_error", any_code=True)
    assert error["param"] == "amount"
    assert gw.balance(key) == 6
    r = gw.admin("POST", f"/admin/users/{user_id}/credits", {"amount": "-6"})
    assert r.status_code == 200 and _decimal_json(r)["balance"] == 0


@pytest.mark.parametrize(
    "amount",
    ["0.000000001", "1.123456789", 0.1234567891, 0, "0", None, "ten", True, "NaN", "Infinity", [1], "1e400"],
)
def test_bad_credit_amount_is_400(gw: Gateway, amount: Any) -> None:
    user_id, key = _new_account(gw, "1")
    body = {} if amount is None else {"amount": amount}
    r = gw.admin("POST", f"/admin/users/{user_id}/credits", body)
    error = assert_openai_error(r, 400, "invalid_request_error", any_code=True)
    assert error["param"] == "amount"
    assert gw.balance(key) == 1


def test_eight_decimals_are_accepted(gw: Gateway) -> None:
    user_id, key = _new_account(gw, "0")
    r = gw.admin("POST", f"/admin/users/{user_id}/credits", {"amount": "0.00000001"})
    assert r.status_code == 200, r.text
    assert gw.balance(key) == Decimal("0.00000001")


# --- limits -----------------------------------------------------------------------------------


def test_limits_put_and_get(gw: Gateway) -> None:
    user_id, _ = _new_account(gw)
    before = gw.admin("GET", f"/admin/users/{user_id}").json()
    assert before["rpm_limit"] is None and before["rph_limit"] is None and before["tpm_limit"] is None
    r = gw.admin(
        "PUT", f"/admin/users/{user_id}/limits", {"rpm_limit": 5, "rph_limit": 50, "tpm_limit": 1000}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"user_id": user_id, "rpm_limit": 5, "rph_limit": 50, "tpm_limit": 1000}
    after = gw.admin("GET", f"/admin/users/{user_id}").json()
    assert (after["rpm_limit"], after["rph_limit"], after["tpm_limit"]) == (5, 50, 1000)
    # null returns a limit to the gateway default
    r = gw.admin("PUT", f"/admin/users/{user_id}/limits", {"rpm_limit": None, "rph_limit": 50})
    assert r.status_code == 200
    after = gw.admin("GET", f"/admin/users/{user_id}").json()
    assert after["rpm_limit"] is None and after["rph_limit"] == 50


@pytest.mark.parametrize("value", [-1, "5", 1.5, True, [5]])
def test_bad_limit_is_400(gw: Gateway, value: Any) -> None:
    user_id, _ = _new_account(gw)
    r = gw.admin("PUT", f"/admin/users/{user_id}/limits", {"rpm_limit": value})
    assert assert_openai_error(r, 400, "invalid_request_error", any_code=True)["param"] == "rpm_limit"
