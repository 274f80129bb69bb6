"""The dashboard in a real browser (Debian's chromium driven by Playwright) against a real gateway.

Every page load is watched: a request to any host but the gateway, or a console error, fails the
test. Screenshots go to SCREENSHOT_DIR when it is set (`make screenshots` writes them to docs/).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import ADMIN_KEY, Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider

JWT_SECRET = "dashboard-test-jwt-secret-0123456789abcdef"
CHROMIUM = "/usr/bin/chromium"
PRICES = {"input_cost_per_token": "0.00001", "output_cost_per_token": "0.00003"}


def display(amount: str) -> str:
    """Money as the page shows it: the API's exact digits, at least 2 decimals, thousands grouped."""
    sign = "\N{MINUS SIGN}" if amount.startswith("-") else ""
    whole, _, frac = amount.lstrip("-").partition(".")
    return f"{sign}{int(whole):,}.{frac.ljust(2, '0')}"


def plain(value: Decimal | str) -> str:
    """A decimal as the gateway's JSON writes it: no exponent, no trailing zeros."""
    return format(Decimal(value).normalize(), "f")


def session_token(user_id: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + 3600}, JWT_SECRET, algorithm="HS256")


def raw_money(gw: Gateway, path: str, credential: str, key: str) -> str:
    """A money field exactly as the gateway wrote it in its JSON."""
    r = httpx.get(gw.url + path, headers={"Authorization": f"Bearer {credential}"}, timeout=30)
    assert r.status_code == 200, r.text
    return str(json.loads(r.text, parse_float=str, parse_int=str)[key])


def chat(gw: Gateway, key: str, model: str, text: str = "Hello!") -> httpx.Response:
    r = httpx.post(
        gw.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 50},
        timeout=30,
    )
    return r


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    models = [
        model_entry("gpt-mini", "fake+chunks-12", fake_provider.base_url, **PRICES),
        model_entry("claude-lite", "fake+chunks-30", fake_provider.base_url, **PRICES),
    ]
    gateway = start_gateway(
        tmp_path_factory.mktemp("dashboard"), models=models, env={"JWT_SECRET_KEY": JWT_SECRET}
    )
    yield gateway
    stop_gateway(gateway)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


