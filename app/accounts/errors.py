"""What a key's policy (or a debt) refuses, as the store reports it atomically with the reserve."""

from __future__ import annotations

from app.errors import AuthenticationFailed, GatewayError, InsufficientBalance, PermissionDenied


def key_refusal(status: str, *, model: str) -> GatewayError | None:
    """The error for a reserve refused by the caller's key or debt; None for other statuses."""
    if status == "key_budget":
        return InsufficientBalance(
            "This API key has spent its budget for the current period.", code="key_budget_exceeded"
        )
    if status == "key_expired":
        return AuthenticationFailed("This API key has expired.", code="key_expired")
    if status == "key_revoked":
        return AuthenticationFailed("Invalid API key.")
    if status == "model_not_allowed":
        return PermissionDenied(
            f"This API key is not allowed to use model '{model}'.", code="model_not_allowed", param="model"
        )
    if status == "debt":
        return InsufficientBalance(
            "Your account has an outstanding debt from a refunded or disputed payment; add credit to"
            " pay it before making calls.",
            code="outstanding_debt",
        )
    return None
