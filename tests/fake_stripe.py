"""A local stand-in for Stripe's API and its webhook deliveries, for the payment tests.

Speaks Stripe's HTTP protocol as the official library uses it: form-encoded request bodies with
bracketed nested keys (`metadata[user_id]=...`, `line_items[0][quantity]=1`), a bearer secret
key, JSON objects back, and Stripe's error shape. Events are built from the objects it holds and
signed with Stripe's scheme: `Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">`.

Off-session PaymentIntents (`POST /v1/payment_intents` with `confirm=true`) charge the card a paid
session saved on its customer. How a card answers is set per payment method with `set_card`:
"ok" (succeeded), "decline" (402 card_error naming the failed intent, as Stripe answers) or
"processing". `Idempotency-Key` replays the first answer, as Stripe does. With `send_webhooks_to`,
each intent's `payment_intent.succeeded` / `payment_intent.payment_failed` event is also delivered,
signed, to the gateway: before the API answers (`webhook_timing="before"`) or just after ("after").
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import re
import secrets
import socket
import threading
import time
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

_KEY_PART = re.compile(r"\[([^\]]*)\]")


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding back into nested dicts and lists."""
    out: dict[str, Any] = {}
    for raw_key, value in parse_qsl(body, keep_blank_values=True):
        head = raw_key.split("[", 1)[0]
        parts = [head, *_KEY_PART.findall(raw_key[len(head) :])]
        node: Any = out
        for part, nxt in itertools.pairwise(parts):
            child_is_list = nxt.isdigit()
            if isinstance(node, list):
                index = int(part)
                while len(node) <= index:
                    node.append([] if child_is_list else {})
                node = node[index]
            else:
                node = node.setdefault(part, [] if child_is_list else {})
        last = parts[-1]
        if isinstance(node, list):
            index = int(last)
            while len(node) <= index:
                node.append(None)
            node[index] = value
        else:
            node[last] = value
    return out


