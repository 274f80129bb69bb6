"""Anthropic Messages API: ``POST /v1/messages`` (JSON and SSE) and
``POST /v1/messages/count_tokens``; Anthropic's error shape."""

from __future__ import annotations

from .common import Streamer, abort_now, cap_tokens, event

_ERR = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 529: "overloaded_error",
}
_MSG = {
    "invalid_request_error": "Invalid request (fake provider).",
    "authentication_error": "invalid x-api-key",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found (fake provider).",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit "
                        "(fake provider).",
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
}


def error_type(status: int) -> str:
    return _ERR.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def _block_words(content, count_words) -> int:
    if isinstance(content, str) or content is None:
        return count_words(content)
    total = 0
    if isinstance(content, list):
        for b in content:
            if not isinstance(b, dict):
                continue
            if isinstance(b.get("text"), str):
                total += count_words(b["text"])
            elif b.get("type") == "tool_result":
                total += _block_words(b.get("content"), count_words)
    return total


def count_input_tokens(system, messages, count_words) -> int:
    """Chat's rule: 1 + words per message, plus 1 + words for a non-empty
    ``system`` (string or text blocks); ``tool_result`` blocks count their
    content's words, other non-text blocks 0."""
    total = 0
    if system:
        total += 1 + _block_words(system, count_words)
    for m in messages if isinstance(messages, list) else ():
        total += 1
        if isinstance(m, dict):
            total += _block_words(m.get("content"), count_words)
    return total


def _tool_name(tools, tool_choice):
    if not isinstance(tools, list) or not tools:
        return None
    tc = tool_choice if isinstance(tool_choice, dict) else {}
    if tc.get("type") == "none":
        return None
    if tc.get("type") == "tool" and tc.get("name"):
        return tc["name"]
    t0 = tools[0] if isinstance(tools[0], dict) else {}
    return t0.get("name") or "tool"


def register(app, ctx):
    web = ctx.web

    def aerr(status, d=None, message=None):
        t = error_type(status)
        num = ctx.next_id()
        headers = {"request-id": f"req_fake{num:x}"}
        if d is not None and d.get("retryafter") is not None:
            headers["retry-after"] = str(d["retryafter"])
        body = {"type": "error", "error": {"type": t, "message": message or _MSG[t]},
                "request_id": f"req_fake{num:x}"}
        return web.Response(status=status, body=ctx.dumps_for(d)(body),
                            content_type="application/json", headers=headers)

    async def parse(request):
        body, ok = await ctx.read_json(request)
        ctx.record(request, body)
        if not ok or not isinstance(body, dict):
            return None, aerr(400, message="There was an error parsing the body of your request.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return None, aerr(400, message="model: Field required")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return None, aerr(400, message="messages: Field required")
        return body, None

    async def count_tokens(request):
        body, e = await parse(request)
        if e is not None:
            return e
        d = ctx.parse_model(body["model"])
        r = await ctx.common_gate(request, body, d, False, errf=aerr)
        if r is not None:
            return r
        n = count_input_tokens(body.get("system"), body["messages"], ctx.count_words)
        return web.Response(body=ctx.dumps_for(d)({"input_tokens": n}),
                            content_type="application/json")

    async def messages(request):
        body, e = await parse(request)
        if e is not None:
            return e
        model = body["model"]
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return aerr(400, message="max_tokens: Field required")
        d = ctx.parse_model(model)
        stream = bool(body.get("stream"))
        r = await ctx.common_gate(request, body, d, stream, errf=aerr)
        if r is not None:
            return r
        input_tokens = count_input_tokens(body.get("system"), body["messages"], ctx.count_words)
        if d["ctx"] is not None and input_tokens > d["ctx"]:
            return aerr(400, d, message=f"prompt is too long: {input_tokens} tokens > {d['ctx']} maximum")
        if not stream and d["drop"] is not None:
            abort_now(request)
        n_tok = d["chunks"]
        g = n_tok if d["ignoremax"] else cap_tokens(n_tok, max_tokens)
        tool_name = _tool_name(body.get("tools"), body.get("tool_choice"))
        num = ctx.next_id()
        mid = f"msg_fake{num:016x}"
        dumps = ctx.dumps_for(d)
        cw = max(d["cachewrite"] or 0, 0)
        cr = max(d["cacheread"] or 0, 0)

        def usage(out):
            return {"input_tokens": input_tokens, "cache_creation_input_tokens": cw,
                    "cache_read_input_tokens": cr,
                    "cache_creation": {"ephemeral_5m_input_tokens": cw,
                                       "ephemeral_1h_input_tokens": 0},
                    "output_tokens": out, "service_tier": "standard"}

        if tool_name is not None:
            stop = "tool_use"
            if d["toolstream"] and g:
                frags, args = ctx.pieces(g, True)
            else:
                frags, args = ("{}",), "{}"
            block = {"type": "tool_use", "id": f"toolu_fake{num:x}", "name": tool_name,
                     "input": ctx.loads(args)}
        else:
            stop = "max_tokens" if g < n_tok else "end_turn"
            frags, text = ctx.pieces(g, False)
            block = {"type": "text", "text": text}
        headers = {"request-id": f"req_fake{num:x}"}
        msg = {"id": mid, "type": "message", "role": "assistant", "model": model,
               "content": [block], "stop_reason": stop, "stop_sequence": None}
        if not d["nousage"]:
            msg["usage"] = usage(g)
        if not stream:
            return web.Response(body=dumps(msg), content_type="application/json",
                                headers=headers)

        s = await Streamer(request, d, web, headers).prepare()
        start = {**msg, "content": [], "stop_reason": None, "stop_sequence": None}
        if not d["nousage"]:
            start["usage"] = usage(1)
        await s.write(event(dumps, "message_start", {"type": "message_start", "message": start}))
        if tool_name is not None:
            cb = {**block, "input": {}}
        else:
            cb = {"type": "text", "text": ""}
        await s.write(event(dumps, "content_block_start",
                            {"type": "content_block_start", "index": 0, "content_block": cb}))
        await s.write(event(dumps, "ping", {"type": "ping"}))
        for f in frags:
            delta = ({"type": "input_json_delta", "partial_json": f} if tool_name is not None
                     else {"type": "text_delta", "text": f})
            await s.content(event(dumps, "content_block_delta",
                                  {"type": "content_block_delta", "index": 0, "delta": delta}))
        s.before_terminal()
        await s.write(event(dumps, "content_block_stop", {"type": "content_block_stop", "index": 0}))
        md = {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}}
        if not d["nousage"]:
            md["usage"] = {"output_tokens": g}
        await s.write(event(dumps, "message_delta", md))
        await s.write(event(dumps, "message_stop", {"type": "message_stop"}))
        return await s.finish()

    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
