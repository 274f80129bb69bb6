"""The application factory. Every resource is opened in the lifespan and put on one AppState."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal
from pathlib import Path

import aiohttp
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from app.accounts.alerts import BalanceAlerts, parse_thresholds
from app.accounts.auto_topup import AutoTopups
from app.accounts.payments import StripePayments
from app.api import (
    account,
    admin,
    audio,
    billing,
    chat,
    completions,
    dashboard,
    embeddings,
    health,
    images,
    messages,
    models,
    moderations,
    payments,
    rerank,
    responses,
)
from app.auth.invalidation import InvalidationBus
from app.auth.jwt import JwtVerifier
from app.auth.service import Authenticator
from app.billing.estimate import chat_prompt_tokens
from app.billing.journal import SettlementJournal
from app.billing.pricing import PriceBook
from app.billing.service import BillingService
from app.bootstrap import ensure_demo_account
from app.calls.drain import Drain
from app.calls.lifecycle import CallService
from app.calls.record import Recorder
from app.config import Settings, load_model_config
from app.errors import (
    ClientClosed,
    GatewayError,
    InvalidRequest,
    NotFound,
    StoreFailure,
    anthropic_body_bytes,
    from_store,
    is_anthropic_path,
)
from app.hotlane import GatewayApp
from app.llm.fastpath import DirectCaller, close_session
from app.llm.router import LLMService, apply_litellm_settings, build_router
from app.middleware import GatewayMiddleware
from app.observability.logging import configure_logging
from app.observability.metrics import Metrics
from app.observability.sentry import init_sentry
from app.observability.tracing import LLMTracer
from app.state import AppState
from app.store.base import Store, StoreError

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
            stack.push_async_callback(store.close)
            reconnect = await _open_store(store)
            if reconnect is not None:
                stack.push_async_callback(_cancel, reconnect)
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
            auth = Authenticator(
                store=store,
                jwt=JwtVerifier(
                    secret=settings.JWT_SECRET_KEY,
                    algorithm=settings.JWT_ALGORITHM,
                    audience=settings.JWT_AUDIENCE,
                    supabase_secret=settings.SUPABASE_JWT_SECRET,
                    supabase_url=settings.SUPABASE_URL,
                ),
                default_balance=settings.BILLING_DEFAULT_BALANCE,
            )
            if settings.REDIS_URL:
                bus = InvalidationBus(settings.REDIS_URL)
                auth.bus = bus
                bus.start(auth)
                stack.push_async_callback(bus.close)
            ratelimiter = None
            if settings.RATE_LIMIT_ENABLED:
                from app.ratelimit import RateLimiter

                ratelimiter = await RateLimiter.create(settings, metrics)
                stack.push_async_callback(ratelimiter.close)
            llm = LLMService(router, model_config, direct=DirectCaller(router, http))
            drain = Drain(settings.SHUTDOWN_STREAM_DEADLINE_SECONDS)
            drain.install()
            calls = CallService(
                llm=llm,
                billing=billing_service,
                recorder=Recorder(
                    metrics=metrics,
                    tracer=tracer,
                    ratelimiter=ratelimiter,
                    currency=settings.BILLING_CURRENCY,
                ),
                drain=drain,
            )
            state = AppState(
                settings=settings,
                model_config=model_config,
                store=store,
                auth=auth,
                llm=llm,
                billing=billing_service,
                metrics=metrics,
                tracer=tracer,
                calls=calls,
                ratelimiter=ratelimiter,
            )
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
            watchers: list[Callable[[str, Decimal], None]] = []
            if state.alerts is not None:
                watchers.append(state.alerts.charged)
            if state.payments is not None:
                auto_topups = AutoTopups(
                    store=store,
                    client=state.payments.client,
                    currency=settings.BILLING_CURRENCY,
                    on_credit=state.alerts.balance_changed if state.alerts is not None else None,
                )
                stack.push_async_callback(auto_topups.stop)
                state.auto_topups = auto_topups
                watchers.append(auto_topups.charged)
            if watchers:
                billing_service.after_settle = _fan_out(watchers)
            if settings.demo_account_wanted(store.kind):
                await ensure_demo_account(store, settings)
            app.state.gateway = state
            await _warm_up(state)
            log.info("gateway ready: %d models, store=%s", len(state.llm.model_names()), store.kind)
            yield

    return lifespan


def _fan_out(watchers: list[Callable[[str, Decimal], None]]) -> Callable[[str, Decimal], None]:
    """One after-settle hook telling every watcher (alerts, automatic top-ups); none may block."""
    if len(watchers) == 1:
        return watchers[0]

    def tell(user_id: str, balance: Decimal) -> None:
        for watch in watchers:
            watch(user_id, balance)

    return tell


async def _open_store(store: Store, *, retry_seconds: float = 2.0) -> asyncio.Task[None] | None:
    """Open the store; if it is down, start anyway and keep trying in the background.

    Meanwhile /health answers, /ready is 503 and calls get 503 `store_unavailable`.
    """
    try:
        await store.open()
        return None
    except StoreError as exc:
        log.error("the store is unavailable (%s); starting without it and retrying", exc)

    async def retry() -> None:
        while True:
            await asyncio.sleep(retry_seconds)
            try:
                await store.open()
            except StoreError:
                continue
            log.info("the store is back")
            return

    return asyncio.create_task(retry())


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _warm_up(state: AppState) -> None:
    """Do once at start what the first request would otherwise pay for, then freeze the heap."""
    # LiteLLM's tokenizer loads lazily: ~0.5 s on the first call of each worker.
    for name in state.llm.model_names()[:1]:
        await chat_prompt_tokens(name, {"messages": [{"role": "user", "content": "warm up"}]})
    # LiteLLM leaves ~365k long-lived objects; a full collection over them stalls the event loop
    # for ~200 ms. Frozen, they are never scanned again (only what requests allocate is).
    gc.collect()
    gc.freeze()


def _error_response(error: GatewayError, request: Request | None = None) -> Response:
    """The error in the protocol of the route it happened on (Anthropic's on /v1/messages*)."""
    anthropic = request is not None and is_anthropic_path(request.url.path)
    return Response(
        anthropic_body_bytes(error) if anthropic else error.body_bytes(),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )


def _install_error_handlers(app: FastAPI) -> None:
    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        if isinstance(exc, ClientClosed):
            log.info("client closed the connection: %s %s", request.method, request.url.path)
        return _error_response(exc, request)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", []) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        return _error_response(
            InvalidRequest(f"Invalid request: {first.get('msg', 'bad input')}.", param=param), request
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return _error_response(
                NotFound(f"Unknown route: {request.method} {request.url.path}", code="unknown_url"),
                request,
            )
        if exc.status_code == 405:
            return _error_response(
                InvalidRequest(
                    f"Method {request.method} is not allowed here.",
                    status_code=405,
                    code="method_not_allowed",
                    headers=dict(exc.headers or {}),  # Allow: the methods that are
                ),
                request,
            )
        return _error_response(GatewayError(str(exc.detail), status_code=exc.status_code), request)

    async def unhandled(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ClientDisconnect):
            log.info("client closed the connection: %s %s", request.method, request.url.path)
            return _error_response(ClientClosed("The client closed the connection."), request)
        log.exception("unhandled error")
        return _error_response(
            GatewayError("The gateway hit an internal error.", code="internal_error"), request
        )

    async def store_failure(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StoreFailure)
        return _error_response(from_store(exc), request)

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(StoreFailure, store_failure)
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
    app = GatewayApp(
        title="LLM Gateway",
        version="1.0.0",
        lifespan=_lifespan(settings, metrics),
        docs_url=None if settings.is_production else "/docs",
        redoc_url=None,
        openapi_url=None if settings.is_production else "/openapi.json",
    )
    model_calls = (chat, embeddings, responses, messages, completions, images, audio, moderations, rerank)
    for module in (*model_calls, models, billing, admin, health, account, payments, dashboard):
        app.include_router(module.router)
    # The model-call routes skip FastAPI's router on the way in (app/hotlane.py).
    app.serve_directly(*(module.router for module in model_calls))
    _install_error_handlers(app)
    if settings.ALLOWED_HOSTS and settings.ALLOWED_HOSTS != ["*"]:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.ALLOWED_HOSTS)
    if settings.CORS_ORIGINS:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.CORS_ORIGINS,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-Request-ID",
                "x-api-key",
                "anthropic-version",
                "anthropic-beta",
            ],
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
