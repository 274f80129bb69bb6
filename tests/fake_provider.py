"""Fast local fake LLM provider (OpenAI, Anthropic, Cohere rerank) for tests and benchmarks.

Only LLM providers are faked in this project, so this server speaks their real
wire formats (JSON bodies, SSE streams, error bodies, status codes).  The chat,
embeddings and model endpoints live here; the other protocols live in
``tests/fake_protocols/`` (one module each, registered from ``build_app``).

Run it standalone::

    python tests/fake_provider.py --host 127.0.0.1 --port 0

It prints exactly one line ``READY http://127.0.0.1:PORT`` on stdout (flushed)
once it is listening.  From pytest / benchmark code use the stdlib-only helper::

    from tests.fake_provider import FakeProvider
    with FakeProvider() as fp:
        client = openai.OpenAI(base_url=fp.base_url, api_key="x")
        ...
        fp.requests()   # list of recorded requests (GET /_requests)
        fp.clear()      # DELETE /_requests
        fp.reset()      # DELETE /_state: clear requests AND failfirst counters

Endpoints
---------
``POST /v1/chat/completions`` (JSON and SSE), ``POST /v1/embeddings``,
``GET /v1/models``, ``GET /v1/models/{id}``, plus (see "Other protocols"
below) ``POST /v1/responses``, ``POST /v1/messages`` (also ``?beta=true``),
``POST /v1/messages/count_tokens``, ``POST /v1/completions``,
``POST /v1/images/generations``, ``POST /v1/audio/transcriptions`` and
``/v1/audio/translations``, ``POST /v1/audio/speech``, ``POST /v1/moderations``,
``POST /v1/rerank`` and ``POST /v2/rerank`` (Cohere); control endpoints
``GET /_requests`` (every /v1 request in arrival order, as
``{"path", "model", "body", "authorization", "headers"}``; header names are
lower-case; ``body`` is the parsed JSON or null), ``DELETE /_requests``,
``DELETE /_state`` (also resets failfirst counters), ``GET /_health``,
``GET /_files/img/<hex>.png`` (the PNGs handed out as image URLs; not recorded).
Multipart requests (transcriptions) are recorded with ``body`` = the form
fields, the file as ``{"filename", "content_type", "size"}``.
Recording keeps the last ``--record-limit`` requests (default 100000, 0 means
unlimited) so long load tests stay bounded in memory.
Unknown /v1 paths answer 404 with an OpenAI error body.

Behaviour directives
--------------------
Behaviour is selected by the ``model`` string, directives joined by ``+``.
The first part is a free name (``fake``); unknown parts are ignored, so
``fake``, ``my-model+chunks-3`` etc. all work.

* ``fail-<status>``   answer <status> with an OpenAI error body
  (429: rate_limit_error/rate_limit_exceeded, 400: invalid_request_error,
  401: invalid_request_error/invalid_api_key, 403: permission_error,
  404: invalid_request_error/model_not_found, 5xx: server_error).
* ``retryafter-<s>``  add a ``retry-after: <s>`` header to error responses.
* ``slow-<ms>``       sleep <ms> before sending response headers.
* ``chunks-<n>``      the completion has n tokens (default 5).
* ``chunkdelay-<ms>`` streaming: sleep <ms> before each content chunk.
* ``drop-<k>``        streaming: send k content chunks then abort the TCP
  connection (no finish chunk, no [DONE]); non-streaming: abort without
  any response.
* ``ignoremax``       chat, Responses and Anthropic: generate all ``chunks-<n>`` tokens whatever
  ``max_tokens`` / ``max_completion_tokens`` say (a provider that ignores the limit).
* ``nousage``         never report usage (no ``usage`` key in JSON, no usage
  chunk even when ``stream_options.include_usage`` is true).
* ``ctx-<n>``         context window of n prompt tokens; larger prompts get a
  400 ``context_length_exceeded`` ("maximum context length ...").
* ``failfirst-<k>``   the first k requests with this exact model string get a
  500; later ones succeed (per-process counter, reset by DELETE /_state).
* ``spaced``          every JSON body and SSE data line is written with
  ``json.dumps`` default separators (``", "``, ``": "``), e.g. the usage
  chunk reads ``"usage": {"prompt_tokens": 7, ...``; default is compact.
* ``reasoning-<n>``   chat: ``completion_tokens_details.reasoning_tokens = n``
  and completion_tokens includes those n (visible text unchanged; n is added
  once, not per choice).  Responses: ``output_tokens_details.reasoning_tokens
  = n`` included in output_tokens, plus a ``reasoning`` output item.
* ``cached-<n>``      chat: ``prompt_tokens_details.cached_tokens =
  min(n, prompt_tokens)``; Responses: ``input_tokens_details.cached_tokens``.
  (Without these two directives chat usage has no ``*_details`` keys.)
* ``toolstream``      tool calls get arguments ``{"text": "tok0 tok1 ... "}``
  (the json-mode text) instead of ``{}``, streamed as g argument fragments
  (one chunk/event each, so chunkdelay and drop-k apply).  Chat, Responses
  and Anthropic.
* ``cachewrite-<n>`` / ``cacheread-<n>``  Anthropic: usage
  ``cache_creation_input_tokens = n`` / ``cache_read_input_tokens = n``,
  reported besides (not subtracted from) ``input_tokens``, as Anthropic does:
  total input = input_tokens + cache_creation + cache_read.

Directives apply to every endpoint where they make sense: fail / retryafter /
slow / failfirst everywhere; chunks = number of generated tokens (text
tokens, transcript words, image output tokens); chunkdelay and drop-k on
every stream (drop-k: abort the TCP connection after k content events - chat
chunks, ``response.output_text.delta`` / ``function_call_arguments.delta``,
Anthropic ``content_block_delta`` - never sending the terminal event; on
non-streaming requests drop aborts without a response); nousage removes usage
everywhere (Responses ``usage: null``, Anthropic no ``usage`` key, images no
``usage``, transcriptions no ``usage``, rerank no ``meta.billed_units``); ctx
on chat, embeddings, completions, Responses and Anthropic.

Order of evaluation: record request -> slow -> failfirst -> fail -> ctx ->
drop (non-streaming) -> answer.

Token counting (deterministic)
------------------------------
* prompt_tokens = sum over messages of (number of whitespace-separated words in
  the text content; for list content, the ``text`` of every part that has one)
  + 1 per message.  ``None`` content counts 0 words.
* generated tokens per choice g = n (``chunks-<n>``, default 5), capped by
  ``max_completion_tokens`` / ``max_tokens`` if given (finish_reason
  ``"length"`` when g < n, else ``"stop"``; ``"tool_calls"`` for tool calls).
* completion_tokens = g * (request ``n``, default 1);
  total_tokens = prompt_tokens + completion_tokens.
  The same rule applies to tool-call and json_object answers.

Content: token k is the string ``"tok<k> "`` (trailing space); the message
content is their concatenation, e.g. ``"tok0 tok1 tok2 tok3 tok4 "``.  Each
token is one SSE content chunk.  With ``response_format`` ``json_object`` (or
``json_schema``) the first piece is prefixed with ``{"text": "`` and the last
suffixed with ``"}``, giving ``{"text": "tok0 tok1 "}`` (still g chunks).

If the request has ``tools`` and ``tool_choice`` is not ``"none"``, every
choice is one tool call to the first tool (or the tool named by
``tool_choice``) with arguments ``"{}"``, content null, finish_reason
``"tool_calls"`` (streamed as a header delta plus one arguments delta).

``logprobs: true`` yields a logprobs object (token k has logprob
``-0.01*(k+1)``; ``top_logprobs`` alternatives ``"alt<j>"``).

Chat streaming: a role chunk, one chunk per token per choice, a finish chunk
per choice, then - only when ``stream_options.include_usage`` is true and not
``nousage`` - a usage chunk with ``choices: []`` (earlier chunks then carry
``"usage": null``), then ``data: [DONE]``.

Embeddings: each input (string, list of strings, token array, list of token
arrays) -> 8 floats (or ``dimensions``) derived from blake2b of the text
(token arrays are joined by spaces), float32-exact so float and base64
(little-endian float32) encodings agree.  prompt_tokens = words per string
input, or the token-array length.

Other protocols (tests/fake_protocols/)
---------------------------------------
Generated text is always the token list above ("tok0 tok1 ... ", g tokens).

* ``POST /v1/responses`` (responses.py) - OpenAI Responses API.
  input_tokens = 1 + words per ``input`` item (a string input is one item;
  words from ``content`` string/parts' ``text``, or ``output`` of
  function_call_output items) + (1 + words) for ``instructions``.
  output_tokens = g (+ reasoning); g capped by ``max_output_tokens`` ->
  ``status: "incomplete"``, ``incomplete_details.reason: "max_output_tokens"``
  (the fake does not enforce OpenAI's minimum of 16).  ``usage`` =
  {input_tokens, input_tokens_details.cached_tokens, output_tokens,
  output_tokens_details.reasoning_tokens, total_tokens}.  Output: a
  ``message`` item with one ``output_text`` part; ``text.format`` json_schema /
  json_object -> JSON text ``{"text": "..."}``; with function ``tools`` and
  tool_choice not "none": one ``function_call`` item (first function tool or
  tool_choice's name, arguments ``{}``) instead.  SSE (``stream: true``):
  ``event: <type>\ndata: {"type": <type>, "sequence_number": i, ...}\n\n`` for
  response.created, response.in_progress, [reasoning output_item.added/done],
  response.output_item.added, response.content_part.added,
  response.output_text.delta x g, response.output_text.done,
  response.content_part.done, response.output_item.done, response.completed
  (``response.incomplete`` when capped) carrying the full response with usage.
  Function calls: output_item.added, response.function_call_arguments.delta
  (1, or g with toolstream), response.function_call_arguments.done,
  output_item.done, response.completed.  Errors: OpenAI's shape.
* ``POST /v1/messages`` (anthropic.py) - Anthropic Messages; ``max_tokens`` and
  ``messages`` are required (400 invalid_request_error).  input_tokens = chat's
  rule over ``messages`` (1 + words per message; text blocks' ``text``,
  tool_result blocks' content) + (1 + words) for a non-empty ``system``.
  output_tokens = g, capped by max_tokens (stop_reason ``max_tokens``, else
  ``end_turn``; ``tool_use`` with tools unless tool_choice type "none": one
  tool_use block, input ``{}``).  usage = {input_tokens,
  cache_creation_input_tokens, cache_read_input_tokens, cache_creation
  {ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}, output_tokens,
  service_tier}.  SSE: message_start (usage with input/cache fields,
  output_tokens 1), content_block_start, ping, content_block_delta x g
  (text_delta, or input_json_delta for tool_use), content_block_stop,
  message_delta (delta.stop_reason, usage.output_tokens = g), message_stop;
  named events ``event: <type>\ndata: {...}\n\n``.  Errors:
  ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with
  400 invalid_request_error, 401 authentication_error, 403 permission_error,
  404 not_found_error, 413 request_too_large, 429 rate_limit_error, 500
  api_error, 529 overloaded_error (other 5xx api_error); ctx -> 400 "prompt is
  too long: N tokens > M maximum".  Headers (x-api-key, anthropic-version,
  anthropic-beta) are recorded like any other.
  ``POST /v1/messages/count_tokens`` -> ``{"input_tokens": N}`` (same count).
* ``POST /v1/completions`` (completions.py) - legacy ``text_completion``;
  ``prompt`` string, list of strings, token array or list of token arrays;
  prompt_tokens = words per string prompt (no +1) or token-array length,
  summed; choices = n per prompt (index = prompt*n + i); g capped by
  ``max_tokens`` (default 16, as OpenAI); completion_tokens = g * choices.
  SSE: one chunk per token per choice, finish chunk(s), usage chunk only with
  ``stream_options.include_usage``, ``[DONE]``.
* ``POST /v1/images/generations`` (media.py) - ``{"created", "data": [n x
  {"b64_json"|"url", "revised_prompt"}], "usage"}``; n (1..10) images, each a
  valid 2x2 PNG seeded by (prompt, index); ``response_format`` default "url"
  (b64_json for models starting with "gpt-image"); urls point at
  ``/_files/img/<hex>.png`` on the fake.  usage (gpt-image shape):
  input_tokens = words(prompt) (= text_tokens), output_tokens = chunks * n.
* ``POST /v1/audio/transcriptions`` / ``translations`` (media.py) - multipart
  (file, model, response_format json|text|verbose_json|srt|vtt,
  ``timestamp_granularities[]``).  Text = the g tokens joined by spaces
  ("tok0 tok1 tok2 tok3 tok4").  duration (seconds, float): for a RIFF/WAVE
  upload the data-chunk bytes / byte rate from its fmt chunk, otherwise
  len(file bytes) / 16000.  json: ``{"text", "usage": {"type": "duration",
  "seconds": ceil(duration)}}``; verbose_json adds task, language, duration,
  segments (and words when asked); text/srt/vtt are text/plain.
* ``POST /v1/audio/speech`` (media.py) - JSON (model, input, voice required,
  response_format mp3 default|opus|aac|flac|wav|pcm) -> audio bytes with the
  matching content-type (audio/mpeg, audio/opus, audio/aac, audio/flac,
  audio/wav, audio/pcm).  wav: a valid 24 kHz mono 16-bit WAV of 10 ms of
  silence per input character (44 + 480*len(input) bytes); pcm: those samples
  raw; others: the format's magic bytes + 48 zero bytes per character.
* ``POST /v1/moderations`` (moderations.py) - ``{"id": "modr-...", "model",
  "results": [...]}``, one result per input string (a list of multimodal parts
  is one result); a category (omni-moderation's 13) is flagged iff its name is
  a whitespace-separated word of the lower-cased text (e.g. "violence",
  "self-harm/intent"); scores 0.9 flagged, 0.0001 otherwise.
* ``POST /v1/rerank`` (Cohere v1) and ``POST /v2/rerank`` (Cohere v2)
  (rerank.py) - ``{"id", "results": [{"index", "relevance_score",
  "document"?}], "meta": {"api_version": {"version"}, "billed_units":
  {"search_units": ceil(len(documents)/100)}}}``, sorted by score (share of
  query words in the document, minus 1e-4 per extra document word), top_n
  honoured, ``document`` only with ``return_documents: true``.  LiteLLM's
  ``cohere/<model>`` with ``api_base="http://127.0.0.1:PORT"`` (the root, not
  /v1) posts to /v2/rerank; with an api_base ending in /v1/rerank to /v1/rerank.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque

__all__ = ["FakeProvider", "count_prompt_tokens", "parse_model"]

DEFAULT_CHUNKS = 5
EMBED_DIM = 8
SYSTEM_FINGERPRINT = "fp_fake"

try:  # fast path
    import orjson

    _dumps = orjson.dumps
    _loads = orjson.loads
except Exception:  # pragma: no cover - stdlib fallback
    def _dumps(obj):
        return json.dumps(obj, separators=(",", ":")).encode()

    _loads = json.loads


# --------------------------------------------------------------------------
# Pure helpers (importable without aiohttp)
# --------------------------------------------------------------------------

_INT_DIRECTIVES = ("fail", "slow", "chunks", "chunkdelay", "drop", "ctx",
                   "failfirst", "retryafter", "reasoning", "cached", "cachewrite",
                   "cacheread")
_FLAG_DIRECTIVES = ("nousage", "spaced", "toolstream", "ignoremax")
_parse_cache: dict[str, dict] = {}


def parse_model(model) -> dict:
    """Parse ``fake+chunks-3+fail-500`` into a dict of directives."""
    if not isinstance(model, str):
        model = ""
    d = _parse_cache.get(model)
    if d is not None:
        return d
    d = {"chunks": DEFAULT_CHUNKS, "chunkdelay": 0, "slow": 0, "fail": None,
         "drop": None, "ctx": None, "failfirst": 0, "retryafter": None,
         "nousage": False, "ignoremax": False, "spaced": False, "toolstream": False, "reasoning": None,
         "cached": None, "cachewrite": None, "cacheread": None}
    for part in model.split("+")[1:] if "+" in model else ():
        part = part.strip().lower()
        if part in _FLAG_DIRECTIVES:
            d[part] = True
            continue
        name, sep, val = part.rpartition("-")
        if sep and name in _INT_DIRECTIVES:
            try:
                d[name] = int(val)
            except ValueError:
                pass
    if len(_parse_cache) < 10000:
        _parse_cache[model] = d
    return d


def _count_words(content) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                t = part.get("text")
                if isinstance(t, str):
                    total += len(t.split())
            elif isinstance(part, str):
                total += len(part.split())
        return total
    return 0


def count_prompt_tokens(messages) -> int:
    """words(text content) + 1 per message, summed."""
    if not isinstance(messages, list):
        return 0
    total = 0
    for m in messages:
        total += 1
        if isinstance(m, dict):
            total += _count_words(m.get("content"))
    return total


_TOKENS: list[str] = []
_pieces_cache: dict[tuple, tuple] = {}


def _pieces(g: int, json_mode: bool) -> tuple:
    key = (g, json_mode)
    p = _pieces_cache.get(key)
    if p is None:
        while len(_TOKENS) < g:
            _TOKENS.append("tok%d " % len(_TOKENS))
        lst = _TOKENS[:g]
        if json_mode and lst:
            lst[0] = '{"text": "' + lst[0]
            lst[-1] = lst[-1] + '"}'
        p = (tuple(lst), "".join(lst))
        if len(_pieces_cache) < 10000:
            _pieces_cache[key] = p
    return p


def _logprob_entry(token: str, k: int, top: int) -> dict:
    b = list(token.encode())
    lp = -0.01 * (k + 1)
    tops = []
    if top:
        tops.append({"token": token, "logprob": lp, "bytes": b})
        for j in range(1, top):
            alt = "alt%d" % j
            tops.append({"token": alt, "logprob": lp - j, "bytes": list(alt.encode())})
    return {"token": token, "logprob": lp, "bytes": b, "top_logprobs": tops}


_ERR_TYPES = {
    400: ("invalid_request_error", None, "Invalid request (fake provider)."),
    401: ("invalid_request_error", "invalid_api_key",
          "Incorrect API key provided: fake. You can find your API key at "
          "https://platform.openai.com/account/api-keys."),
    403: ("permission_error", None, "You are not allowed to access this resource."),
    404: ("invalid_request_error", "model_not_found",
          "The model does not exist or you do not have access to it."),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", None, "Conflict."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: ("rate_limit_error", "rate_limit_exceeded",
          "Rate limit reached for requests (fake provider). Please try again later."),
}


def _spaced_dumps(obj) -> bytes:
    """json.dumps default separators (``", "`` and ``": "``), for ``spaced``."""
    return json.dumps(obj).encode()


def dumps_for(d) -> callable:
    """The JSON encoder a request's directives ask for (compact or ``spaced``)."""
    return _spaced_dumps if d is not None and d.get("spaced") else _dumps


