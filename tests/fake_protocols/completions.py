"""Legacy OpenAI completions: ``POST /v1/completions`` (JSON and SSE)."""

from __future__ import annotations

import time

from .common import Streamer, abort_now, cap_tokens


def split_prompts(prompt):
    """-> list of (prompt_tokens) per prompt, or None if invalid.
    string -> words; list of strings -> one prompt each; token array (list of
    ints) -> its length; list of token arrays -> one prompt each."""
    def one(p):
        if isinstance(p, str):
            return len(p.split())
        if isinstance(p, list) and all(isinstance(x, int) for x in p):
            return len(p)
        return None
    if isinstance(prompt, str):
        return [one(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(x, int) for x in prompt):
            return [len(prompt)]
        out = [one(p) for p in prompt]
        return None if any(x is None for x in out) else out
    return None


def register(app, ctx):
    web = ctx.web

    async def completions(request):
        body, ok = await ctx.read_json(request)
        ctx.record(request, body)
        if not ok or not isinstance(body, dict):
            return ctx.err(400, message="We could not parse the JSON body of your request.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return ctx.err(400, message="you must provide a model parameter", param="model")
        counts = split_prompts(body.get("prompt"))
        if counts is None:
            return ctx.err(400, message="'$.prompt' is invalid.", param="prompt")
        d = ctx.parse_model(model)
        stream = bool(body.get("stream"))
        r = await ctx.common_gate(request, body, d, stream)
        if r is not None:
            return r
        prompt_tokens = sum(counts)
        if d["ctx"] is not None and max(counts) > d["ctx"]:
            return ctx.err(400, d, code="context_length_exceeded", param="prompt", message=(
                f"This model's maximum context length is {d['ctx']} tokens, however you requested "
                f"{max(counts)} tokens. Please reduce your prompt."))
        if not stream and d["drop"] is not None:
            abort_now(request)
        n = body.get("n") or 1
        if not isinstance(n, int) or n < 1:
            return ctx.err(400, message="Invalid 'n': must be a positive integer.", param="n")
        n_tok = d["chunks"]
        g = cap_tokens(n_tok, body.get("max_tokens", 16))
        finish = "length" if g < n_tok else "stop"
        pieces, text = ctx.pieces(g, False)
        n_choices = n * len(counts)
        completion_tokens = g * n_choices
        usage = None if d["nousage"] else {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
        dumps = ctx.dumps_for(d)
        num = ctx.next_id()
        base = {"id": f"cmpl-fake{num:016x}", "object": "text_completion",
                "created": int(time.time()), "model": model,
                "system_fingerprint": ctx.system_fingerprint, "choices": None}
        if not stream:
            base["choices"] = [{"text": text, "index": i, "logprobs": None,
                                "finish_reason": finish} for i in range(n_choices)]
            if usage is not None:
                base["usage"] = usage
            return web.Response(body=dumps(base), content_type="application/json")
        so = body.get("stream_options")
        include_usage = isinstance(so, dict) and so.get("include_usage") is True \
            and usage is not None
        if include_usage:
            base["usage"] = None
        s = await Streamer(request, d, web).prepare()

        def chunk(choices):
            base["choices"] = choices
            return b"data: " + dumps(base) + b"\n\n"

        for p in pieces:
            for i in range(n_choices):
                await s.content(chunk([{"text": p, "index": i, "logprobs": None,
                                        "finish_reason": None}]))
        s.before_terminal()
        for i in range(n_choices):
            await s.write(chunk([{"text": "", "index": i, "logprobs": None,
                                  "finish_reason": finish}]))
        if include_usage:
            base["usage"] = usage
            await s.write(chunk([]))
        await s.write(b"data: [DONE]\n\n")
        return await s.finish()

    app.router.add_post("/v1/completions", completions)
