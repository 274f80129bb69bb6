"""The benchmark section of docs/PERFORMANCE.md: method, one table per scenario, per-target summary."""

from __future__ import annotations

from typing import Any

import orjson

from bench import profile, report, scale, streams_memory, targets
from bench.measure import (
    CORE0_BUSY,
    OTHER_BUSY,
    SCENARIOS,
    SERVER_CPUS,
    TARGET_LABEL,
    TARGET_ORDER,
)


def _by(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["target"], r["scenario"]): r for r in results}


def derived(data: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per target: added latency vs direct, CPU per request/chunk, requests/s per core."""
    by = _by(data["results"])
    out: dict[str, dict[str, float | None]] = {}
    n_chunks = targets.STREAM_CHUNKS
    for t in TARGET_ORDER:

        def get(scenario: str, key: str, t: str = t) -> float | None:
            r = by.get((t, scenario))
            return None if r is None or r[key] is None else float(r[key])

        def diff(scenario: str, key: str, t: str = t) -> float | None:
            a, b = get(scenario, key, t), get(scenario, key, "direct")
            return None if a is None or b is None else a - b

        many, one = get("stream-c16", "server_cpu_per_req"), get("stream1-c16", "server_cpu_per_req")
        cpu_req = get("json-c16", "server_cpu_per_req")
        rps = get("json-c16", "rps")

        def per_event(prefix: str, t: str = t) -> float | None:
            a, b = (
                get(f"{prefix}-c16", "server_cpu_per_req", t),
                get(f"{prefix}1-c16", "server_cpu_per_req", t),
            )
            return None if a is None or b is None else (a - b) / (n_chunks - 1)

        out[t] = {
            "cpu_per_event_responses": per_event("resp-stream"),
            "cpu_per_event_messages": per_event("msg-stream"),
            "added_ttft_responses_c16": diff("resp-stream-c16", "ttft_p50"),
            "added_ttft_messages_c16": diff("msg-stream-c16", "ttft_p50"),
            "added_p50_c1": diff("json-c1", "p50"),
            "added_p50_c16": diff("json-c16", "p50"),
            "added_ttft_c1": diff("stream-c1", "ttft_p50"),
            "added_ttft_c16": diff("stream-c16", "ttft_p50"),
            "cpu_per_req": cpu_req,
            "cpu_per_chunk": None if many is None or one is None else (many - one) / (n_chunks - 1),
            "rps_per_core": rps / len(SERVER_CPUS) if rps is not None and t != "direct" else None,
            "req_per_cpu_s": 1 / cpu_req if cpu_req else None,
        }
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def render_bench(data: dict[str, Any]) -> str:
    by = _by(data["results"])
    present = [t for t in TARGET_ORDER if any(r["target"] == t for r in data["results"])]
    d = derived(data)
    m, v, pv = data["machine"], data["versions"], data["proxy_versions"]
    lines: list[str] = []
    add = lines.append
    add("## Benchmark" + (" (quick smoke run: short phases, numbers are rough)" if data["quick"] else ""))
    add("")
    add(f"Run {data['date']} on revision {data['revision']}; the whole run took {data['elapsed']:.0f} s.")
    add("")
    busiest = max((r.get("other_util") or 0.0 for r in data["results"]), default=0.0)
    if busiest > OTHER_BUSY:
        add(f"**The machine was not quiet**: other processes used up to {busiest:.0%} of a core during a "
            f"scenario (see the *other* column); latency and throughput are then pessimistic for every "
            f"target measured meanwhile, CPU per request much less so.")  # fmt: skip
        add("")
    add("### Machine and versions")
    add("")
    add(f"- {m['nproc']} cores: {m['cpu']}; {m['memory']} memory; Linux {m['kernel']}; Python {m['python']}")
    add("- gateway: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    if pv:
        add(
            "- LiteLLM proxy (`bench/.venv-litellm-proxy`): "
            + ", ".join(f"{k} {val}" for k, val in pv.items())
        )
    if kv := data.get("portkey_versions"):
        add("- Portkey gateway (`bench/.portkey/`): " + ", ".join(f"{k} {val}" for k, val in kv.items()))
    for t in present + [t for t in data["notes"] if t not in present]:
        for note in data["notes"].get(t, []):
            add(f"- {TARGET_LABEL.get(t, t)}: {note}")
    add("")
    add("### Method")
    add("")
    add(_method(data))
    add("")
    add("### Results")
    add("")
    add(
        "Latencies in ms. *core 1*: the server's own CPU as a share of its core. *core 0*: load "
        "generator + fake provider. *other*: CPU used meanwhile by processes outside the benchmark "
        f"(share of one core; above {OTHER_BUSY:.0%} in bold: the machine was not quiet)."
    )
    add("")
    for sc in SCENARIOS:
        rows = [by[(t, sc.key)] for t in present if (t, sc.key) in by]
        if not rows:
            continue
        add(f"#### {sc.title}")
        add("")
        if sc.stream:
            header = [
                "target",
                "streams/s",
                "TTFT p50",
                "TTFT p99",
                "added TTFT p50",
                "total p50",
                "total p99",
                "chunks/stream",
                "server CPU/stream ms",
                "core 1",
                "core 0",
                "other",
                "errors",
            ]
        else:
            header = [
                "target",
                "req/s",
                "p50",
                "p99",
                "added p50",
                "server CPU/req ms",
                "core 1",
                "core 0",
                "other",
                "errors",
            ]
        body = []
        for r in rows:
            direct = by.get(("direct", sc.key))
            core0 = r["client_util"] + r["fake_util"]
            core0_text = f"{core0:.0%} ({r['client_util']:.0%} + {r['fake_util']:.0%})"
            if core0 > CORE0_BUSY:
                core0_text = "**" + core0_text + "**"
            other = r.get("other_util")
            other_text = _pct(other)
            if other is not None and other > OTHER_BUSY:
                other_text = "**" + other_text + "**"
            name = TARGET_LABEL[r["target"]]
            key = "ttft_p50" if sc.stream else "p50"
            added = None if direct is None or r["target"] == "direct" else r[key] - direct[key]
            if sc.stream:
                body.append(
                    [
                        name,
                        report.num(r["rps"], ".1f"),
                        report.ms(r["ttft_p50"]),
                        report.ms(r["ttft_p99"]),
                        report.signed_ms(added),
                        report.ms(r["p50"]),
                        report.ms(r["p99"]),
                        report.num(r["chunks_mean"], ".1f"),
                        report.ms(r["server_cpu_per_req"], 3),
                        _pct(r["server_util"]),
                        core0_text,
                        other_text,
                        str(r["errors"]),
                    ]
                )
            else:
                body.append(
                    [
                        name,
                        report.num(r["rps"], ".1f"),
                        report.ms(r["p50"]),
                        report.ms(r["p99"]),
                        report.signed_ms(added),
                        report.ms(r["server_cpu_per_req"], 3),
                        _pct(r["server_util"]),
                        core0_text,
                        other_text,
                        str(r["errors"]),
                    ]
                )
        add(report.table(header, body))
        add("")
        for r in rows:
            if r["services_cpu_per_req"] is not None:
                add(
                    f"Postgres + Redis CPU for {TARGET_LABEL[r['target']]} "
                    "(not pinned, not in its server column): "
                    f"{report.ms(r['services_cpu_per_req'], 3)} ms per request."
                )
        add("")
    add("#### Per target")
    add("")
    header = [
        "target",
        "req/s per core (non-streaming, 16 conns)",
        "requests per CPU-second",
        "CPU per request ms",
        "CPU per chunk ms",
        "added p50 ms (1 conn)",
        "added TTFT p50 ms (1 conn)",
        "added TTFT p50 ms (16 conns)",
    ]
    body = []
    for t in present:
        if t == "direct":
            continue
        x = d.get(t, {})
        body.append(
            [
                TARGET_LABEL[t],
                report.num(x.get("rps_per_core"), ".1f"),
                report.num(x.get("req_per_cpu_s"), ".0f"),
                report.ms(x.get("cpu_per_req"), 3),
                report.ms(x.get("cpu_per_chunk"), 4),
                report.signed_ms(x.get("added_p50_c1")),
                report.signed_ms(x.get("added_ttft_c1")),
                report.signed_ms(x.get("added_ttft_c16")),
            ]
        )
    add(report.table(header, body))
    add("")
    add("#### Per protocol (streams, 16 connections)")
    add("")
    proto_header = ["target", "protocol", "CPU per event ms", "added TTFT p50 ms"]
    proto_body = []
    for t in present:
        if t == "direct":
            continue
        x = d.get(t, {})
        for label, event_key, ttft_key in (
            ("chat completions", "cpu_per_chunk", "added_ttft_c16"),
            ("Responses API", "cpu_per_event_responses", "added_ttft_responses_c16"),
            ("Anthropic Messages", "cpu_per_event_messages", "added_ttft_messages_c16"),
        ):
            if x.get(event_key) is None:
                continue
            proto_body.append(
                [TARGET_LABEL[t], label, report.ms(x.get(event_key), 4), report.signed_ms(x.get(ttft_key))]
            )
    add(report.table(proto_header, proto_body))
    add("")
    lines += profile.render(data)
    lines += streams_memory.render(data.get("streams_memory"))
    errors = [r for r in data["results"] if r["errors"]]
    for r in errors:
        add(
            f"- errors in {TARGET_LABEL[r['target']]} / {r['scenario']}: {r['errors']}, "
            f"e.g. `{r['error_samples'][0]}`"
        )
    if errors:
        add("")
    add(scale.render(data))  # scaling, one hot user, the disk's commit cost (bench/scale.py)
    slim = {**data, "derived": d}
    add(f"<!-- bench-data: {orjson.dumps(slim).decode()} -->")
    return "\n".join(lines)


def _method(data: dict[str, Any]) -> str:
    w, dur = data["warmup"], data["duration"]
    models = ", ".join(f"`{k}` = `openai/{b}`" for k, b in targets.MODELS.items())
    return f"""\
- **Placement.** The fake provider (`tests/fake_provider.py`: aiohttp on uvloop, answers at once) and
  the load generator (this script) are pinned to core 0; the server under test is pinned to core 1
  (`taskset -c 1`) and runs alone: the targets are measured one after the other, each started
  before and stopped after its scenarios. Direct calls have no server, so client and provider
  together fill core 0 there: direct's throughput is a bound of this setup, not of a provider.
  Postgres and Redis are the machine's own services (not pinned); their CPU is reported
  separately: the Postgres backends of the benchmark's database (`pg_stat_activity`) and the
  `redis-server` process (shared with anything else using that Redis). All traffic is on 127.0.0.1.
- **Targets.** *direct*: the load generator calls the fake provider itself. *gateway*: `gunicorn -c
  deployments/gunicorn.conf.py app.main:app` with `WEB_CONCURRENCY=1`, `ENVIRONMENT=production`,
  `LOG_LEVEL=WARNING`, billing on a fresh Postgres database (`DATABASE_URL`; the embedded store
  only if Postgres is unreachable, as noted above), rate limits in Redis (`REDIS_URL`, 10^8
  requests per minute and per hour, 10^11 tokens per minute, so none triggers), Prometheus
  metrics in multiprocess mode, gunicorn's JSON access log (a line per request: `LOG_LEVEL` does
  not silence it; LiteLLM's proxy writes none at `LITELLM_LOG=WARNING`); worker recycling
  (`GUNICORN_MAX_REQUESTS`) is off so no worker restarts mid-scenario. Calls use an API key
  created through the admin API for a user with a balance no run can spend. *LiteLLM proxy*:
  `python -m litellm.proxy.proxy_cli --config ... --num_workers 1` from its own virtualenv with
  `LITELLM_LOCAL_MODEL_COST_MAP=True`, `LITELLM_LOG=WARNING`, a `master_key`, no database,
  `disable_spend_logs` and `disable_error_logs`. Both servers get the same `model_list`
  ({models}), each with `api_base` the fake provider and the same `model_info` (per-token
  prices and `max_output_tokens: 4096`: without a cap the gateway holds the caller's whole
  balance for a call that sets no `max_tokens`, so one user's calls could not overlap), and the
  same `router_settings` (simple-shuffle, `num_retries: 2`). *Portkey gateway*: Portkey's
  open-source gateway (`@portkey-ai/gateway` from npm) on Node, its own server (`node
  build/start-server.js --port=N --headless`: no UI; `NODE_ENV=production`), with no config: each
  request names the provider (`x-portkey-provider: openai`, `anthropic` for Messages) and its
  URL (`x-portkey-custom-host`: the fake provider) in headers and carries the provider's key;
  the model is the provider's model string, as for direct calls. It is installed with npm into
  `bench/.portkey/` with its HTTP stack (`hono`, `@hono/node-server`, `@hono/node-ws`) at the
  versions of the gateway's own lock file (a newer `@hono/node-server` breaks its streams), and
  made to listen on 127.0.0.1 only (a `node --import` preload; it has no host option).
- **Requests.** `POST /v1/chat/completions` with one short user message, `stream` false or true,
  no other parameters; the same bytes every time. Direct calls send the provider's model string.
- **Load.** N connections (aiohttp, keep-alive), each sending its next request as soon as the
  previous one has been read completely (closed loop). Per scenario: {w:g} s warm-up (discarded),
  then {dur:g} s measured; a request started before the deadline is completed and counted.
- **Latency** (non-streaming): from just before the request is sent to the last byte of the
  response. **TTFT** (streaming): from just before sending to the arrival of the read that holds
  the first SSE `data:` event with generated content (`"content":"tok...`); **total** is to the
  end of the stream. Percentiles are linear-interpolated over every request of the measured
  phase. *Added* = the target's p50 minus direct's p50 in the same scenario.
- **Throughput** = completed requests / measured wall time. **Requests/s per core** = the
  16-connection non-streaming throughput / 1 (the server is pinned to one core; *core 1* shows
  how much of it the server got). **Requests per CPU-second** = 1 / CPU per request: what one
  core fully given to the server would do, which other processes on the machine barely change.
  The 5x target is judged on both.
- **CPU** = utime + stime from `/proc/<pid>/stat` of every process in the server's process tree
  (gunicorn master and worker; the proxy's single uvicorn process; Portkey's Node process, its
  libuv and V8 threads included), read just before and just after the measured phase (10 ms
  tick resolution), divided by completed requests. **CPU per chunk** = (CPU per stream with
  {targets.STREAM_CHUNKS} chunks - CPU per stream with 1 chunk) / {targets.STREAM_CHUNKS - 1}, both
  at 16 connections.
- **Core 0 check.** The load generator's own CPU (`os.times()`) and the fake provider's (its
  `/proc` tree) as a share of wall time; a figure above {CORE0_BUSY:.0%} is printed in bold: there
  the client side, not the server, may limit throughput."""
