"""Portkey's open-source AI gateway (`@portkey-ai/gateway` from npm, on the machine's Node) as a peer.

It is installed once into bench/.portkey/ (gitignored) and run as its own Node server,
`start-server.js --port=N --headless` (no UI). It has no model list: each request says where to
go in its headers (`x-portkey-provider`, `x-portkey-custom-host`) and carries the provider's key,
so the model is the fake provider's behaviour string, as for direct calls.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from bench.procs import Processes, wait_http
from bench.targets import ANTHROPIC_MODELS, MODELS, PROVIDER_KEY, ROOT, Target, base_env

PORTKEY_DIR = ROOT / "bench" / ".portkey"
PORTKEY_PACKAGE = "@portkey-ai/gateway"
PORTKEY_VERSION = "1.15.2"
# The versions the gateway's own package-lock.json (tag v1.15.2) has for its HTTP stack. The
# package's ranges (`^1.3.3`) would pull a newer @hono/node-server, which hands Portkey upstream
# responses with immutable headers: every stream then fails with `TypeError: immutable`
# (Portkey-AI/gateway#1389).
PINNED_DEPENDENCIES = {"@hono/node-server": "1.13.5", "@hono/node-ws": "1.2.0", "hono": "4.9.7"}
ENTRY = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
# @hono/node-server listens on every interface and takes no host from the command line; this
# preload makes a listen without a host bind 127.0.0.1 instead.
LOOPBACK_PRELOAD = """\
import net from "node:net";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, host, ...rest) {
  const loopback = typeof port === "number" && host === undefined;
  return listen.call(this, port, loopback ? "127.0.0.1" : host, ...rest);
};
"""


def _manifest() -> str:
    """bench/.portkey/package.json: the gateway at its pinned version, its HTTP stack pinned too."""
    manifest = {
        "name": "llm-gateway-bench-portkey",
        "private": True,
        "dependencies": {PORTKEY_PACKAGE: PORTKEY_VERSION},
        "overrides": PINNED_DEPENDENCIES,
    }
    return json.dumps(manifest, indent=2) + "\n"


def ensure_portkey() -> Path:
    """The gateway's entry script under bench/.portkey/, installed with npm on first use."""
    if not shutil.which("node") or not shutil.which("npm"):
        raise RuntimeError("node and npm are required (Debian: apt-get install nodejs npm)")
    manifest = _manifest()
    stamp = PORTKEY_DIR / f".installed-portkey-ai_gateway-{PORTKEY_VERSION}"
    if ENTRY.exists() and stamp.exists() and stamp.read_text() == manifest:
        return ENTRY
    print(f"  installing {PORTKEY_PACKAGE}@{PORTKEY_VERSION} into {PORTKEY_DIR.relative_to(ROOT)} (once)")
    PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    (PORTKEY_DIR / "package.json").write_text(manifest)
    # Its one install script is patch-package, whose patches are not in the published package.
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
        cwd=PORTKEY_DIR,
        check=True,
    )
    if not ENTRY.exists():
        raise RuntimeError(f"npm installed no {ENTRY.relative_to(PORTKEY_DIR)}")
    stamp.write_text(manifest)
    return ENTRY


def start_portkey(procs: Processes, work: Path, *, api_base: str, port: int, cpus: set[int]) -> Target:
    """`node start-server.js --port=N --headless` on 127.0.0.1, pinned to `cpus` (its threads too)."""
    entry = ensure_portkey()
    pk = work / "portkey"
    pk.mkdir(parents=True, exist_ok=True)
    preload = pk / "listen-loopback.mjs"
    preload.write_text(LOOPBACK_PRELOAD)
    node = shutil.which("node") or "node"
    cmd = [node, "--import", str(preload), str(entry), f"--port={port}", "--headless"]
    env = base_env(NODE_ENV="production")
    child = procs.start("portkey", cmd, env=env, cwd=pk, log_path=pk / "portkey.log", cpus=cpus)
    wait_http(f"http://127.0.0.1:{port}/", child=child, timeout=60, ok=lambda s: s == 200)
    return Target(
        name="portkey",
        base=f"http://127.0.0.1:{port}/v1",
        key=PROVIDER_KEY,
        models={**MODELS, **ANTHROPIC_MODELS},
        child=child,
        headers={"x-portkey-provider": "openai", "x-portkey-custom-host": api_base},
        protocol_headers={"messages": {"x-portkey-provider": "anthropic"}},
        notes=[
            "Node, its own server (`start-server.js --headless`, `NODE_ENV=production`): no config, "
            "routed per request by headers (`x-portkey-provider: openai`, or `anthropic` for Messages; "
            "`x-portkey-custom-host:` the fake provider); chat, Responses and Messages all pass "
            "through to the fake provider, so every scenario is measured",
            "its stream handler waits 25 ms before passing on each stream's first event "
            "(`src/handlers/streamHandler.ts`): that is most of its added TTFT, and it holds each "
            "connection to at most 40 streams/s",
        ],
    )


def portkey_versions() -> dict[str, str]:
    """Node and the installed gateway's packages (empty when it is not installed)."""
    if not ENTRY.exists() or not shutil.which("node"):
        return {}
    res = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    out = {"node": res.stdout.strip().removeprefix("v")}
    for name in (PORTKEY_PACKAGE, *PINNED_DEPENDENCIES):
        try:
            meta = json.loads((PORTKEY_DIR / "node_modules" / name / "package.json").read_text())
        except (OSError, ValueError):
            continue
        out[name] = str(meta.get("version", "?"))
    return out
