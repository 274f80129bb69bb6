"""A local stand-in for Stripe's API and its webhook deliveries, for the payment tests.

Speaks Stripe's HTTP protocol as the official library uses it: form-encoded request bodies with
bracketed nested keys (`metadata[user_id]=...`, `line_items[0][quantity]=1`), a bearer secret
key, JSON objects back, and Stripe's error shape. Events are built from the objects it holds and
signed with Stripe's scheme: `Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">`.
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

    async def _unknown(self, request: web.Request) -> web.Response:
        return self._error(404, f"Unrecognized request URL ({request.method}: {request.path}).")

    # -- what Stripe would send to the webhook -------------------------------------------------

    def pay(self, session_id: str) -> dict[str, Any]:
        """The customer pays: the session completes with a payment intent and a charge."""
        session = self.sessions[session_id]
        intent, charge = _id("pi"), _id("ch")
        session.update(status="complete", payment_status="paid", payment_intent=intent)
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
