"""The targets table of docs/PERFORMANCE.md: each target, what was measured, and the verdict.

Built from the data embedded in the bench and soak sections, so a soak run can redraw it
without measuring again. The benchmark's rows come first, then the scaling runs'
(bench/scale_report.py), memory per open stream (bench/streams_memory.py) and the soak.
"""

from __future__ import annotations

from typing import Any

from bench import report, scale, streams_memory
from bench.soak import stall_verdict, summarize_soak
from bench.tables import _by, derived

CPU_PER_CALL_S = 0.001  # gateway CPU per non-streamed chat call
PROXY_FACTOR = 10  # requests per core against LiteLLM's proxy
EVENT_CPU_S = 0.00002  # CPU per streamed chunk or event
SOAK_S = 600  # a soak this long, at least, for the memory verdict


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**not met**")


def render_targets(bench_data: dict[str, Any] | None, soak: dict[str, Any] | None) -> str:
    rows: list[list[str]] = []
    if bench_data:
        rows += _bench_rows(bench_data)
        rows += scale.target_rows(bench_data)
        rows += streams_memory.target_rows(bench_data)
    rows += _soak_rows(soak)
    lines = ["## Targets", ""]
    lines.append(report.table(["target", "measured (gateway)", "verdict"], rows))
    lines.append("")
    src = []
    if bench_data:
        src.append(f"benchmark of {bench_data['date']}")
    if soak:
        src.append(f"soak of {soak['date']}")
    lines.append("From the " + " and the ".join(src) + " below." if src else "Nothing measured yet.")
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _bench_rows(data: dict[str, Any]) -> list[list[str]]:
    d = derived(data)
    by = _by(data["results"])
    gw, px, pk = d.get("gateway", {}), d.get("litellm-proxy", {}), d.get("portkey", {})
    rows: list[list[str]] = []

    c1 = by.get(("gateway", "json-c1"), {}).get("server_cpu_per_req")
    c16 = gw.get("cpu_per_req")
    rows.append(
        [
            "gateway CPU per non-streamed chat call <= 1.0 ms (Postgres, Redis, metrics on)",
            f"{report.ms(c16, 3)} ms at 16 connections, {report.ms(c1, 3)} ms at 1 connection",
            verdict(None if c16 is None or c1 is None else max(c16, c1) <= CPU_PER_CALL_S),
        ]
    )

    def n(x: dict[str, float | None], key: str) -> str:
        return report.num(x.get(key), ".0f")

    ratio = _ratio(gw.get("rps_per_core"), px.get("rps_per_core"))
    cpu_ratio = _ratio(gw.get("req_per_cpu_s"), px.get("req_per_cpu_s"))
    rows.append(
        [
            f">= {PROXY_FACTOR}x LiteLLM proxy's non-streamed requests per core",
            f"{n(gw, 'rps_per_core')} vs {n(px, 'rps_per_core')} req/s ({report.num(ratio, '.1f')}x); "
            f"per CPU-second {n(gw, 'req_per_cpu_s')} vs {n(px, 'req_per_cpu_s')} "
            f"({report.num(cpu_ratio, '.1f')}x)",
            verdict(None if ratio is None or cpu_ratio is None else min(ratio, cpu_ratio) >= PROXY_FACTOR),
        ]
    )
    pk_ratio = _ratio(gw.get("rps_per_core"), pk.get("rps_per_core"))
    pk_cpu = _ratio(gw.get("req_per_cpu_s"), pk.get("req_per_cpu_s"))
    rows.append(
        [
            "faster than Portkey's gateway (non-streamed requests per core; added p50 at 1 connection)",
            f"{n(gw, 'rps_per_core')} vs {n(pk, 'rps_per_core')} req/s ({report.num(pk_ratio, '.1f')}x); "
            f"per CPU-second {report.num(pk_cpu, '.1f')}x; added p50 "
            f"{report.signed_ms(gw.get('added_p50_c1'))} vs {report.signed_ms(pk.get('added_p50_c1'))} ms",
            verdict(None if pk_ratio is None or pk_cpu is None else min(pk_ratio, pk_cpu) > 1),
        ]
    )
    chunk = gw.get("cpu_per_chunk")
    events = [chunk, gw.get("cpu_per_event_responses"), gw.get("cpu_per_event_messages")]
    rows.append(
        [
            "streams <= 0.02 ms of CPU per chunk (chat) and per event (Responses, Messages; native)",
            f"chat {report.ms(chunk, 4)} ms, Responses {report.ms(events[1], 4)} ms, "
            f"Messages {report.ms(events[2], 4)} ms (chat: LiteLLM proxy "
            f"{report.ms(px.get('cpu_per_chunk'), 4)} ms, Portkey "
            f"{report.ms(pk.get('cpu_per_chunk'), 4)} ms)",
            verdict(None if None in events else max(e for e in events if e is not None) <= EVENT_CPU_S),
        ]
    )
    nosync = d.get("gateway-nosync", {})
    ttft = gw.get("added_ttft_c1")
    rows.append(
        [
            "added TTFT <= 2 ms (1 connection, Postgres)",
            f"{report.signed_ms(ttft)} ms (`synchronous_commit=off`: "
            f"{report.signed_ms(nosync.get('added_ttft_c1'))} ms; LiteLLM proxy "
            f"{report.signed_ms(px.get('added_ttft_c1'))} ms; Portkey "
            f"{report.signed_ms(pk.get('added_ttft_c1'))} ms)",
            verdict(None if ttft is None else ttft <= 0.002),
        ]
    )
    return rows


def _soak_rows(soak: dict[str, Any] | None) -> list[list[str]]:
    if not soak:
        return [
            ["memory flat over a 10-minute soak", "no soak run yet (`make soak`)", "-"],
            ["no event-loop stall > 50 ms", "no soak run yet (`make soak`)", "-"],
        ]
    soak = summarize_soak(soak)
    long_enough = soak["seconds"] >= SOAK_S * 0.98
    rows = [
        [
            "memory flat over a 10-minute soak",
            f"worker RSS {soak['rss_start'] / 2**20:.1f} -> {soak['rss_end'] / 2**20:.1f} MiB over "
            f"{soak['seconds']:.0f} s; second half {soak['rss_second_half'] / 2**20:+.1f} MiB"
            + ("" if long_enough else f" (a soak of {SOAK_S} s is needed for the verdict)"),
            verdict(soak["flat"] and long_enough),
        ]
    ]
    ok = stall_verdict(soak)
    quiet = report.num(soak["max_stall_quiet_ms"], ".1f")
    rows.append(
        [
            "no event-loop stall > 50 ms",
            f"slowest `/health` probe {quiet} ms in the quiet windows "
            f"({soak['max_stall_ms']:.1f} ms over all, some with other processes busy); "
            f"`/health/system` lag max {soak['max_lag_ms']:.1f} ms",
            verdict(ok),
        ]
    )
    return rows
