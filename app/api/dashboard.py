"""The dashboard pages (/dashboard for users, /dashboard/admin), served from app/dashboard/.

Plain HTML, JS and CSS: no build step, no asset from outside the gateway. The pages call the
gateway's own JSON API with a credential kept in the page (sessionStorage), never in a URL or a
cookie. Each page gets its own Content-Security-Policy (the middleware's default is 'none').
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from app.api.deps import State
from app.api.money_json import MoneyJSONResponse
from app.config import Settings
from app.errors import NotFound

router = APIRouter(prefix="/dashboard", include_in_schema=False)

PAGES = Path(__file__).resolve().parent.parent / "dashboard"
# Only these files are served: nothing else under app/ can be reached through the asset route.
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "user.js": "text/javascript; charset=utf-8",
    "admin.js": "text/javascript; charset=utf-8",
    "vendor/supabase.js": "text/javascript; charset=utf-8",
}


def supabase_auth(settings: Settings) -> dict[str, str] | None:
    """Supabase Auth sign-in is offered when both the project URL and its anon key are set."""
    if settings.SUPABASE_URL and settings.SUPABASE_ANON_KEY:
        return {"url": settings.SUPABASE_URL.rstrip("/"), "anon_key": settings.SUPABASE_ANON_KEY}
    return None


def content_security_policy(settings: Settings) -> str:
    """Same-origin only; Supabase's own host too when its sign-in is on."""
    connect = "'self'"
    if (auth := supabase_auth(settings)) is not None:
        connect += " " + auth["url"]
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"connect-src {connect}; img-src 'self' data:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    )


def _headers(state: State) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(state.settings),
        "Cache-Control": "no-store",
    }


def _page(name: str, state: State) -> Response:
    return FileResponse(PAGES / name, media_type="text/html; charset=utf-8", headers=_headers(state))


@router.get("")
async def user_page(state: State) -> Response:
    """The user's dashboard: balance, spend, calls, keys and top-up."""
    return _page("user.html", state)


@router.get("/admin")
async def admin_page(state: State) -> Response:
    """The operator's dashboard (the page asks for ADMIN_API_KEY; every call it makes checks it)."""
    return _page("admin.html", state)


@router.get("/config.json")
async def page_config(state: State) -> MoneyJSONResponse:
    """What the pages need to know before sign-in: currency, Stripe, Supabase Auth (public values)."""
    return MoneyJSONResponse(
        {
            "currency": state.settings.BILLING_CURRENCY,
            "stripe": state.payments is not None,
            "supabase": supabase_auth(state.settings),
        },
        headers={"Cache-Control": "no-store"},
    )


@router.get("/assets/{name:path}")
async def asset(name: str, state: State) -> Response:
    """A script or style sheet of the pages."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"No dashboard asset '{name[:100]}'.", code="unknown_url")
    return FileResponse(PAGES / name, media_type=media_type, headers=_headers(state))
