"""Production refuses a Stripe secret key without the webhook's signing secret."""

from __future__ import annotations

from app.config import Settings


def _settings(**values: str) -> Settings:
    base = {"ENVIRONMENT": "production", "ADMIN_API_KEY": "a-long-admin-secret-0123456789"}
    return Settings(_env_file=None, **(base | values))  # type: ignore[call-arg, arg-type]


def test_a_stripe_key_without_a_webhook_secret_is_refused_in_production() -> None:
    problems = _settings(STRIPE_SECRET_KEY="sk_live_x").unsafe_defaults()
    assert any("STRIPE_WEBHOOK_SECRET" in p for p in problems)
    assert "sk_live_x" not in " ".join(problems)


def test_stripe_with_both_secrets_or_without_stripe_is_fine() -> None:
    assert _settings(STRIPE_SECRET_KEY="sk_live_x", STRIPE_WEBHOOK_SECRET="whsec_y").unsafe_defaults() == []
    assert _settings().unsafe_defaults() == []
