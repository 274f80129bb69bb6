"""The application factory. Every resource is opened in the lifespan and put on one AppState."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response

from app.accounts.alerts import BalanceAlerts, parse_thresholds
from app.accounts.payments import StripePayments
from app.api import account, admin, billing, chat, embeddings, health, models, payments
from app.auth.invalidation import InvalidationBus
from app.auth.jwt import JwtVerifier
from app.auth.service import Authenticator
from app.billing.journal import SettlementJournal
from app.billing.pricing import PriceBook
from app.billing.service import BillingService
from app.billing.tokens import count_prompt_tokens
from app.bootstrap import ensure_demo_account
from app.config import Settings, load_model_config
from app.errors import GatewayError, InvalidRequest, NotFound
from app.llm.fastpath import DirectCaller, close_session
from app.llm.router import LLMService, apply_litellm_settings, build_router
from app.middleware import GatewayMiddleware
from app.observability.logging import configure_logging
from app.observability.metrics import Metrics
from app.observability.sentry import init_sentry
from app.observability.tracing import LLMTracer
from app.state import AppState
from app.store.base import Store

log = logging.getLogger("app")


def make_store(settings: Settings) -> Store:
    """The backend chosen by configuration: Postgres, Supabase REST, else embedded SQLite."""
    if settings.store_kind == "postgres":
        from app.store.postgres import PostgresStore

        return PostgresStore(settings.DATABASE_URL, pool_size=settings.DATABASE_POOL_SIZE)
    if settings.store_kind == "supabase":
        from app.store.supabase import SupabaseStore

        return SupabaseStore(settings.SUPABASE_URL, settings.SUPABASE_SERVICE_ROLE_KEY)
    from app.store.sqlite import SqliteStore

    return SqliteStore(settings.DATA_DIR)


def _lifespan(settings: Settings, metrics: Metrics):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.is_production and (problems := settings.unsafe_defaults()):
            raise RuntimeError("refusing to start in production: " + "; ".join(problems))
        async with AsyncExitStack() as stack:
            model_config = load_model_config(settings.GATEWAY_CONFIG)
            apply_litellm_settings(model_config.litellm_settings)
            store = make_store(settings)
            await store.open()
            stack.push_async_callback(store.close)
            if store.kind == "sqlite":
                log.info("using the embedded store in %s (set DATABASE_URL for Postgres)", settings.DATA_DIR)
            billing_service = BillingService(
                store=store,
                prices=PriceBook(
                    model_config,
                    markup=settings.BILLING_MARKUP,
                    free_unpriced=settings.BILLING_FREE_UNPRICED_MODELS,
                ),
                journal=SettlementJournal(Path(settings.DATA_DIR) / "journal"),
                metrics=metrics,
                currency=settings.BILLING_CURRENCY,
                reservation_ttl=settings.BILLING_RESERVATION_TTL_SECONDS,
                default_max_output=settings.BILLING_DEFAULT_MAX_OUTPUT_TOKENS,
                enabled=settings.BILLING_ENABLED,
            )
            await billing_service.replay_journal()
            await billing_service.start()
            stack.push_async_callback(billing_service.stop)
            router = build_router(model_config, redis_url=settings.REDIS_URL or None)
            # One pool of keep-alive connections to the providers for the fast path.
            http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
                skip_auto_headers=("User-Agent",),
            )
            stack.push_async_callback(close_session, http)
            tracer = LLMTracer.from_settings(settings)
            stack.callback(tracer.shutdown)
            state = AppState(
                settings=settings,
                model_config=model_config,
                store=store,
                auth=Authenticator(
                    store=store,
                    jwt=JwtVerifier(
                        secret=settings.JWT_SECRET_KEY,
                        algorithm=settings.JWT_ALGORITHM,
                        audience=settings.JWT_AUDIENCE,
                        supabase_secret=settings.SUPABASE_JWT_SECRET,
                        supabase_url=settings.SUPABASE_URL,
                    ),
                    default_balance=settings.BILLING_DEFAULT_BALANCE,
                ),
                llm=LLMService(router, model_config, direct=DirectCaller(router, http)),
                billing=billing_service,
                metrics=metrics,
                tracer=tracer,
            )
            if settings.REDIS_URL:
                bus = InvalidationBus(settings.REDIS_URL)
                state.auth.bus = bus
                bus.start(state.auth)
                stack.push_async_callback(bus.close)
            if settings.RATE_LIMIT_ENABLED:
                from app.ratelimit import RateLimiter

                state.ratelimiter = await RateLimiter.create(settings, metrics)
                stack.push_async_callback(state.ratelimiter.close)
            state.payments = StripePayments.from_settings(settings, store)
            if settings.ALERT_WEBHOOK_URL and (
                thresholds := parse_thresholds(settings.BILLING_ALERT_THRESHOLDS)
            ):
                state.alerts = BalanceAlerts(
                    store=store,
                    url=settings.ALERT_WEBHOOK_URL,
                    secret=settings.ALERT_WEBHOOK_SECRET,
                    thresholds=thresholds,
                )
                await state.alerts.start()
                stack.push_async_callback(state.alerts.stop)
                billing_service.after_settle = state.alerts.balance_changed
            if settings.ENVIRONMENT == "development" and settings.DEMO_API_KEY:
                await ensure_demo_account(store, settings)
            app.state.gateway = state
            await _warm_up(state)
            log.info("gateway ready: %d models, store=%s", len(state.llm.model_names()), store.kind)
            yield

    return lifespan


async def _warm_up(state: AppState) -> None:
    """Do once at start what the first request would otherwise pay for, then freeze the heap."""
    # LiteLLM's tokenizer loads lazily: ~0.5 s on the first call of each worker.
    for name in state.llm.model_names()[:1]:
        await count_prompt_tokens(name, [{"role": "user", "content": "warm up"}])
    # LiteLLM leaves ~365k long-lived objects; a full collection over them stalls the event loop
    # for ~200 ms. Frozen, they are never scanned again (only what requests allocate is).
    gc.collect()
    gc.freeze()


def _error_response(error: GatewayError) -> Response:
    return Response(
        error.body_bytes(),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )


def _install_error_handlers(app: FastAPI) -> None:
    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return _error_response(exc)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", []) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        return _error_response(
            InvalidRequest(f"Invalid request: {first.get('msg', 'bad input')}.", param=param)
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            # INTERFACE.md's error table: an unknown route is a 404 `model_not_found`, like an
            # unknown model (clients that branch on the code treat both as "no such thing").
            return _error_response(
                NotFound(f"Unknown route: {request.method} {request.url.path}", code="model_not_found")
            )
        if exc.status_code == 405:
            return _error_response(
                InvalidRequest(
                    f"Method {request.method} is not allowed here.",
                    status_code=405,
                    code="method_not_allowed",
                    headers=dict(exc.headers or {}),  # Allow: the methods that are
                )
            )
        return _error_response(GatewayError(str(exc.detail), status_code=exc.status_code))

    async def unhandled(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return _error_response(GatewayError("The gateway hit an internal error.", code="internal_error"))

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unhandled)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app; resources open when the lifespan starts, not here."""
    settings = settings or Settings()
    configure_logging(settings.LOG_LEVEL)
    init_sentry(settings)
    metrics = Metrics(
        enabled=settings.PROMETHEUS_ENABLED, multiproc_dir=settings.PROMETHEUS_MULTIPROC_DIR or None
    )
    app = FastAPI(
        title="LLM Gateway",
        version="1.0.0",
        lifespan=_lifespan(settings, metrics),
        docs_url=None if settings.is_production else "/docs",
        redoc_url=None,
        openapi_url=None if settings.is_production else "/openapi.json",
    )
    for module in (chat, embeddings, models, billing, admin, health):
        app.include_router(module.router)
    app.include_router(account.router)
    app.include_router(payments.router)
    _install_error_handlers(app)
    if settings.ALLOWED_HOSTS and settings.ALLOWED_HOSTS != ["*"]:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.ALLOWED_HOSTS)
    if settings.CORS_ORIGINS:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.CORS_ORIGINS,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "X-Request-Cost", "Retry-After"],
        )
    app.add_middleware(GatewayMiddleware, max_body=settings.MAX_REQUEST_SIZE, metrics=metrics)
    return app


def __getattr__(name: str) -> FastAPI:
    # `app.main:app` for servers, built on first access so importing this module does no work.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
