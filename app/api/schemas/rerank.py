"""POST /v1/rerank: the Cohere-compatible body, each parameter with its type."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.api.schemas import params as p
from app.billing.units import rerank_units
from app.calls.request import CallRequest
from app.errors import InvalidRequest

MAX_DOCUMENTS = 10_000

ALLOWED: dict[str, p.Check] = {
    "model": p.string(256),
    "query": p.string(100_000),
    "documents": p.array,
    "top_n": p.integer(1, MAX_DOCUMENTS),
    "return_documents": p.boolean,
    "rank_fields": p.array,
    "max_chunks_per_doc": p.integer(1, 10_000),
    "max_tokens_per_doc": p.integer(1, 2**31 - 1),
}


def parse_rerank(body: dict[str, Any], *, extra: Iterable[str] = ()) -> CallRequest:
    """Held for the search units of one query over the documents (one per hundred)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    p.check_params(body, ALLOWED, extra)
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise InvalidRequest("'query' is required and must be a non-empty string.", param="query")
    documents = body.get("documents")
    if (
        not isinstance(documents, list)
        or not 0 < len(documents) <= MAX_DOCUMENTS
        or not all(isinstance(d, str | dict) for d in documents)
    ):
        raise InvalidRequest(
            f"'documents' must be an array of 1 to {MAX_DOCUMENTS} strings or objects.", param="documents"
        )
    return CallRequest(
        endpoint="rerank",
        model=model,
        params=dict(body),
        inputs=[query],
        units=rerank_units(len(documents)),
        max_output_tokens=0,  # nothing is generated
    )
