"""OpenAI Responses API: ``POST /v1/responses`` (JSON and named-event SSE)."""

from __future__ import annotations

import time

from .common import Streamer, abort_now, cap_tokens, event


def count_input_tokens(inp, instructions, count_words) -> int:
    """Chat's rule: 1 + words per item (a string ``input`` is one item;
    ``instructions`` is one more).  An item's words come from its ``content``
    (string or parts with ``text``) or, for ``function_call_output``, ``output``."""
    total = 0
    if isinstance(instructions, str) and instructions:
        total += 1 + count_words(instructions)
    if isinstance(inp, str):
        return total + 1 + count_words(inp)
    if isinstance(inp, list):
        for item in inp:
            total += 1
            if isinstance(item, dict):
                c = item.get("content")
                if c is None:
                    c = item.get("output")
                total += count_words(c)
            elif isinstance(item, str):
                total += count_words(item)
    return total


def _function_tool(tools, tool_choice):
    """Name of the function to call, or None (no function tools / tool_choice none)."""
    if not isinstance(tools, list) or tool_choice == "none":
        return None
    fns = [t for t in tools if isinstance(t, dict) and t.get("type") == "function"]
    if not fns:
        return None
    if isinstance(tool_choice, dict) and tool_choice.get("name"):
        return tool_choice["name"]
    return fns[0].get("name") or "tool"


def register(app, ctx):
    web = ctx.web

    async def responses(request):
        body, ok = await ctx.read_json(request)
        ctx.record(request, body)
        if not ok:
            return ctx.err(400, message="We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return ctx.err(400, message="Invalid request body: expected a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return ctx.err(400, message="Missing required parameter: 'model'.", param="model")
        inp = body.get("input")
        if inp is None and not body.get("previous_response_id"):
            return ctx.err(400, message="Missing required parameter: 'input'.", param="input")
        if inp is not None and not isinstance(inp, (str, list)):
            return ctx.err(400, message="Invalid type for 'input'.", param="input")
        d = ctx.parse_model(model)
        stream = bool(body.get("stream"))
        r = await ctx.common_gate(request, body, d, stream)
        if r is not None:
            return r
        instructions = body.get("instructions")
        input_tokens = count_input_tokens(inp, instructions, ctx.count_words)
        if d["ctx"] is not None and input_tokens > d["ctx"]:
            return ctx.err(400, d, code="context_length_exceeded", param="input", message=(
                "Your input exceeds the context window of this model. Please adjust your "
                "input and try again."))
        if not stream and d["drop"] is not None:
            abort_now(request)

        n_tok = d["chunks"]
        cap = body.get("max_output_tokens")
        g = n_tok if d["ignoremax"] else cap_tokens(n_tok, cap)
        reasoning = max(d["reasoning"] or 0, 0)
        incomplete = g < n_tok
        tool_name = _function_tool(body.get("tools"), body.get("tool_choice"))
        fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
        json_mode = isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object")
        pieces, text = ctx.pieces(g, json_mode)
        if tool_name is not None:
            arg_pieces, args = ctx.pieces(g, True) if d["toolstream"] and g else (("{}",), "{}")
        output_tokens = g + reasoning
        usage = None if d["nousage"] else {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": min(max(d["cached"] or 0, 0), input_tokens)},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input_tokens + output_tokens}
        dumps = ctx.dumps_for(d)
        num = ctx.next_id()
        rid = f"resp_fake{num:016x}"
        status = "incomplete" if incomplete else "completed"
        tools = body.get("tools") if isinstance(body.get("tools"), list) else []
        tc = body.get("tool_choice", "auto")

        def response_obj(st, output, usage_):
            return {
                "id": rid, "object": "response", "created_at": created, "status": st,
                "background": False, "error": None,
                "incomplete_details": ({"reason": "max_output_tokens"}
                                       if st == "incomplete" else None),
                "instructions": instructions, "max_output_tokens": cap,
                "max_tool_calls": None, "model": model, "output": output,
                "parallel_tool_calls": body.get("parallel_tool_calls", True),
                "previous_response_id": body.get("previous_response_id"),
                "reasoning": {"effort": None, "summary": None},
                "service_tier": "default", "store": body.get("store", True),
                "temperature": body.get("temperature", 1.0),
                "text": {"format": fmt if isinstance(fmt, dict) else {"type": "text"},
                         "verbosity": "medium"},
                "tool_choice": tc, "tools": tools, "top_logprobs": 0,
                "top_p": body.get("top_p", 1.0), "truncation": "disabled",
                "usage": usage_, "user": None, "metadata": body.get("metadata") or {}}

        created = int(time.time())
        rs_item = {"id": f"rs_fake{num:x}", "type": "reasoning", "summary": []}
        if tool_name is not None:
            main_item = {"id": f"fc_fake{num:x}", "type": "function_call",
                         "status": "completed", "arguments": args,
                         "call_id": f"call_fake{num:x}", "name": tool_name}
        else:
            part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
            main_item = {"id": f"msg_fake{num:x}", "type": "message",
                         "status": "incomplete" if incomplete else "completed",
                         "content": [part], "role": "assistant"}
        output = ([rs_item] if reasoning else []) + [main_item]

        if not stream:
            return web.Response(body=dumps(response_obj(status, output, usage)),
                                content_type="application/json",
                                headers={"x-request-id": f"req_fake{num:x}"})

        s = await Streamer(request, d, web, {"x-request-id": f"req_fake{num:x}"}).prepare()
        seqn = 0

        def ev(type_, **fields):
            nonlocal seqn
            obj = {"type": type_, "sequence_number": seqn, **fields}
            seqn += 1
            return event(dumps, type_, obj)

        await s.write(ev("response.created", response=response_obj("in_progress", [], None)))
        await s.write(ev("response.in_progress", response=response_obj("in_progress", [], None)))
        idx = 0
        if reasoning:
            await s.write(ev("response.output_item.added", output_index=0, item=rs_item))
            await s.write(ev("response.output_item.done", output_index=0, item=rs_item))
            idx = 1
        iid = main_item["id"]
        if tool_name is not None:
            await s.write(ev("response.output_item.added", output_index=idx,
                             item={**main_item, "status": "in_progress", "arguments": ""}))
            for frag in arg_pieces:
                await s.content(ev("response.function_call_arguments.delta", item_id=iid,
                                   output_index=idx, delta=frag))
            s.before_terminal()
            await s.write(ev("response.function_call_arguments.done", item_id=iid,
                             output_index=idx, name=tool_name, arguments=args))
        else:
            await s.write(ev("response.output_item.added", output_index=idx, item={
                **main_item, "status": "in_progress", "content": []}))
            empty = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
            await s.write(ev("response.content_part.added", item_id=iid, output_index=idx,
                             content_index=0, part=empty))
            for p in pieces:
                await s.content(ev("response.output_text.delta", item_id=iid, output_index=idx,
                                   content_index=0, delta=p, logprobs=[]))
            s.before_terminal()
            await s.write(ev("response.output_text.done", item_id=iid, output_index=idx,
                             content_index=0, text=text, logprobs=[]))
            await s.write(ev("response.content_part.done", item_id=iid, output_index=idx,
                             content_index=0, part=main_item["content"][0]))
        await s.write(ev("response.output_item.done", output_index=idx, item=main_item))
        terminal = "response.incomplete" if incomplete else "response.completed"
        await s.write(ev(terminal, response=response_obj(status, output, usage)))
        return await s.finish()

    app.router.add_post("/v1/responses", responses)
