"""Memory per concurrent open stream: RSS with 250, 500 and 1,000 slow streams held open at once.

The same streams go once straight to the fake provider (*direct*) and then through a gateway of
its own (started as in the benchmark: gunicorn, one worker on core 1, a fresh Postgres database,
Redis), held open by `bench/open_streams.py`. Read each time: the RSS and open files of the
gateway worker, the fake provider and this load generator idle, at each number of open streams
and after all have closed; CPU as a share of a core; whether every stream ended with all its
chunks. The gateway then runs a second round of 1,000 streams, to tell memory its allocator
keeps for reuse from memory that keeps growing.

The fake provider sleeps `CHUNK_DELAY_MS` (1 s) before every chunk, so a stream of
`plan.chunks` chunks stays open that many seconds and 1,000 open streams carry about 1,000
chunks/s. At 50 ms between chunks they would carry 20,000 chunks/s, more than core 0 (load
generator and fake provider together) can drive, and the gateway would be measured saturated
rather than holding streams.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench import procs, report, targets
from bench.loadgen import RequestSpec
from bench.measure import CLIENT_CPUS, SERVER_CPUS, free_port, run_async
from bench.open_streams import (
    AFTER_SETTLE,
    LABEL,
    READING_GAP,
    READINGS,
    SETTLE,
    Plan,
    Tally,
    fd_shortfall,
    hold,
    new_session,
    one_round,
    reading,
)

MODEL = "bench-slow-stream"
CHUNK_DELAY_MS = int(targets.MODELS[MODEL].rsplit("chunkdelay-", 1)[1])
TARGET = "RSS per 1,000 concurrent open streams measured"


FULL = Plan(levels=(250, 500, 1000), chunks=24, open_rate=200.0, second_round=True)
QUICK = Plan(levels=(250, 1000), chunks=15, open_rate=250.0, second_round=False)


def slow_spec(target: targets.Target, chunks: int) -> RequestSpec:
    """A chat stream of MODEL cut to `chunks` tokens by `max_tokens`."""
    base = RequestSpec.chat(target.base, target.key, target.models[MODEL], stream=True)
    body = orjson.loads(base.body) | {"max_tokens": chunks}
    return dataclasses.replace(base, body=orjson.dumps(body))


async def measure_target(
    target: targets.Target, name: str, pids: dict[str, int], plan: Plan, *, rounds: int
) -> dict[str, Any]:
    """Warm the path with a few short streams, read idle, then `rounds` rounds."""
    warm = Tally(expected=1)
    async with new_session() as session:
        await asyncio.gather(*(hold(session, slow_spec(target, 1), warm) for _ in range(20)))
    spec = slow_spec(target, plan.chunks)
    idle = await reading(pids, warm, settle=AFTER_SETTLE)
    done = [await one_round(spec, pids, plan.levels, plan)]
    for _ in range(rounds - 1):
        done.append(await one_round(spec, pids, plan.levels[-1:], plan))
    return {
        "target": name,
        "subject": "worker" if "worker" in pids else "fake",
        "idle": idle,
        "rounds": done,
        "warm_errors": warm.errors,
        "warm_error_samples": warm.error_samples,
    }


def run(
    processes: procs.Processes, work: Path, *, fake: targets.Target, fake_child: procs.Child, quick: bool
) -> dict[str, Any]:
    """Direct, then a gateway of its own: what goes to the bench data as `streams_memory`."""
    plan = QUICK if quick else FULL
    started = time.monotonic()
    out: dict[str, Any] = {"plan": dataclasses.asdict(plan), "chunk_delay_ms": CHUNK_DELAY_MS}
    out["records"], out["notes"] = [], []
    pids = {"fake": fake_child.pid, "client": os.getpid()}
    steps = ", ".join(map(str, plan.levels))
    print(f"memory per open stream: {steps} streams, {plan.chunks} chunks 1 s apart", flush=True)
    out["records"].append(measure_one(fake, "direct", pids, plan, rounds=1, notes=out["notes"]))
    database = targets.create_database()
    try:
        gw = targets.start_gateway(
            processes, work, api_base=fake.base, port=free_port(), database=database,
            cpus=SERVER_CPUS, name="gateway-memory",
        )  # fmt: skip
        worker = targets.worker_pid(gw)
        assert gw.child is not None and worker is not None
        rounds = 2 if plan.second_round else 1
        out["records"].append(
            measure_one(gw, "gateway", {"worker": worker, **pids}, plan, rounds=rounds, notes=out["notes"])
        )
        out["gateway_notes"] = gw.notes
        processes.stop(gw.child)
    finally:
        if database:
            targets.drop_database(database)
    out["elapsed"] = time.monotonic() - started
    return out


def measure_one(
    target: targets.Target, name: str, pids: dict[str, int], plan: Plan, *, rounds: int, notes: list[str]
) -> dict[str, Any]:
    """One target's record (or, if its processes cannot open enough files, a note and no numbers)."""
    short = fd_shortfall(pids, plan.levels[-1])
    if short is not None:
        notes.append(f"{name}: {short}")
        print(f"  {name}: {short}", flush=True)
        return {"target": name, "skipped": short}
    record = run_async(lambda: measure_target(target, name, pids, plan, rounds=rounds))
    for line in summary_lines(record):
        print("  " + line, flush=True)
    return dict(record)