def sign(payload: bytes, secret: str, *, timestamp: int | None = None) -> str:
    """A Stripe-Signature header for `payload`."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


class FakeStripe:
    """Stripe's API on 127.0.0.1, served from a thread; holds sessions, intents and charges."""

    def __init__(self, secret_key: str) -> None:
        self.secret_key = secret_key
        self.requests: list[dict[str, Any]] = []
        self.sessions: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.intents: dict[str, dict[str, Any]] = {}
        self.customers: dict[str, list[str]] = {}  # customer -> its saved payment methods
        self.cards: dict[str, str] = {}  # payment method -> ok | decline | processing
        self.events: list[dict[str, Any]] = []  # every payment_intent event, for redelivery
        self.webhook_url: str | None = None
        self.webhook_secret = ""
        self.webhook_timing = "after"
        self._idempotent: dict[str, tuple[int, dict[str, Any]]] = {}
        self._deliveries: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeStripe:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
        self._loop = self._thread = None

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/checkout/sessions", self._create_session)
        app.router.add_get("/v1/checkout/sessions/{id}", self._get_session)
        app.router.add_post("/v1/payment_intents", self._create_intent)
        app.router.add_get("/v1/payment_intents/{id}", self._get_intent)
        app.router.add_route("*", "/{path:.*}", self._unknown)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    # -- the API ------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, message: str, *, kind: str = "invalid_request_error") -> web.Response:
        return web.json_response({"error": {"type": kind, "message": message}}, status=status)

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.secret_key}"

    async def _create_session(self, request: web.Request) -> web.Response:
        text = await request.text()
        self.requests.append(
            {
                "method": "POST",
                "path": request.path,
                "content_type": request.content_type,
                "headers": dict(request.headers),
                "form": decode_form(text),
            }
        )
        if not self._authorised(request):
            return self._error(401, "Invalid API Key provided")
        form = decode_form(text)
        try:
            items = form["line_items"]
            total = sum(int(i["price_data"]["unit_amount"]) * int(i.get("quantity", 1)) for i in items)
            currency = items[0]["price_data"]["currency"]
        except (KeyError, ValueError, IndexError, TypeError):
            return self._error(400, "Missing required param: line_items.")
        if form.get("mode") != "payment" or not form.get("success_url"):
            return self._error(400, "Missing required param: mode or success_url.")
        sid = _id("cs")
        session = {
            "id": sid,
            "object": "checkout.session",
            "mode": "payment",
            "status": "open",
            "payment_status": "unpaid",
            "amount_total": total,
            "currency": currency,
            "client_reference_id": form.get("client_reference_id"),
            "customer": form.get("customer"),
            "customer_creation": form.get("customer_creation"),
            "setup_future_usage": (form.get("payment_intent_data") or {}).get("setup_future_usage"),
            "metadata": form.get("metadata", {}),
            "payment_intent": None,
            "success_url": form["success_url"],
            "cancel_url": form.get("cancel_url"),
            "url": f"https://checkout.stripe.com/c/pay/{sid}",
            "livemode": False,
            "created": int(time.time()),
        }
        self.sessions[sid] = session
        return web.json_response(session)

    async def _get_session(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "Invalid API Key provided")
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return self._error(404, "No such checkout.session")
        return web.json_response(session)

    async def _create_intent(self, request: web.Request) -> web.Response:
        text = await request.text()
        form = decode_form(text)
        self.requests.append(
            {"method": "POST", "path": request.path, "headers": dict(request.headers), "form": form}
        )
        if not self._authorised(request):
            return self._error(401, "Invalid API Key provided")
        key = request.headers.get("Idempotency-Key")
        if key and key in self._idempotent:
            status, replay = self._idempotent[key]
            return web.json_response(replay, status=status, headers={"Idempotent-Replayed": "true"})
        customer, method = form.get("customer"), form.get("payment_method")
        if method not in self.customers.get(customer or "", []):
            return self._error(400, f"No such PaymentMethod: '{method}' on customer '{customer}'")
        if form.get("confirm") != "true" or form.get("off_session") != "true":
            return self._error(400, "This fake only confirms off-session payments.")
        behaviour = self.cards.get(method, "ok")
        pid = _id("pi")
        intent: dict[str, Any] = {
            "id": pid,
            "object": "payment_intent",
            "amount": int(form["amount"]),
            "amount_received": 0,
            "currency": form["currency"],
            "customer": customer,
            "payment_method": method,
            "metadata": form.get("metadata", {}),
            "last_payment_error": None,
            "status": "processing",
        }
        status, answer = 200, intent
        if behaviour == "ok":
            intent.update(status="succeeded", amount_received=intent["amount"])
            event = self.event("payment_intent.succeeded", intent)
        elif behaviour == "decline":
            error = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
                "payment_method": {"id": method},
            }
            intent.update(status="requires_payment_method", last_payment_error=error, payment_method=None)
            event = self.event("payment_intent.payment_failed", intent)
            status, answer = 402, {"error": {**error, "payment_intent": intent}}
        else:
            event = None
        self.intents[pid] = intent
        answer = json.loads(json.dumps(answer))
        if key:
            self._idempotent[key] = (status, answer)
        if event is not None:
            self.events.append(event)
            if self.webhook_url and self.webhook_timing == "before":
                await self._send(event)
            elif self.webhook_url:
                task = asyncio.get_running_loop().create_task(self._send(event, delay=0.05))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)
        return web.json_response(answer, status=status)

    async def _send(self, event: dict[str, Any], *, delay: float = 0.0) -> None:
        import aiohttp

        await asyncio.sleep(delay)
        payload = json.dumps(event).encode()
        assert self.webhook_url is not None
        async with aiohttp.ClientSession() as http:
            headers = {
                "Stripe-Signature": sign(payload, self.webhook_secret),
                "Content-Type": "application/json",
            }
            async with http.post(self.webhook_url, data=payload, headers=headers) as r:
                await r.read()

    async def _get_intent(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "Invalid API Key provided")
        intent = self.intents.get(request.match_info["id"])
        if intent is None:
            return self._error(404, "No such payment_intent")
        return web.json_response(intent)

    def set_card(self, payment_method: str, behaviour: str) -> None:
        """How the saved card answers from now on: ok, decline or processing."""
        self.cards[payment_method] = behaviour

    def deliveries_pending(self) -> int:
        """Webhook deliveries scheduled after an answer and not finished yet."""
        return len(self._deliveries)

    def send_webhooks_to(self, url: str, secret: str) -> None:
        self.webhook_url, self.webhook_secret = url, secret

    def intent_requests(self, customer: str) -> list[dict[str, Any]]:
        """The payment intents the gateway asked for on this customer (replays included)."""
        return [
            r
            for r in self.requests
            if r["path"] == "/v1/payment_intents" and r["form"].get("customer") == customer
        ]

    async def _unknown(self, request: web.Request) -> web.Response:
        return self._error(404, f"Unrecognized request URL ({request.method}: {request.path}).")

    # -- what Stripe would send to the webhook -------------------------------------------------

    def pay(self, session_id: str, card: str = "ok") -> dict[str, Any]:
        """The customer pays: the session completes with a payment intent and a charge.

        With `setup_future_usage` the card is saved on the session's customer (created now when
        the session asked for `customer_creation=always`); `card` is how it answers later.
        """
        session = self.sessions[session_id]
        intent, charge = _id("pi"), _id("ch")
        session.update(status="complete", payment_status="paid", payment_intent=intent)
        method = _id("pm")
        if session["setup_future_usage"] and (
            session["customer"] or session["customer_creation"] == "always"
        ):
            session["customer"] = session["customer"] or _id("cus")
            self.customers.setdefault(session["customer"], []).append(method)
            self.cards[method] = card
        self.intents[intent] = {
            "id": intent,
            "object": "payment_intent",
            "amount": session["amount_total"],
            "amount_received": session["amount_total"],
            "currency": session["currency"],
            "customer": session["customer"],
            "payment_method": method,
            "status": "succeeded",
            "metadata": {"user_id": session["metadata"].get("user_id", "")},
        }
        self.charges[charge] = {
            "id": charge,
            "object": "charge",
            "amount": session["amount_total"],
            "amount_refunded": 0,
            "currency": session["currency"],
            "payment_intent": intent,
            "refunded": False,
        }
        return self.event("checkout.session.completed", session)

    def refund(self, session_id: str, cents: int) -> dict[str, Any]:
        """Refund part or all of the session's charge: `charge.refunded` with the running total."""
        charge = self._charge_of(session_id)
        charge["amount_refunded"] = min(charge["amount"], charge["amount_refunded"] + cents)
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        return self.event("charge.refunded", charge)

    def dispute(self, session_id: str, cents: int) -> dict[str, Any]:
        charge = self._charge_of(session_id)
        dispute = {
            "id": _id("dp"),
            "object": "dispute",
            "amount": cents,
            "charge": charge["id"],
            "currency": charge["currency"],
            "payment_intent": charge["payment_intent"],
            "status": "needs_response",
        }
        return self.event("charge.dispute.created", dispute)

    def _charge_of(self, session_id: str) -> dict[str, Any]:
        intent = self.sessions[session_id]["payment_intent"]
        (charge,) = [c for c in self.charges.values() if c["payment_intent"] == intent]
        return charge

    @staticmethod
    def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": _id("evt"),
            "object": "event",
            "api_version": "2026-11-17.clover",
            "created": int(time.time()),
            "livemode": False,
            "pending_webhooks": 1,
            "type": kind,
            "data": {"object": json.loads(json.dumps(obj))},
        }