def error_body(status: int, message=None, type_=None, code=None, param=None,
               spaced=False) -> bytes:
    t, c, m = _ERR_TYPES.get(
        status,
        ("server_error", None,
         "The server had an error while processing your request. Sorry about that!")
        if status >= 500 else ("invalid_request_error", None, "Error %d (fake provider)." % status),
    )
    return (_spaced_dumps if spaced else _dumps)({"error": {"message": message or m, "type": type_ or t,
                             "param": param, "code": code if code is not None else c}})


def embedding_vector(text: str, dim: int = EMBED_DIM) -> list[float]:
    """Deterministic float32-exact vector in [-1, 1) from blake2b(text)."""
    raw = b""
    i = 0
    tb = text.encode()
    while len(raw) < 4 * dim:
        raw += hashlib.blake2b(tb, digest_size=64, salt=struct.pack("<Q", i)).digest()
        i += 1
    ints = struct.unpack("<%dI" % dim, raw[:4 * dim])
    vals = [(x / 2147483648.0) - 1.0 for x in ints]
    # round-trip through float32 so float and base64 encodings agree exactly
    return list(struct.unpack("<%df" % dim, struct.pack("<%df" % dim, *vals)))


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------

class ProtocolContext:
    """What ``build_app`` hands to each ``tests/fake_protocols/<name>.py`` module's
    ``register(app, ctx)``: the shared recording, gates and helpers."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


_PROTOCOLS = ("responses", "anthropic", "completions", "media", "moderations", "rerank")


def _protocol_modules():
    import importlib

    here = os.path.dirname(os.path.abspath(__file__))
    if __package__:
        pkg = __package__ + ".fake_protocols"
    else:  # run as a script: tests/ is sys.path[0]
        if here not in sys.path:
            sys.path.insert(0, here)
        pkg = "fake_protocols"
    return [importlib.import_module(pkg + "." + name) for name in _PROTOCOLS]

def build_app(record_limit: int | None = None):
    from aiohttp import web

    records: deque = deque(maxlen=record_limit)
    counters: dict[str, int] = {}
    seq = itertools.count(1)
    JSON_CT = "application/json"

    def err(status, d=None, **kw):
        headers = None
        if d is not None and d.get("retryafter") is not None:
            headers = {"retry-after": str(d["retryafter"])}
        spaced = d is not None and d.get("spaced")
        return web.Response(status=status, body=error_body(status, spaced=spaced, **kw),
                            content_type=JSON_CT, headers=headers)

    async def read_json(request):
        raw = await request.read()
        try:
            body = _loads(raw) if raw else None
        except Exception:
            return None, False
        return body, True

    def record(request, body):
        model = body.get("model") if isinstance(body, dict) else None
        records.append((request.path, model, body,
                        request.headers.get("Authorization"),
                        tuple(request.headers.items())))

    async def common_gate(request, body, d, stream, errf=None):
        """slow / failfirst / fail. Returns a Response to send, or None.

        ``errf(status, d, message=...)`` builds the error response (default: OpenAI's
        shape; the Anthropic handlers pass their own)."""
        if errf is None:
            errf = err
        if d["slow"]:
            await asyncio.sleep(d["slow"] / 1000.0)
        ff = d["failfirst"]
        if ff:
            model = body.get("model")
            c = counters.get(model, 0) + 1
            counters[model] = c
            if c <= ff:
                return errf(500, d, message="Fake failure %d of first %d." % (c, ff))
        if d["fail"] is not None:
            return errf(d["fail"], d)
        return None

    def abort(request):
        tr = request.transport
        if tr is not None:
            tr.abort()

    async def chat_completions(request):
        body, ok = await read_json(request)
        record(request, body)
        if not ok:
            return err(400, message="We could not parse the JSON body of your request. "
                                    "(HINT: This likely means you aren't using your HTTP "
                                    "library correctly.)")
        if not isinstance(body, dict):
            return err(400, message="Invalid request body: expected a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return err(400, message="you must provide a model parameter", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return err(400, message="Missing required parameter: 'messages'.", param="messages")
        d = parse_model(model)
        stream = bool(body.get("stream"))
        r = await common_gate(request, body, d, stream)
        if r is not None:
            return r
        prompt_tokens = count_prompt_tokens(messages)
        if d["ctx"] is not None and prompt_tokens > d["ctx"]:
            return err(400, d, code="context_length_exceeded", param="messages", message=(
                "This model's maximum context length is %d tokens. However, your messages "
                "resulted in %d tokens. Please reduce the length of the messages."
                % (d["ctx"], prompt_tokens)))

        n_choices = body.get("n") or 1
        if not isinstance(n_choices, int) or n_choices < 1:
            return err(400, message="Invalid 'n': must be a positive integer.", param="n")
        n_tok = d["chunks"]
        cap = body.get("max_completion_tokens")
        if cap is None:
            cap = body.get("max_tokens")
        g = n_tok
        if isinstance(cap, int) and cap < g and not d["ignoremax"]:
            g = max(cap, 0)
        finish = "length" if g < n_tok else "stop"

        tool_name = None
        tools = body.get("tools")
        tool_choice = body.get("tool_choice")
        if isinstance(tools, list) and tools and tool_choice != "none":
            if isinstance(tool_choice, dict):
                tool_name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
            if not tool_name:
                t0 = tools[0] if isinstance(tools[0], dict) else {}
                tool_name = (t0.get("function") or {}).get("name") or t0.get("name") or "tool"
            finish = "tool_calls"
        rf = body.get("response_format")
        json_mode = isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema")
        pieces, content = _pieces(g, json_mode)
        want_lp = body.get("logprobs") is True
        top_lp = body.get("top_logprobs") if want_lp else 0
        if not isinstance(top_lp, int) or top_lp < 0:
            top_lp = 0

        completion_tokens = g * n_choices
        if d["reasoning"] is not None:
            completion_tokens += max(d["reasoning"], 0)
        usage = None if d["nousage"] else {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
        if usage is not None:
            if d["cached"] is not None:
                usage["prompt_tokens_details"] = {
                    "cached_tokens": min(max(d["cached"], 0), prompt_tokens), "audio_tokens": 0}
            if d["reasoning"] is not None:
                usage["completion_tokens_details"] = {
                    "reasoning_tokens": max(d["reasoning"], 0), "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        dumps = dumps_for(d)
        # toolstream: arguments {"text": "tok0 ... "} streamed as g fragments
        arg_pieces, tool_args = _pieces(g, True) if d["toolstream"] and g else (("{}",), "{}")
        num = next(seq)
        cid = "chatcmpl-fake%016x" % num
        created = int(time.time())

        if not stream:
            if d["drop"] is not None:
                abort(request)
                raise ConnectionResetError("fake provider: dropped connection")
            choices = []
            for i in range(n_choices):
                if tool_name is not None:
                    msg = {"role": "assistant", "content": None, "tool_calls": [{
                        "id": "call_fake%x_%d" % (num, i), "type": "function",
                        "function": {"name": tool_name, "arguments": tool_args}}],
                        "refusal": None, "annotations": []}
                else:
                    msg = {"role": "assistant", "content": content, "refusal": None,
                           "annotations": []}
                lp = None
                if want_lp:
                    lp = {"content": [_logprob_entry(p, k, top_lp) for k, p in enumerate(pieces)],
                          "refusal": None}
                choices.append({"index": i, "message": msg, "logprobs": lp,
                                "finish_reason": finish})
            obj = {"id": cid, "object": "chat.completion", "created": created, "model": model,
                   "choices": choices, "system_fingerprint": SYSTEM_FINGERPRINT}
            if usage is not None:
                obj["usage"] = usage
            return web.Response(body=dumps(obj), content_type=JSON_CT,
                                headers={"x-request-id": "req_fake%x" % num})

        # ---------------- streaming ----------------
        so = body.get("stream_options")
        include_usage = isinstance(so, dict) and so.get("include_usage") is True \
            and not d["nousage"]
        resp = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "x-request-id": "req_fake%x" % num})
        await resp.prepare(request)
        base = {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model, "system_fingerprint": SYSTEM_FINGERPRINT, "choices": None}
        if include_usage:
            base["usage"] = None

        def chunk(choices):
            base["choices"] = choices
            return b"data: " + dumps(base) + b"\n\n"

        write = resp.write
        delay = d["chunkdelay"] / 1000.0
        drop = d["drop"]
        sent = 0

        async def content_chunk(data):
            nonlocal sent
            if drop is not None and sent >= drop:
                abort(request)
                raise ConnectionResetError("fake provider: dropped stream")
            if delay:
                await asyncio.sleep(delay)
            await write(data)
            sent += 1

        if tool_name is not None:
            for i in range(n_choices):
                await write(chunk([{"index": i, "delta": {
                    "role": "assistant", "content": None, "tool_calls": [{
                        "index": 0, "id": "call_fake%x_%d" % (num, i), "type": "function",
                        "function": {"name": tool_name, "arguments": ""}}],
                    "refusal": None}, "logprobs": None, "finish_reason": None}]))
            for frag in arg_pieces:
                for i in range(n_choices):
                    await content_chunk(chunk([{"index": i, "delta": {"tool_calls": [{
                        "index": 0, "function": {"arguments": frag}}]},
                        "logprobs": None, "finish_reason": None}]))
        else:
            for i in range(n_choices):
                await write(chunk([{"index": i, "delta": {"role": "assistant", "content": "",
                                                          "refusal": None},
                                    "logprobs": None, "finish_reason": None}]))
            for k, p in enumerate(pieces):
                lp = ({"content": [_logprob_entry(p, k, top_lp)], "refusal": None}
                      if want_lp else None)
                for i in range(n_choices):
                    await content_chunk(chunk([{"index": i, "delta": {"content": p},
                                                "logprobs": lp, "finish_reason": None}]))
        if drop is not None:
            # k >= number of content chunks: still drop before the finish chunk
            abort(request)
            raise ConnectionResetError("fake provider: dropped stream")
        for i in range(n_choices):
            await write(chunk([{"index": i, "delta": {}, "logprobs": None,
                                "finish_reason": finish}]))
        if include_usage:
            base["choices"] = []
            base["usage"] = usage
            await write(b"data: " + dumps(base) + b"\n\n")
        await write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def embeddings(request):
        body, ok = await read_json(request)
        record(request, body)
        if not ok:
            return err(400, message="We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return err(400, message="Invalid request body: expected a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return err(400, message="you must provide a model parameter", param="model")
        inp = body.get("input")
        if isinstance(inp, str):
            items = [inp]
        elif isinstance(inp, list) and inp and all(isinstance(x, int) for x in inp):
            items = [inp]
        elif isinstance(inp, list) and inp and all(
                isinstance(x, str) or (isinstance(x, list) and all(isinstance(y, int) for y in x))
                for x in inp):
            items = inp
        else:
            return err(400, message="'$.input' is invalid. Please check the API reference: "
                                    "https://platform.openai.com/docs/api-reference.",
                       param="input")
        d = parse_model(model)
        r = await common_gate(request, body, d, False)
        if r is not None:
            return r
        dim = body.get("dimensions")
        if not isinstance(dim, int) or dim < 1:
            dim = EMBED_DIM
        b64 = body.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for i, it in enumerate(items):
            if isinstance(it, list):
                text = " ".join(map(str, it))
                nt = len(it)
            else:
                text = it
                nt = len(it.split())
            tokens += nt
            if d["ctx"] is not None and nt > d["ctx"]:
                return err(400, d, code="context_length_exceeded", param="input", message=(
                    "This model's maximum context length is %d tokens, however you requested "
                    "%d tokens in your input. Please reduce your input." % (d["ctx"], nt)))
            vec = embedding_vector(text, dim)
            emb = base64.b64encode(struct.pack("<%df" % dim, *vec)).decode() if b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        if d["drop"] is not None:
            abort(request)
            raise ConnectionResetError("fake provider: dropped connection")
        obj = {"object": "list", "data": data, "model": model}
        if not d["nousage"]:
            obj["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.Response(body=dumps_for(d)(obj), content_type=JSON_CT)

    _MODELS = ["fake", "fake-embedding"]

    def model_obj(mid):
        return {"id": mid, "object": "model", "created": 1700000000, "owned_by": "fake-provider"}

    async def list_models(request):
        record(request, None)
        return web.Response(body=_dumps({"object": "list",
                                         "data": [model_obj(m) for m in _MODELS]}),
                            content_type=JSON_CT)

    async def get_model(request):
        record(request, None)
        return web.Response(body=_dumps(model_obj(request.match_info["model"])),
                            content_type=JSON_CT)

    async def not_found(request):
        body, _ = await read_json(request) if request.can_read_body else (None, True)
        record(request, body)
        return err(404, code="unknown_url", message="Unknown request URL: %s %s."
                   % (request.method, request.path))

    async def get_requests(request):
        out = [{"path": p, "model": m, "body": b, "authorization": a,
                "headers": {k.lower(): v for k, v in h}}
               for (p, m, b, a, h) in list(records)]
        return web.Response(body=_dumps(out), content_type=JSON_CT)

    async def clear_requests(request):
        records.clear()
        return web.Response(body=b'{"ok":true}', content_type=JSON_CT)

    async def clear_state(request):
        records.clear()
        counters.clear()
        return web.Response(body=b'{"ok":true}', content_type=JSON_CT)

    async def health(request):
        return web.Response(body=b'{"status":"ok"}', content_type=JSON_CT)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_get("/_requests", get_requests)
    app.router.add_delete("/_requests", clear_requests)
    app.router.add_delete("/_state", clear_state)
    app.router.add_get("/_health", health)
    ctx = ProtocolContext(
        web=web, record=record, read_json=read_json, common_gate=common_gate, err=err,
        abort=abort, next_id=lambda: next(seq), parse_model=parse_model,
        dumps_for=dumps_for, loads=_loads, count_words=_count_words,
        count_prompt_tokens=count_prompt_tokens, pieces=_pieces,
        system_fingerprint=SYSTEM_FINGERPRINT)
    for mod in _protocol_modules():
        mod.register(app, ctx)
    app.router.add_route("*", "/v1/{tail:.*}", not_found)
    return app


async def _serve(host: str, port: int, record_limit):
    from aiohttp import web

    app = build_app(record_limit)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    sock = site._server.sockets[0]  # type: ignore[union-attr]
    real_port = sock.getsockname()[1]
    sys.stdout.write("READY http://%s:%d\n" % (host, real_port))
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover
            pass
    await stop.wait()
    await runner.cleanup()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake OpenAI-compatible LLM provider")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--record-limit", type=int, default=100000,
                    help="keep only the last N recorded requests (0 = unlimited; "
                         "default 100000 so long load tests stay bounded in memory)")
    args = ap.parse_args(argv)
    import logging
    # dropped connections are intentional; keep aiohttp quiet about them
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp.web").setLevel(logging.CRITICAL)
    try:
        import uvloop  # type: ignore

        uvloop.install()
    except Exception:
        pass
    asyncio.run(_serve(args.host, args.port, args.record_limit or None))


# --------------------------------------------------------------------------
# Stdlib-only helper for pytest / benchmarks
# --------------------------------------------------------------------------

class FakeProvider:
    """Run the fake provider as a subprocess.

    ``with FakeProvider() as fp: fp.base_url -> "http://127.0.0.1:PORT/v1"``
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, extra_args=(),
                 timeout: float = 20.0, env=None):
        self.host = host
        self.port = port
        self.extra_args = list(extra_args)
        self.timeout = timeout
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None  # root, e.g. http://127.0.0.1:PORT

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> FakeProvider:
        cmd = [sys.executable, os.path.abspath(__file__), "--host", self.host,
               "--port", str(self.port), *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     env=self.env, text=True)
        q: queue.Queue = queue.Queue()

        def reader(stream):
            for line in stream:
                q.put(line)
            q.put(None)

        threading.Thread(target=reader, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise RuntimeError("fake provider did not become READY in %.0fs" % self.timeout)
            try:
                line = q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                rc = self.proc.wait()
                raise RuntimeError("fake provider exited early (rc=%s)" % rc)
            if line.startswith("READY "):
                self.url = line.split(None, 1)[1].strip()
                self.port = int(self.url.rsplit(":", 1)[1])
                return self

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        self.proc = None
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if p.stdout:
            try:
                p.stdout.close()
            except Exception:
                pass

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _call(self, method: str, path: str):
        req = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def requests(self) -> list:
        """All recorded /v1 requests, in arrival order."""
        return self._call("GET", "/_requests")

    def clear(self) -> None:
        """Forget recorded requests."""
        self._call("DELETE", "/_requests")

    def reset(self) -> None:
        """Forget recorded requests and failfirst counters."""
        self._call("DELETE", "/_state")

    def health(self) -> dict:
        return self._call("GET", "/_health")


if __name__ == "__main__":
    main()
