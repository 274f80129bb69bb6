"""Prometheus metrics: one Metrics object per process, built at start-up and passed around.

Label values must come from the gateway's own vocabulary (configured model names, route
templates, fixed outcome words), never from raw user input, and never user ids or keys:
every distinct value is a time series forever.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from app.observability.multiproc import (
    ENV_VAR,
    collect,
    ensure_multiprocess_values,
    mark_process_dead,
    prepare_multiproc_dir,
)

__all__ = ["Metrics", "mark_process_dead", "prepare_multiproc_dir"]

# LLM calls run from well under a second to minutes (long streams); HTTP requests include them.
LLM_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
HTTP_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


class _LLMSeries(NamedTuple):
    requests: Counter
    duration: Histogram
    ttft: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter
    cost: Counter


class _HTTPSeries(NamedTuple):
    requests: Counter
    duration: Histogram


def _resolve_multiproc_dir(explicit: str | None) -> str | None:
    env = os.environ.get(ENV_VAR) or None
    if explicit and env and os.path.abspath(explicit) != os.path.abspath(env):
        raise ValueError(
            f"PROMETHEUS_MULTIPROC_DIR is {env!r} in the environment but {explicit!r} in "
            "settings; prometheus_client writes to the former, so they must agree"
        )
    if explicit and not env:
        # prometheus_client locates its mmap files through the environment variable only.
        os.environ[ENV_VAR] = explicit
    path = explicit or env
    if path:
        os.makedirs(path, exist_ok=True)
    return path


class Metrics:
    """The gateway's Prometheus metrics, in a registry of its own (or the multiprocess dir)."""

    def __init__(self, *, enabled: bool, multiproc_dir: str | None = None) -> None:
        self.enabled = enabled
        self.multiproc_dir = _resolve_multiproc_dir(multiproc_dir) if enabled else None
        # Children per label tuple: `.labels()` takes a lock and validates on every call,
        # a dict hit is ~50 ns; these calls are on every request's path.
        self._llm: dict[tuple[str, str, str, str], _LLMSeries] = {}
        self._http: dict[tuple[str, str, int], _HTTPSeries] = {}
        self._errors: dict[str, Counter] = {}
        self._rate_limit: dict[str, Counter] = {}
        self._billing: dict[tuple[str, str], Counter] = {}
        # Own registry: tests build many apps in one process, and the global one would
        # refuse the second registration. In multiprocess mode it is never rendered; the
        # values live in the mmap files.
        self._registry = CollectorRegistry()
        if not enabled:
            return
        if self.multiproc_dir:
            ensure_multiprocess_values()
        r = self._registry
        self._llm_requests = Counter(
            "llm_requests",
            "LLM calls by public model, provider and outcome.",
            ("model", "provider", "status"),
            registry=r,
        )
        self._llm_duration = Histogram(
            "llm_requests_duration_seconds",
            "Wall time of an LLM call, first byte sent to last byte received.",
            ("model", "provider"),
            buckets=LLM_DURATION_BUCKETS,
            registry=r,
        )
        self._llm_ttft = Histogram(
            "llm_time_to_first_token_seconds",
            "Time from the call's start to its first streamed token.",
            ("model", "provider"),
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self._llm_errors = Counter(
            "llm_requests_errors",
            "LLM call failures by error type.",
            ("type",),
            registry=r,
        )
        self._llm_tokens = Counter(
            "llm_tokens",
            "Tokens processed, by model and kind.",
            ("model", "kind"),
            registry=r,
        )
        self._llm_cost = Counter(
            "llm_cost",
            "Cost charged for LLM calls (float here; the ledger keeps exact decimals).",
            ("model", "currency"),
            registry=r,
        )
        self._rate_limit_requests = Counter(
            "rate_limit_requests",
            "Rate-limit decisions: allowed, limited, or degraded (limiter backend down).",
            ("outcome",),
            registry=r,
        )
        self._usage_counted = Counter(
            "llm_usage_counted",
            "Calls billed on the gateway's own token count because the provider reported no usage.",
            ("endpoint",),
            registry=r,
        )
        self._billing_operations = Counter(
            "billing_operations",
            "Billing operations (reserve, settle, release, credit) by outcome.",
            ("operation", "outcome"),
            registry=r,
        )
        self._http_requests = Counter(
            "http_requests",
            "HTTP requests by method, route template and status.",
            ("method", "route", "status"),
            registry=r,
        )
        self._http_duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration by method and route template.",
            ("method", "route"),
            buckets=HTTP_DURATION_BUCKETS,
            registry=r,
        )

    def llm_request(
        self,
        *,
        model: str,
        provider: str,
        status: str,
        duration_s: float,
        ttft_s: float | None,
        prompt_tokens: int,
        completion_tokens: int,
        cost: Decimal | None,
        currency: str,
    ) -> None:
        """Record one finished LLM call: count, latency, time to first token, tokens, cost."""
        if not self.enabled:
            return
        key = (model, provider, status, currency)
        series = self._llm.get(key)
        if series is None:
            series = self._llm[key] = _LLMSeries(
                self._llm_requests.labels(model, provider, status),
                self._llm_duration.labels(model, provider),
                self._llm_ttft.labels(model, provider),
                self._llm_tokens.labels(model, "prompt"),
                self._llm_tokens.labels(model, "completion"),
                self._llm_cost.labels(model, currency),
            )
        series.requests.inc()
        series.duration.observe(duration_s)
        if ttft_s is not None:
            series.ttft.observe(ttft_s)
        if prompt_tokens > 0:
            series.prompt_tokens.inc(prompt_tokens)
        if completion_tokens > 0:
            series.completion_tokens.inc(completion_tokens)
        if cost is not None and cost > 0:
            series.cost.inc(float(cost))

    def llm_error(self, *, error_type: str) -> None:
        """Count one LLM failure by type (timeout, rate_limited, upstream_error, ...)."""
        if not self.enabled:
            return
        child = self._errors.get(error_type)
        if child is None:
            child = self._errors[error_type] = self._llm_errors.labels(error_type)
        child.inc()

    def rate_limit(self, *, outcome: str) -> None:
        """Count one rate-limit decision: allowed, limited or degraded."""
        if not self.enabled:
            return
        child = self._rate_limit.get(outcome)
        if child is None:
            child = self._rate_limit[outcome] = self._rate_limit_requests.labels(outcome)
        child.inc()

    def usage_counted(self, *, endpoint: str) -> None:
        """A call the provider reported no usage for: billed on the gateway's count."""
        if self.enabled:
            self._usage_counted.labels(endpoint).inc()

    def billing(self, *, operation: str, outcome: str) -> None:
        """Count one billing operation and its outcome."""
        if not self.enabled:
            return
        key = (operation, outcome)
        child = self._billing.get(key)
        if child is None:
            child = self._billing[key] = self._billing_operations.labels(operation, outcome)
        child.inc()

    def http_request(self, *, method: str, route: str, status: int, duration_s: float) -> None:
        """Record one HTTP request; `route` is the route template, never the raw path."""
        if not self.enabled:
            return
        key = (method, route, status)
        series = self._http.get(key)
        if series is None:
            series = self._http[key] = _HTTPSeries(
                self._http_requests.labels(method, route, str(status)),
                self._http_duration.labels(method, route),
            )
        series.requests.inc()
        series.duration.observe(duration_s)

    def render(self) -> tuple[bytes, str]:
        """The /metrics body and content type; sums all workers in multiprocess mode."""
        if not self.enabled:
            return b"", CONTENT_TYPE_LATEST
        if self.multiproc_dir:
            # Reads every worker's file: run it off the event loop (a sync route does).
            return collect(self.multiproc_dir), CONTENT_TYPE_LATEST
        return generate_latest(self._registry), CONTENT_TYPE_LATEST
