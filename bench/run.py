"""Side-by-side benchmark and soak test; writes docs/PERFORMANCE.md.

The provider directly, the gateway (and its diagnostic variants: Postgres without synchronous
commit, the embedded store, two workers, one hot user), LiteLLM's proxy and Portkey's gateway,
the same requests to each, one after the other; then memory per open stream.

    .venv/bin/python bench/run.py              # full benchmark (~15 minutes), updates docs/PERFORMANCE.md
    .venv/bin/python bench/run.py --quick      # ~2 minute smoke run, prints tables, writes nothing
    .venv/bin/python bench/run.py --soak 600   # steady load on the gateway, updates the soak section
    .venv/bin/python bench/run.py --only-memory --quick   # memory per open stream only, writes nothing
    .venv/bin/python bench/run.py --only-scale --quick    # workers, hot user, commit cost only

Only 127.0.0.1 is used. Every process started here runs in its own process group and is stopped
on exit, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import open_streams, portkey, procs, profile, report, scale, streams_memory, targets  # noqa: E402
from bench.goals import render_targets  # noqa: E402
from bench.measure import (  # noqa: E402
    CLIENT_CPUS,
    NOSYNC_SCENARIOS,
    SERVER_CPUS,
    free_port,
    run_target,
    wait_for_quiet,
)
from bench.soak import render_soak, soak, summarize_soak  # noqa: E402
from bench.tables import render_bench  # noqa: E402

# How a peer is started: (processes, work dir, *, api_base, port, cpus) -> its Target.
PeerStart = Callable[..., targets.Target]


def run_bench(args: argparse.Namespace) -> int:
    """Every target, every scenario, one after the other; then the scaling and memory runs."""
    warmup, duration = (0.5, 2.0) if args.quick else (args.warmup, args.duration)
    idle_before = wait_for_quiet(args.wait_quiet)
    print(f"other processes before the run: {idle_before:.0%} of a core", flush=True)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="llm-gateway-bench-"))
    processes = procs.Processes()
    memory: dict[str, Any] | None = None
    cpu_profile: dict[str, Any] | None = None
    database: str | None = None
    databases: list[str | None] = []
    results: list[dict[str, Any]] = []
    notes: dict[str, list[str]] = {}
    proxy_python: Path | None = None
    scale_data: dict[str, Any] = {}
    try:
        if not args.skip_proxy:
            try:
                proxy_python = targets.ensure_proxy_venv()
            except Exception as exc:  # reported; the other two targets still run
                notes["litellm-proxy"] = [
                    f"**not measured**: installing {targets.PROXY_REQUIREMENT} failed ({exc})"
                ]
        portkey_ready = False
        if not args.skip_portkey:
            try:
                portkey.ensure_portkey()
                portkey_ready = True
            except Exception as exc:  # reported; the other targets still run
                notes["portkey"] = [f"**not measured**: installing {portkey.PORTKEY_PACKAGE} failed ({exc})"]
        print(f"work dir {work}; warm-up {warmup:g} s, measured {duration:g} s per scenario", flush=True)
        fake, fake_child = targets.start_fake(processes, work, cpus=CLIENT_CPUS)
        print(f"fake provider {fake.base} (core 0)", flush=True)
        run_target(fake, fake_root=fake_child.pid, warmup=warmup, duration=duration, results=results)

        database = targets.create_database()
        databases.append(database)
        gw = targets.start_gateway(
            processes, work, api_base=fake.base, port=free_port(), database=database, cpus=SERVER_CPUS
        )
        notes["gateway"] = gw.notes
        print(f"gateway {gw.base} (core 1): {'; '.join(gw.notes)}", flush=True)
        run_target(gw, fake_root=fake_child.pid, warmup=warmup, duration=duration, results=results)
        # --- where its CPU goes (bench/profile.py): sampled after the measured scenarios ---
        cpu_profile = profile.run(gw, fake_root=fake_child.pid, work=work, seconds=3 if args.quick else 10)
        assert gw.child is not None
        processes.stop(gw.child)

        # --- memory per concurrent open stream (bench/streams_memory.py; a gateway of its own) ---
        if not args.skip_memory:
            memory = streams_memory.run(processes, work, fake=fake, fake_child=fake_child, quick=args.quick)

        if database and not args.quick:
            nosync_db = targets.create_database(synchronous_commit=False)
            databases.append(nosync_db)
            gw2 = targets.start_gateway(
                processes,
                work,
                api_base=fake.base,
                port=free_port(),
                database=nosync_db,
                cpus=SERVER_CPUS,
                name="gateway-nosync",
            )
            notes["gateway-nosync"] = [
                "the same gateway on a database with `synchronous_commit = off` (commits do not wait for the "
                "disk), to show how much of the added latency is this machine's fsync"
            ]
            print("gateway with synchronous_commit=off (diagnostic, 1 connection only)", flush=True)
            run_target(
                gw2,
                fake_root=fake_child.pid,
                warmup=warmup,
                duration=duration,
                results=results,
                only=NOSYNC_SCENARIOS,
            )
            assert gw2.child is not None
            processes.stop(gw2.child)

        if not args.quick:  # --- scaling, one hot user, the disk's commit cost (bench/scale.py) ---
            ctx = scale.Context(
                processes, work, fake, fake_child.pid, False, warmup, duration, results, notes, databases
            )
            scale_data = scale.run_scale(ctx)

        peers: list[tuple[str, str, PeerStart]] = []
        if proxy_python is not None:
            peers.append(("litellm-proxy", "the proxy", targets.start_proxy))
        if portkey_ready:
            peers.append(("portkey", "Portkey's gateway", portkey.start_portkey))
        for name, what, start in peers:
            try:
                peer = start(processes, work, api_base=fake.base, port=free_port(), cpus=SERVER_CPUS)
            except Exception as exc:
                notes[name] = [f"**not measured**: {what} did not start ({exc})"[:500]]
                print(notes[name][0], flush=True)
                continue
            notes[name] = peer.notes
            print(f"{name} {peer.base} (core 1)", flush=True)
            run_target(peer, fake_root=fake_child.pid, warmup=warmup, duration=duration, results=results)
            assert peer.child is not None
            processes.stop(peer.child)
    finally:
        processes.stop_all()
        for db in databases:
            if db:
                targets.drop_database(db)
        if args.keep:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    elapsed = time.monotonic() - started
    data = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": bool(args.quick),
        "warmup": warmup,
        "duration": duration,
        "elapsed": elapsed,
        "machine": report.machine(),
        "versions": report.versions(),
        "proxy_versions": targets.proxy_versions(),
        "portkey_versions": portkey.portkey_versions(),
        "revision": report.git_revision(),
        "notes": notes,
        "results": results,
        "other_before": idle_before,
        "streams_memory": memory,
        "profile": cpu_profile,
        **scale_data,
    }
    section = render_bench(data)
    print()
    print(section)
    out = args.out or (None if args.quick else report.DOC)
    if out is not None:
        sections = report.read_sections(out.read_text()) if out.exists() else {}
        soak = report.embedded(sections.get("soak"), "soak")
        report.write(out, {"bench": section, "targets": render_targets(data, soak)})
        print(f"wrote {out}")
    print(f"benchmark took {elapsed:.0f} s")
    errors = sum(r["errors"] for r in results) + streams_memory.errors(memory)
    return 1 if errors else 0


def run_soak(args: argparse.Namespace) -> int:
    """The soak, then its section (and the targets) in the markdown."""
    data = summarize_soak(soak(args))
    section = render_soak(data)
    print()
    print(section)
    out = args.out or report.DOC
    sections = report.read_sections(out.read_text()) if out.exists() else {}
    bench_data = report.embedded(sections.get("bench"), "bench")
    report.write(out, {"soak": section, "targets": render_targets(bench_data, data)})
    print(f"wrote {out}; soak took {data['elapsed']:.0f} s")
    return 1 if data["errors"] else 0


def render_existing(path: Path) -> int:
    """Rewrite the generated sections of `path` from the data embedded in them (no measuring)."""
    sections = report.read_sections(path.read_text()) if path.exists() else {}
    bench_data = report.embedded(sections.get("bench"), "bench")
    soak_data = report.embedded(sections.get("soak"), "soak")
    updates = {"targets": render_targets(bench_data, soak_data)}
    if bench_data:
        updates["bench"] = render_bench(bench_data)
    if soak_data:
        updates["soak"] = render_soak(soak_data)
    report.write(path, updates)
    print(f"re-rendered {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="~1 minute smoke run; prints, writes nothing unless --out"
    )
    ap.add_argument("--soak", type=float, metavar="SECONDS", help="soak the gateway for SECONDS")
    ap.add_argument("--soak-conns", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per scenario (default 2)")
    ap.add_argument("--skip-proxy", action="store_true", help="do not measure LiteLLM's proxy")
    ap.add_argument("--skip-portkey", action="store_true", help="do not measure Portkey's gateway")
    ap.add_argument("--skip-memory", action="store_true", help="do not measure memory per open stream")
    ap.add_argument(
        "--only-memory", action="store_true", help="only measure memory per open stream; writes nothing"
    )
    ap.add_argument("--only-scale", action="store_true", help="only the scaling runs (bench/scale.py)")
    ap.add_argument("--out", type=Path, help="markdown file to update (default docs/PERFORMANCE.md)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (configs and server logs)")
    ap.add_argument(
        "--render", action="store_true", help="only re-render the markdown from the data embedded in it"
    )
    ap.add_argument(
        "--wait-quiet", type=float, default=0.0, metavar="SECONDS",
        help="wait up to SECONDS for other processes to go idle before starting",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.render:
        return render_existing(args.out or report.DOC)
    if (os.cpu_count() or 1) < 2:
        print("this benchmark needs 2 cores (client on core 0, server on core 1)", file=sys.stderr)
        return 2
    if not shutil.which("taskset"):
        print("taskset (util-linux) is required", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, CLIENT_CPUS)  # the load generator; children are pinned explicitly
    procs.install_signal_handlers()
    open_streams.raise_fd_limit()  # before any server starts: they inherit it
    try:
        if args.only_memory:
            return streams_memory.run_only(quick=args.quick, keep=args.keep)
        if args.only_scale:
            return scale.run_only(args)
        return run_soak(args) if args.soak else run_bench(args)
    except KeyboardInterrupt:
        code = 130
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    print("interrupted; everything this run started has been stopped", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
