"""Cohere rerank: ``POST /v1/rerank`` (Cohere v1 shape) and ``POST /v2/rerank``
(Cohere v2 shape).  LiteLLM's ``cohere/<model>`` provider with
``api_base="http://127.0.0.1:PORT"`` posts to ``/v2/rerank`` (to ``/v1/rerank``
when the api_base ends with ``/v1/rerank`` or v1-only params are used)."""

from __future__ import annotations

import math
import uuid

from .common import abort_now


def _doc_text(doc) -> str:
    if isinstance(doc, str):
        return doc
    if isinstance(doc, dict):
        if isinstance(doc.get("text"), str):
            return doc["text"]
        return " ".join(str(v) for v in doc.values())
    return str(doc)


def relevance(query: str, text: str) -> float:
    """Share of distinct lower-cased query words present in the document, rounded
    to 6 places, minus 1e-4 per document word beyond the query's (ties: fewer
    words first), clamped to [0, 1]."""
    q = set(query.lower().split())
    words = text.lower().split()
    hit = len(q & set(words)) / len(q) if q else 0.0
    score = hit - 1e-4 * max(len(words) - len(q), 0)
    return round(min(max(score, 0.0), 1.0), 6)


def register(app, ctx):
    web = ctx.web

    def handler(version):
        async def rerank(request):
            body, ok = await ctx.read_json(request)
            ctx.record(request, body)
            if not ok or not isinstance(body, dict):
                return ctx.err(400, message="invalid request: could not parse JSON body")
            model = body.get("model")
            query = body.get("query")
            docs = body.get("documents")
            if not isinstance(model, str) or not model:
                return ctx.err(400, message="invalid request: model must be specified")
            if not isinstance(query, str) or not query:
                return ctx.err(400, message="invalid request: query must not be empty")
            if not isinstance(docs, list) or not docs:
                return ctx.err(400, message="invalid request: list of documents must not "
                                            "be empty")
            d = ctx.parse_model(model)
            r = await ctx.common_gate(request, body, d, False)
            if r is not None:
                return r
            if d["drop"] is not None:
                abort_now(request)
            texts = [_doc_text(x) for x in docs]
            scored = sorted(((relevance(query, t), i) for i, t in enumerate(texts)),
                            key=lambda x: (-x[0], x[1]))
            top_n = body.get("top_n")
            if isinstance(top_n, int) and top_n > 0:
                scored = scored[:top_n]
            return_docs = body.get("return_documents") is True
            results = []
            for score, i in scored:
                res = {"index": i, "relevance_score": score}
                if return_docs:
                    res["document"] = {"text": texts[i]}
                results.append(res)
            meta = {"api_version": {"version": str(version)}}
            if not d["nousage"]:
                meta["billed_units"] = {"search_units": max(1, math.ceil(len(docs) / 100))}
            obj = {"id": str(uuid.UUID(int=ctx.next_id())), "results": results, "meta": meta}
            return web.Response(body=ctx.dumps_for(d)(obj), content_type="application/json")
        return rerank

    app.router.add_post("/v1/rerank", handler(1))
    app.router.add_post("/v2/rerank", handler(2))