def errors(data: dict[str, Any] | None) -> int:
    """Streams that failed or ended short, over every record."""
    if not data:
        return 0
    return sum(
        r.get("warm_errors", 0) + sum(x["errors"] for x in r.get("rounds", [])) for r in data["records"]
    )


def run_only(*, quick: bool, keep: bool) -> int:
    """`bench/run.py --only-memory`: the fake provider, this measurement, its tables; writes nothing."""
    work = Path(tempfile.mkdtemp(prefix="llm-gateway-memory-"))
    processes = procs.Processes()
    try:
        fake, fake_child = targets.start_fake(processes, work, cpus=CLIENT_CPUS)
        data = run(processes, work, fake=fake, fake_child=fake_child, quick=quick)
    finally:
        processes.stop_all()
        if keep:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("\n".join(render(data)))
    return 1 if errors(data) else 0


# --- rendering -------------------------------------------------------------------------------


def _mib(x: float) -> str:
    return f"{x / 2**20:.1f}"


def per_stream_kib(record: dict[str, Any], step: dict[str, Any], name: str) -> float | None:
    """(RSS with the step's streams open - RSS idle) / open streams, in KiB."""
    if not step["open"]:
        return None
    return (step["rss"][name] - record["idle"]["rss"][name]) / step["open"] / 1024


def summary_lines(record: dict[str, Any]) -> list[str]:
    """One console line per step and per round's end, for the subject process."""
    name, out = record["subject"], []
    for i, rnd in enumerate(record["rounds"], 1):
        for step in rnd["steps"]:
            out.append(
                f"{record['target']:<8} round {i}: {step['open']:>5} open  {LABEL[name]} RSS "
                f"{_mib(step['rss'][name])} MiB ({report.num(per_stream_kib(record, step, name), '.1f')} "
                f"KiB/stream)  CPU {step['cpu'][name]:.0%}"
            )
        out.append(
            f"{record['target']:<8} round {i}: all closed  RSS {_mib(rnd['after']['rss'][name])} MiB "
            f"(idle {_mib(record['idle']['rss'][name])})  {rnd['complete']}/{rnd['streams']} complete, "
            f"{rnd['errors']} errors {rnd['error_samples'][:1]}"
        )
    return out