class Watch:
    """What a page asked for and what it logged."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.urls: list[str] = []
        self.errors: list[str] = []

    def check(self) -> None:
        local = (self.gw.url + "/", "data:", "blob:")
        foreign = [u for u in self.urls if not u.startswith(local)]
        assert foreign == [], f"requests outside the gateway: {foreign}"
        assert self.errors == [], f"console errors: {self.errors}"


@pytest.fixture
def page(browser: Browser, gw: Gateway) -> Iterator[tuple[Page, Watch]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    p = context.new_page()
    watch = Watch(gw)
    p.on("request", lambda r: watch.urls.append(r.url))
    p.on("console", lambda m: watch.errors.append(m.text) if m.type == "error" else None)
    p.on("pageerror", lambda e: watch.errors.append(str(e)))
    p.on("dialog", lambda d: d.accept())  # the revoke confirmation
    yield p, watch
    context.close()
    watch.check()


def sign_in_with_key(p: Page, gw: Gateway, key: str) -> None:
    p.goto(gw.url + "/dashboard")
    p.fill("#api-key", key)
    p.click("#form-key button[type=submit]")
    expect(p.locator("#app")).to_be_visible()


def sign_in_with_session(p: Page, gw: Gateway, user_id: str) -> None:
    p.goto(gw.url + "/dashboard")
    p.click("#tab-session")
    p.fill("#session-token", session_token(user_id))
    p.click("#form-session button[type=submit]")
    expect(p.locator("#app")).to_be_visible()


def shoot(p: Page, name: str) -> None:
    out = os.environ.get("SCREENSHOT_DIR")
    data = p.screenshot(full_page=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / name).write_bytes(data)


@pytest.fixture(scope="module")
def busy_user(gw: Gateway) -> tuple[str, str, list[httpx.Response]]:
    """A user who made a few calls on two models."""
    user_id, key = gw.new_user("25")
    calls = [chat(gw, key, m) for m in ("gpt-mini", "claude-lite", "gpt-mini", "claude-lite", "claude-lite")]
    assert all(r.status_code == 200 for r in calls), [r.text for r in calls]
    return user_id, key, calls


def test_the_pages_have_their_own_policy_and_the_api_keeps_none(gw: Gateway) -> None:
    for path in ("/dashboard", "/dashboard/admin", "/dashboard/assets/user.js"):
        r = httpx.get(gw.url + path, timeout=10)
        assert r.status_code == 200
        csp = r.headers.get_list("content-security-policy")
        assert len(csp) == 1 and "script-src 'self'" in csp[0] and "frame-ancestors 'none'" in csp[0]
    assert httpx.get(gw.url + "/dashboard/assets/../config.py", timeout=10).status_code == 404
    r = httpx.get(gw.url + "/health", timeout=10)
    assert r.headers.get_list("content-security-policy") == ["default-src 'none'; frame-ancestors 'none'"]


def test_a_user_signs_in_with_a_key_and_sees_balance_spend_and_the_last_call(
    page: tuple[Page, Watch], gw: Gateway, busy_user: tuple[str, str, list[httpx.Response]]
) -> None:
    p, _ = page
    user_id, key, calls = busy_user
    sign_in_with_key(p, gw, key)
    balance = raw_money(gw, "/billing/balance", key, "balance")
    assert Decimal(balance) < 25
    expect(p.get_by_test_id("stat-balance")).to_have_text(display(balance) + "USD")
    expect(p.locator("#who")).to_contain_text(user_id)

    # The newest row is the last call, at its exact cost; it opens the call's record.
    last = calls[-1]
    cost = plain(last.headers["x-request-cost"])
    first = p.locator("#calls-table tbody tr").first
    expect(first).to_have_attribute("data-request-id", last.headers["x-gateway-request-id"])
    expect(first.get_by_test_id("amount")).to_have_text(display("-" + cost))
    first.click()
    expect(p.locator("#detail")).to_be_visible()
    expect(p.get_by_test_id("detail-cost")).to_have_text(f"{display(cost)} USD")
    expect(p.locator("#detail-kv")).to_contain_text("charged")
    expect(p.locator("#detail-kv")).to_contain_text("claude-lite")
    p.click("#detail-close")

    # Charts: 30 day columns, today's drawn; both models as bars, the busier first.
    expect(p.locator("#chart-day svg rect.bar")).to_have_count(30)
    assert float(p.locator("#chart-day svg rect.bar").last.get_attribute("height") or 0) > 0
    expect(p.locator("#chart-model .hbar .name")).to_have_text(["claude-lite", "gpt-mini"])
    spent = sum(Decimal(r.headers["x-request-cost"]) for r in calls)
    expect(p.get_by_test_id("stat-spent")).to_have_text(display(plain(spent)) + "USD")

    # A key may look at its keys, not create any.
    expect(p.locator("#keys-create")).to_contain_text("sign in with a session")
    expect(p.locator("#key-form")).to_have_count(0)

    # CSV export downloads the ledger.
    with p.expect_download() as dl:
        p.click("#csv")
    text = Path(dl.value.path()).read_text()
    assert text.startswith("id,timestamp,kind,amount") and last.headers["x-gateway-request-id"] in text
    shoot(p, "dashboard-user.png")


def test_a_session_creates_a_key_that_works_and_revokes_it(
    page: tuple[Page, Watch], gw: Gateway, busy_user: tuple[str, str, list[httpx.Response]]
) -> None:
    p, _ = page
    user_id, _, _ = busy_user
    sign_in_with_session(p, gw, user_id)
    p.fill("#key-name", "ci-runner")
    p.fill("#key-budget", "5")
    p.select_option("#key-period", "month")
    p.fill("#key-expires", "2031-01-31")
    p.fill("#key-models", "gpt-mini")
    p.click("#key-form button[type=submit]")
    new_key = p.locator("#new-key").inner_text(timeout=10_000)
    assert new_key.startswith("sk-")
    row = p.locator("#keys-table tbody tr", has_text="ci-runner")
    expect(row).to_contain_text("0.00 of 5.00 USD / month")
    expect(row).to_contain_text("active")

    assert chat(gw, new_key, "gpt-mini").status_code == 200
    assert chat(gw, new_key, "claude-lite").status_code == 403  # outside the key's models

    row.get_by_role("button", name="Revoke").click()
    expect(p.locator("#keys-table tbody tr", has_text="ci-runner")).to_contain_text("revoked")
    refused = chat(gw, new_key, "gpt-mini")
    assert refused.status_code == 401, refused.text


def test_a_new_user_sees_what_to_do_and_a_bad_key_gets_plain_words(
    page: tuple[Page, Watch], gw: Gateway
) -> None:
    p, watch = page
    p.goto(gw.url + "/dashboard")
    p.fill("#api-key", "sk-not-a-real-key")
    p.click("#form-key button[type=submit]")
    expect(p.locator("#signin-msg")).to_contain_text("not accepted")
    watch.errors.clear()  # the browser itself logs the 401 it was answered

    _, key = gw.new_user("0")
    p.fill("#api-key", key)
    p.click("#form-key button[type=submit]")
    expect(p.get_by_test_id("stat-balance")).to_have_text("0.00USD")
    expect(p.locator("#calls")).to_contain_text("No calls yet: try this curl")
    expect(p.locator("#calls pre")).to_contain_text(gw.url + "/v1/chat/completions")
    expect(p.locator("#chart-day")).to_contain_text("No spend in the last 30 days yet")
    expect(p.locator("#banner")).to_contain_text("Your balance is empty")
    # Reloading keeps the tab signed in (sessionStorage), and nothing is in the URL.
    p.reload()
    expect(p.get_by_test_id("stat-balance")).to_have_text("0.00USD")
    assert key not in p.url and p.context.cookies() == []


def test_the_admin_sees_users_credits_them_sets_limits_and_sees_deployments(
    page: tuple[Page, Watch], gw: Gateway, busy_user: tuple[str, str, list[httpx.Response]]
) -> None:
    p, _ = page
    user_id, key, _ = busy_user
    p.goto(gw.url + "/dashboard/admin")
    p.fill("#admin-key", ADMIN_KEY)
    p.click("#form-admin button[type=submit]")
    row = p.locator(f'#users-table tr[data-user-id="{user_id}"]')
    before = raw_money(gw, "/billing/balance", key, "balance")
    expect(row.get_by_test_id("balance")).to_have_text(display(before))

    row.click()
    expect(p.locator("#credit-user")).to_have_value(user_id)
    p.fill("#credit-amount", "2.5")
    p.click("#credit-form button[type=submit]")
    after = Decimal(before) + Decimal("2.5")
    expect(p.locator("#credit-msg")).to_contain_text(f"balance is now {display(plain(after))}")
    assert gw.balance(key) == after
    expect(row.get_by_test_id("balance")).to_have_text(display(plain(after)))

    p.fill("#limits-rpm", "120")
    p.click("#limits-form button[type=submit]")
    expect(p.locator("#limits-msg")).to_contain_text("Saved")
    assert gw.admin("GET", f"/admin/users/{user_id}").json()["rpm_limit"] == 120

    deployments = p.locator("#deployments-table tbody tr")
    expect(deployments).to_have_count(2)
    expect(p.locator("#deployments-table")).to_contain_text("gpt-mini")
    expect(p.locator("#deployments-table")).to_contain_text("serving")
    expect(p.locator("#health-status")).to_contain_text("healthy")
    expect(p.locator("#chart-day svg rect.bar")).to_have_count(30)
    expect(p.locator("#chart-model .hbar .name").first).to_contain_text("claude-lite")
    shoot(p, "dashboard-admin.png")


def test_a_wrong_admin_key_is_refused_in_plain_words(page: tuple[Page, Watch], gw: Gateway) -> None:
    p, watch = page
    p.goto(gw.url + "/dashboard/admin")
    p.fill("#admin-key", "not-the-key")
    p.click("#form-admin button[type=submit]")
    expect(p.locator("#signin-msg")).to_contain_text("not this gateway's admin key")
    expect(p.locator("#app")).to_be_hidden()
    watch.errors.clear()  # the browser's own log line for the 401


@pytest.mark.parametrize("which", ["user", "admin"])
def test_both_pages_fit_a_360_px_phone(
    browser: Browser, gw: Gateway, busy_user: tuple[str, str, list[httpx.Response]], which: str
) -> None:
    user_id, _, _ = busy_user
    context = browser.new_context(viewport={"width": 360, "height": 780}, device_scale_factor=2)
    p = context.new_page()
    watch = Watch(gw)
    p.on("request", lambda r: watch.urls.append(r.url))
    p.on("console", lambda m: watch.errors.append(m.text) if m.type == "error" else None)
    try:
        if which == "user":
            sign_in_with_session(p, gw, user_id)
            expect(p.locator("#calls-table")).to_be_visible()
            expect(p.locator("#keys-table")).to_be_visible()
        else:
            p.goto(gw.url + "/dashboard/admin")
            p.fill("#admin-key", ADMIN_KEY)
            p.click("#form-admin button[type=submit]")
            expect(p.locator("#deployments-table")).to_be_visible()
            expect(p.locator("#users-table")).to_be_visible()
        expect(p.locator("#chart-day svg")).to_be_visible()
        width: Any = p.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"the page scrolls sideways: {width}px"
        shoot(p, f"dashboard-{which}-mobile.png")
    finally:
        context.close()
    watch.check()
