"""OpenAI moderations: ``POST /v1/moderations``."""

from __future__ import annotations

CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
              "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions",
              "sexual", "sexual/minors", "violence", "violence/graphic")


def _texts(inp):
    """-> list of (text, input_types) per result, or None if invalid."""
    if isinstance(inp, str):
        return [(inp, ["text"])]
    if isinstance(inp, list) and inp:
        if all(isinstance(x, str) for x in inp):
            return [(x, ["text"]) for x in inp]
        if all(isinstance(x, dict) for x in inp):  # multimodal parts -> one result
            text = " ".join(x.get("text", "") for x in inp if x.get("type") == "text")
            types = ["text"] + (["image"] if any(x.get("type") == "image_url" for x in inp)
                                else [])
            return [(text, types)]
    return None


def moderation_result(text: str, types) -> dict:
    """A category is flagged iff its name is a whitespace-separated word of the
    (lower-cased) text, e.g. "violence" or "self-harm/intent"."""
    words = set(text.lower().split())
    flagged = {c: c in words for c in CATEGORIES}
    return {"flagged": any(flagged.values()), "categories": flagged,
            "category_scores": {c: (0.9 if f else 0.0001) for c, f in flagged.items()},
            "category_applied_input_types": {c: list(types) for c in CATEGORIES}}


def register(app, ctx):
    web = ctx.web

    async def moderations(request):
        body, ok = await ctx.read_json(request)
        ctx.record(request, body)
        if not ok or not isinstance(body, dict):
            return ctx.err(400, message="We could not parse the JSON body of your request.")
        items = _texts(body.get("input"))
        if items is None:
            return ctx.err(400, message="Invalid value for 'input'.", param="input")
        model = body.get("model") or "omni-moderation-latest"
        d = ctx.parse_model(model)
        r = await ctx.common_gate(request, body, d, False)
        if r is not None:
            return r
        if d["drop"] is not None:
            from .common import abort_now
            abort_now(request)
        obj = {"id": f"modr-fake{ctx.next_id():016x}", "model": model,
               "results": [moderation_result(t, ty) for t, ty in items]}
        return web.Response(body=ctx.dumps_for(d)(obj), content_type="application/json")

    app.router.add_post("/v1/moderations", moderations)