def _record(data: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The measured record of `name` ("direct" or "gateway"), if there is one."""
    for r in (data or {}).get("records", []):
        if r["target"] == name and "rounds" in r:
            return dict(r)
    return None


def _top(record: dict[str, Any]) -> dict[str, Any]:
    """The first round's last step: the most streams open at once."""
    return dict(record["rounds"][0]["steps"][-1])


def _cell(record: dict[str, Any], reading_: dict[str, Any], name: str) -> str:
    kib = per_stream_kib(record, reading_, name) if reading_["open"] else None
    extra = f" ({kib:+.1f} KiB/stream)" if kib is not None else ""
    return _mib(reading_["rss"][name]) + extra


def _rss_table(data: dict[str, Any]) -> list[str]:
    levels = data["plan"]["levels"]
    header = ["case", "process", "idle MiB"] + [f"{n:,} open" for n in levels] + ["all closed"]
    second = any(len(r.get("rounds", [])) > 1 for r in data["records"])
    if second:
        header += [f"2nd round: {levels[-1]:,} open", "2nd round: all closed"]
    rows = []
    for record in data["records"]:
        if "rounds" not in record:
            continue
        for name in ("worker", "fake", "client"):
            if name not in record["idle"]["rss"]:
                continue
            row = [record["target"], LABEL[name], _mib(record["idle"]["rss"][name])]
            for rnd in record["rounds"]:
                row += [_cell(record, step, name) for step in rnd["steps"]]
                row.append(_mib(rnd["after"]["rss"][name]))
            rows.append(row + ["-"] * (len(header) - len(row)))
    return [report.table(header, rows)]


def _stream_table(data: dict[str, Any]) -> list[str]:
    header = ["case", "streams complete", "errors", "open at the top step", "worker CPU there",
              "core 0 CPU there", "open files idle / top / closed"]  # fmt: skip
    rows = []
    for record in data["records"]:
        if "rounds" not in record:
            rows.append([record["target"], "-", "-", "-", "-", "-", "not measured (below)"])
            continue
        top, name = _top(record), record["subject"]
        after = record["rounds"][0]["after"]
        server = f"{top['cpu']['worker']:.0%}" if "worker" in top["cpu"] else "-"
        rows.append([
            record["target"],
            " + ".join(f"{r['complete']}/{r['streams']}" for r in record["rounds"]),
            str(sum(r["errors"] for r in record["rounds"]) + record["warm_errors"]),
            f"{top['open']:,}",
            server,
            f"{top['cpu']['client'] + top['cpu']['fake']:.0%}",
            f"{LABEL[name]}: {record['idle']['fds'][name]} / {top['fds'][name]} / {after['fds'][name]}",
        ])  # fmt: skip
    return [report.table(header, rows)]


def _marginal_kib(record: dict[str, Any], name: str) -> float | None:
    """KiB per stream added between the first step and the last of the first round."""
    first, last = record["rounds"][0]["steps"][0], _top(record)
    more = last["open"] - first["open"]
    return (last["rss"][name] - first["rss"][name]) / more / 1024 if more > 0 else None


def _findings(data: dict[str, Any]) -> list[str]:
    gw, direct = _record(data, "gateway"), _record(data, "direct")
    out = []
    if gw is not None:
        top, idle = _top(gw), gw["idle"]["rss"]["worker"]
        added = top["rss"]["worker"] - idle
        kept = [r["after"]["rss"]["worker"] - idle for r in gw["rounds"]]
        pooled = gw["rounds"][0]["after"]["fds"]["worker"] - gw["idle"]["fds"]["worker"]
        line = (
            f"- **Gateway**: the worker's RSS grows by {_mib(added)} MiB with {top['open']:,} streams open, "
            f"{report.num(per_stream_kib(gw, top, 'worker'), '.1f')} KiB per stream (between the first "
            f"step and the last, {report.num(_marginal_kib(gw, 'worker'), '.1f')} KiB per added stream); "
            f"once all have closed it is {_mib(kept[0])} MiB above idle"
        )
        if added > 0:
            line += f" ({kept[0] / added:.0%} of what the streams added stays)"
        line += (
            f", with {pooled} more open files than idle: idle keep-alive connections to the provider, "
            "which the worker's pool keeps for 60 s"
        )
        if len(kept) > 1:
            line += (
                f". After a second round of {gw['rounds'][1]['streams']:,} streams it is "
                f"{_mib(kept[1])} MiB above idle"
            )
        out.append(line + ".")
    if direct is not None:
        top = _top(direct)
        out.append(
            f"- **Direct**: the fake provider (aiohttp) holds {top['open']:,} streams with "
            f"{report.num(per_stream_kib(direct, top, 'fake'), '.1f')} KiB each; the load generator "
            f"{report.num(per_stream_kib(direct, top, 'client'), '.1f')} KiB each."
        )
    for record in data["records"]:
        samples = [x for r in record.get("rounds", []) for x in r["error_samples"]]
        samples += record.get("warm_error_samples", [])
        if samples:
            out.append(f"- errors in {record['target']}, e.g. `{samples[0]}`")
    return out


def _method(data: dict[str, Any]) -> list[str]:
    plan, delay = data["plan"], data["chunk_delay_ms"] / 1000
    *first, last = [f"{n:,}" for n in plan["levels"]]
    levels = f"{', '.join(first)} and then {last}" if first else last
    second = f", then a second round of {last}" if plan["second_round"] else ""
    return [
        f"- **Streams.** `{MODEL}` (`openai/{targets.MODELS[MODEL]}`) with `max_tokens: {plan['chunks']}`: "
        f"the fake provider waits {delay:g} s before each of {plan['chunks']} chunks, so a stream stays "
        f"open {plan['chunks'] * delay:g} s and 1,000 open streams carry about {1000 / delay:,.0f} "
        "chunks/s. At 50 ms between chunks that would be 20,000 chunks/s, more than core 0 (load "
        "generator and fake provider) can drive, and the gateway would be measured saturated instead "
        "of holding streams.",
        f"- **Steps.** Each stream is a connection of its own, opened at {plan['open_rate']:g} per second "
        f"until {levels} are open at once{second}; a stream counts as open from its first content chunk. "
        f"At each step, {SETTLE:g} s after all its streams are open, RSS is the median of {READINGS} "
        f"readings of `VmRSS` {READING_GAP:g} s apart, CPU a share of a core over that time. *Idle*: "
        f"after 20 one-chunk streams warmed the path; *all closed*: {AFTER_SETTLE:g} s after the last "
        "stream ended. In brackets: (RSS - idle RSS) / open streams.",
        "- **Cases.** *direct*: the same streams straight to the fake provider; *gateway*: a gateway of "
        "its own, set up as above (fresh database), after the direct case (so the fake provider's own "
        "memory for them is already there).",
    ]


def render(data: dict[str, Any] | None) -> list[str]:
    """The subsection of the bench section (nothing if this was not measured)."""
    if not data:
        return []
    lines = [
        "#### Memory per concurrent open stream",
        "",
        *_method(data),
        "",
        *_rss_table(data),
        "",
        *_stream_table(data),
        "",
        *_findings(data),
    ]
    return [*lines, *(f"- {note}" for note in data["notes"]), ""]


def target_rows(data: dict[str, Any] | None) -> list[list[str]]:
    """The row of the targets table: [target, measured, verdict]."""
    memory = (data or {}).get("streams_memory")
    gw = _record(memory, "gateway")
    if gw is None:
        why = "; ".join(memory["notes"]) if memory and memory["notes"] else "not measured in this run"
        return [[TARGET, why, "-"]]
    top, direct = _top(gw), _record(memory, "direct")
    idle, after = gw["idle"]["rss"]["worker"], gw["rounds"][-1]["after"]["rss"]["worker"]
    kib_direct = per_stream_kib(direct, _top(direct), "fake") if direct else None
    measured = (
        f"{report.num(per_stream_kib(gw, top, 'worker'), '.1f')} KiB per open stream: worker RSS "
        f"{_mib(idle)} MiB idle, {_mib(top['rss']['worker'])} MiB with {top['open']:,} open, "
        f"{_mib(after)} MiB after all closed (fake provider direct: {report.num(kib_direct, '.1f')} KiB "
        "per stream)"
    )
    ok = top["open"] >= 1000 and errors(memory) == 0
    return [[TARGET, measured, "measured" if ok else "-"]]
