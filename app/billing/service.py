"""Reserve before the call, settle on actual usage after it, release on failure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from app.accounts.errors import key_refusal
from app.billing.journal import PendingSettlement, SettlementJournal
from app.billing.pricing import Price, PriceBook, usage_cost
from app.errors import GatewayError, InsufficientBalance, InvalidRequest, StoreUnavailable
from app.observability.metrics import Metrics
from app.store.base import BalanceConflict, Settlement, Store, StoreError, UserNotFound
from app.usage import Usage

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Hold:
    """Money held for one call in flight."""

    user_id: str
    request_id: str
    model: str
    price: Price
    max_tokens: int | None  # the completion limit the hold pays for; None: no limit needed
    amount: Decimal
    tier: str | None = None


@dataclass(frozen=True, slots=True)
class Charge:
    """What a settled call cost, and what of it the balance could not cover."""

    cost: Decimal
    uncollected: Decimal = Decimal(0)


class BillingService:
    """The only code that moves money; every operation is one store round trip."""

    def __init__(
        self,
        *,
        store: Store,
        prices: PriceBook,
        journal: SettlementJournal,
        metrics: Metrics,
        currency: str,
        reservation_ttl: int,
        enabled: bool = True,
        default_max_output: int = 4096,
        sweep_interval_seconds: float = 60.0,
        replay_interval_seconds: float = 5.0,
    ) -> None:
        self.store = store
        self.prices = prices
        self.journal = journal
        self.currency = currency
        self.enabled = enabled
        self._metrics = metrics
        self._ttl = reservation_ttl
        self._default_max_output = default_max_output
        self._sweep_interval = sweep_interval_seconds
        self._replay_interval = replay_interval_seconds
        self._tasks: set[asyncio.Task[object]] = set()
        self._loops: list[asyncio.Task[None]] = []
        # Told the user id after every charge (low-balance alerts); must not block.
        # Told (user, new balance) after every charge; must not block (watchers start tasks).
        self.after_settle: Callable[[str, Decimal], None] | None = None

    async def start(self) -> None:
        """Start the sweeper of expired holds and the journal replayer."""
        if not self.enabled:
            return
        self._loops = [
            asyncio.create_task(self._every(self._sweep_interval, self.sweep_expired)),
            asyncio.create_task(self._every(self._replay_interval, self.replay_journal)),
        ]

    async def stop(self) -> None:
        """Finish settlements in flight, then stop the background loops."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def price_for(self, model: str, tier: str | None = None) -> Price:
        """The reservation price of a model group; unpriced models are refused, never free."""
        price = self.prices.for_group(model, tier)
        if price is None and tier is not None:
            raise InvalidRequest(
                f"The service tier '{tier}' has no price configured for model '{model}'.",
                code="service_tier_not_priced",
                param="service_tier",
            )
        if price is None:
            raise InvalidRequest(
                f"The model '{model}' has no price configured, so the gateway will not serve it.",
                code="model_not_priced",
                param="model",
            )
        return price

    async def reserve(
        self,
        *,
        user_id: str,
        request_id: str,
        model: str,
        prompt_tokens: int,
        max_tokens: int | None,
        n: int = 1,
        tier: str | None = None,
        key_id: str | None = None,
        fixed_cost: Decimal = Decimal(0),
    ) -> Hold | None:
        """Hold the most this call can cost; the hold's max_tokens caps the call."""
        if not self.enabled:
            return None
        price = self.price_for(model, tier)
        if price.free:
            return Hold(user_id, request_id, model, price, None, Decimal(0), tier)
        # Without the model's output limit, hold for a typical long answer rather than the
        # whole balance (which would block the user's concurrent calls).
        model_cap = price.max_output_tokens or self._default_max_output
        try:
            r = await self.store.reserve(
                user_id=user_id,
                request_id=request_id,
                # fixed_cost: what the call costs whatever it generates (images, seconds, ...).
                prompt_cost=prompt_tokens * price.hold_input + fixed_cost,
                output_price=price.hold_output * n,
                # The store takes a 32-bit integer; anything larger is unaffordable anyway.
                max_tokens=None if max_tokens is None else min(max_tokens, 2**31 - 1),
                model_max_output=model_cap,
                ttl_seconds=self._ttl,
                model=model,
                key_id=key_id,
            )
        except StoreError as exc:
            self._metrics.billing(operation="reserve", outcome="store_error")
            raise StoreUnavailable("Billing is unavailable; the request was not run.") from exc
        self._metrics.billing(operation="reserve", outcome=r.status)
        if (refusal := key_refusal(r.status, model=model)) is not None:
            raise refusal
        if r.status == "ok":
            # Every call is capped at what was held for it (the client's limit, the balance,
            # the model's limit or the default budget): uncapped, it could generate more than
            # was paid for, and the charge would be cut short at the balance.
            return Hold(user_id, request_id, model, price, r.max_tokens, r.hold, tier)
        if r.status == "insufficient":
            available = max(r.available, Decimal(0)).normalize()
            if max_tokens is not None and r.max_tokens:
                raise InsufficientBalance(
                    f"Insufficient balance: max_tokens={max_tokens} costs more than your available "
                    f"balance of {available:f} {self.currency}; it can afford at most "
                    f"{r.max_tokens} completion tokens for model '{model}'.",
                    param="max_tokens",
                )
            raise InsufficientBalance(
                f"Insufficient balance: your available balance of {available:f} {self.currency} "
                f"does not cover this request to model '{model}'."
            )
        if r.status == "no_account":
            raise InsufficientBalance("No billing account exists for this user; add credit first.")
        raise GatewayError("Duplicate request id.", code="duplicate_request", status_code=409)

    async def settle(self, hold: Hold, usage: Usage, *, deployment_id: str | None = None) -> Charge:
        """Charge the actual cost once; if the store is down, journal it durably and retry.

        The charge runs in a task of its own: if the caller is cancelled meanwhile (a client
        that hung up while it was being written), the charge still completes.
        """
        return await self._shielded(self._settle(hold, usage, deployment_id))

    def settle_soon(self, hold: Hold, usage: Usage, *, deployment_id: str | None = None) -> None:
        """Settle in a task of its own, safe from the cancellation of a dropped stream."""
        self.detach(self._settle(hold, usage, deployment_id))

    async def _settle(self, hold: Hold, usage: Usage, deployment_id: str | None) -> Charge:
        price = self.prices.for_served(hold.model, deployment_id, hold.tier) or hold.price
        cost = usage_cost(price, usage)
        if price.free:
            return Charge(cost)
        counted = " (counted by the gateway)" if usage.counted else ""
        entry = PendingSettlement(
            user_id=hold.user_id,
            request_id=hold.request_id,
            cost=str(cost),
            model=hold.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            description=(
                f"{hold.model}: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens"
                f"{counted}"
            ),
            deployment=deployment_id,
            usage=usage.as_dict(),
        )
        if cost > hold.amount:
            self._metrics.billing(operation="settle", outcome="over_hold")
            log.warning(
                "charge above its hold",
                extra={"billing_request": hold.request_id, "cost": str(cost), "held": str(hold.amount)},
            )
        try:
            settled = await self._apply(entry)
        except StoreError:
            self.journal.write(entry)
            self._metrics.billing(operation="settle", outcome="journaled")
            log.warning("settlement journaled for replay", extra={"billing_request": hold.request_id})
            return Charge(cost)
        if settled.status != "charged":
            return Charge(settled.charged)
        if self.after_settle is not None:
            self.after_settle(hold.user_id, settled.balance)
        if settled.charged < cost:
            self._metrics.billing(operation="settle", outcome="uncollected")
            log.error(
                "charge capped by balance",
                extra={
                    "billing_request": hold.request_id,
                    "cost": str(cost),
                    "charged": str(settled.charged),
                },
            )
        return Charge(settled.charged, cost - settled.charged)

    def detach(self, work: Coroutine[Any, Any, object]) -> None:
        """Run work in a task of its own that shutdown waits for."""
        self._track(asyncio.create_task(work))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shielded(self, work: Coroutine[Any, Any, T]) -> T:
        """Await work that a cancellation of the caller must not cut short (money half-moved)."""
        task = asyncio.create_task(work)
        self._track(task)
        return await asyncio.shield(task)

    async def release(self, hold: Hold) -> None:
        """Give a failed call's hold back; if the store is down the sweeper will."""
        if hold.amount != 0:
            await self._shielded(self._release(hold))

    async def _release(self, hold: Hold) -> None:
        try:
            await self.store.release(user_id=hold.user_id, request_id=hold.request_id)
            self._metrics.billing(operation="release", outcome="ok")
        except StoreError:
            self._metrics.billing(operation="release", outcome="store_error")
            log.warning("release failed; the hold expires with its TTL")

    def release_soon(self, hold: Hold) -> None:
        if hold.amount != 0:
            self.detach(self._release(hold))

    async def _apply(self, entry: PendingSettlement) -> Settlement:
        result = await self.store.settle(
            user_id=entry.user_id,
            request_id=entry.request_id,
            cost=entry.amount,
            model=entry.model,
            prompt_tokens=entry.prompt_tokens,
            completion_tokens=entry.completion_tokens,
            description=entry.description,
            deployment=entry.deployment,
            usage=entry.usage,
        )
        self._metrics.billing(operation="settle", outcome=result.status)
        return result

    async def replay_journal(self) -> int:
        """Apply journaled settlements; each file is removed once the store has it."""
        done = 0
        for path, entry in self.journal.pending():
            try:
                await self._apply(entry)
            except StoreError:
                break  # still down; try again next round
            except (UserNotFound, BalanceConflict):
                # The store answered but will never take this one: keep it for an operator
                # rather than blocking every settlement queued behind it.
                log.error(
                    "journaled settlement refused by the store", extra={"billing_request": entry.request_id}
                )
                self.journal.set_aside(path)
                continue
            self.journal.remove(path)
            done += 1
        if done:
            log.info("replayed %d journaled settlements", done)
        return done

    async def sweep_expired(self) -> int:
        """Release holds whose calls never finished (a crashed worker)."""
        try:
            count = await self.store.sweep_expired()
        except StoreError:
            return 0
        if count:
            log.warning("released %d expired reservations", count)
        return count

    @staticmethod
    async def _every(interval_seconds: float, job: Callable[[], Awaitable[int]]) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await job()
            except Exception:
                log.exception("billing background job failed")
