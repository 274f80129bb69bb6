"""A stand-in for Supabase's REST API: the part of PostgREST that supabase-py uses, on real Postgres.

Requests are answered the way PostgREST answers them: functions are called with named arguments
converted from the JSON body by Postgres (json_to_record), rows are rendered to JSON by Postgres
itself (so a numeric is a JSON number with every digit), and errors carry the SQLSTATE as `code`
with PostgREST's HTTP status. Every request is recorded so tests can check what a client sent.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_SELECT_ITEM = re.compile(rf"^(?:({_NAME}):)?({_NAME})(?:::({_NAME}(?: {_NAME})*(?:\[\])?))?$")
_ORDER_ITEM = re.compile(rf"^({_NAME})(?:\.(asc|desc))?(?:\.(nullsfirst|nullslast))?$")
_IDENT = re.compile(rf"^{_NAME}$")
_NOT_FILTERS = {"select", "order", "limit", "offset", "columns", "on_conflict"}
_OPERATORS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_IS_VALUES = {"null": "null", "true": "true", "false": "false", "unknown": "unknown"}
# PostgREST's table from SQLSTATE to HTTP status (docs/errors.rst); first match wins.
_STATUS = [
    ("08", 503), ("09", 500), ("0L", 403), ("0P", 403), ("23503", 409), ("23505", 409),
    ("25006", 405), ("25", 500), ("28", 403), ("2D", 500), ("38", 500), ("39", 500),
    ("3B", 500), ("40", 500), ("53", 503), ("54", 413), ("55", 500), ("57", 500), ("58", 500),
    ("F0", 500), ("HV", 500), ("P0001", 400), ("P0", 500), ("XX", 500), ("42883", 404),
    ("42P01", 404), ("42501", 401),
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class PgrstError(Exception):
    def __init__(self, status: int, code: str | None, message: str, hint: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.hint = status, code, message, hint


def _quote(name: str) -> str:
    if not _IDENT.match(name):
        raise PgrstError(400, "PGRST100", f'"{name}" is not a plain identifier')
    return f'"{name}"'


def _status_for(sqlstate: str) -> int:
    return next((status for prefix, status in _STATUS if sqlstate.startswith(prefix)), 400)


def _error_body(code: str | None, message: str, details: str | None, hint: str | None) -> str:
    return json.dumps({"code": code, "details": details, "hint": hint, "message": message})


class _Relation:
    """Columns (name -> SQL type) of something rows are read from: a table or a function call."""

    def __init__(self, columns: Mapping[str, str], qualifier: str) -> None:
        self.columns, self.qualifier = dict(columns), qualifier

    def name(self, name: str) -> str:
        if name not in self.columns:
            raise PgrstError(400, "42703", f"column {name} does not exist")
        return _quote(name)

    def col(self, name: str) -> str:
        return f"{self.qualifier}.{self.name(name)}"

    def select_list(self, spec: str | None) -> str:
        items = []
        for raw in (spec or "*").split(","):
            raw = raw.strip()
            if raw == "*":
                items.append(f"{self.qualifier}.*")
                continue
            match = _SELECT_ITEM.match(raw)
            if match is None:
                raise PgrstError(400, "PGRST100", f"cannot parse select item {raw!r}")
            alias, name, cast = match.groups()
            expr = f"{self.col(name)}::{cast}" if cast else self.col(name)
            items.append(f"{expr} as {_quote(alias or name)}")
        return ", ".join(items)

    def where(self, query: Iterable[tuple[str, str]], args: list[str]) -> str:
        conds = []
        for key, value in query:
            if key in _NOT_FILTERS:
                continue
            negate = value.startswith("not.")
            op, _, operand = value.removeprefix("not.").partition(".")
            if op == "is" and operand in _IS_VALUES:
                cond = f"{self.col(key)} is {_IS_VALUES[operand]}"
            elif op in _OPERATORS:
                args.append(operand)
                cond = f"{self.col(key)} {_OPERATORS[op]} (${len(args)}::text)::{self.columns[key]}"
            else:
                raise PgrstError(400, "PGRST100", f"unsupported filter {key}={value}")
            conds.append(f"not ({cond})" if negate else cond)
        return f" where {' and '.join(conds)}" if conds else ""

    def tail(self, params: Mapping[str, str]) -> str:
        sql = ""
        if order := params.get("order"):
            terms = []
            for term in order.split(","):
                match = _ORDER_ITEM.match(term)
                if match is None:
                    raise PgrstError(400, "PGRST100", f"cannot parse order {term!r}")
                name, direction, nulls = match.groups()
                nulls_sql = {"nullsfirst": " nulls first", "nullslast": " nulls last"}
                terms.append(f"{self.col(name)} {direction or 'asc'}{nulls_sql.get(nulls, '')}")
            sql += " order by " + ", ".join(terms)
        for key in ("limit", "offset"):
            if key in params:
                if not params[key].isdigit():
                    raise PgrstError(400, "PGRST100", f"{key} must be a number")
                sql += f" {key} {int(params[key])}"
        return sql


def _as_json_array(select: str) -> str:
    return f"select coalesce(json_agg(_r), '[]')::text from ({select}) _r"


class PostgrestShim:
    """PostgREST's HTTP API for the `public` schema of one database, served from a thread."""

    def __init__(self, dsn: str, service_key: str) -> None:
        self._dsn = dsn
        self._key = service_key
        self.requests: list[RecordedRequest] = []
        self._canned: list[tuple[int, str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: asyncpg.Pool | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, status: int, body: str, *, content_type: str = "application/json") -> None:
        """Answer the next request with this response instead of running it."""
        self._canned.append((status, body, content_type))

    def start(self) -> PostgrestShim:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
        self._loop = self._thread = None

    async def _start(self) -> None:
        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=25)
        app = web.Application()
        app.router.add_route("*", "/rest/v1/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._pool is not None:
            await self._pool.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.text()
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=list(request.query.items()),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        if request.headers.get("apikey") != self._key:
            message = '{"message":"Invalid API key","hint":"Double check your Supabase API key."}'
            return web.Response(status=401, text=message, content_type="application/json")
        if request.headers.get("Authorization") != f"Bearer {self._key}":
            text = _error_body("PGRST301", "JWSError JWSInvalidSignature", None, None)
            return web.Response(status=401, text=text, content_type="application/json")
        if self._canned:
            status, text, content_type = self._canned.pop(0)
            return web.Response(status=status, text=text, content_type=content_type)
        try:
            return await self._dispatch(request, json.loads(body) if body else None)
        except PgrstError as exc:
            text = _error_body(exc.code, exc.message, None, exc.hint)
            return web.Response(status=exc.status, text=text, content_type="application/json")
        except asyncpg.PostgresError as exc:
            text = _error_body(exc.sqlstate, exc.message, exc.detail, exc.hint)
            status = _status_for(exc.sqlstate or "")
            return web.Response(status=status, text=text, content_type="application/json")

    async def _dispatch(self, request: web.Request, payload: Any) -> web.Response:
        path = request.match_info["path"]
        prefer = request.headers.get("Prefer", "")
        representation = "return=representation" in prefer
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            if path.startswith("rpc/") and request.method == "POST":
                text = await self._rpc(conn, path.removeprefix("rpc/"), payload, request.query)
                return web.Response(text=text, content_type="application/json")
            if path.startswith("rpc/"):
                raise PgrstError(405, "PGRST101", "only POST is supported for functions here")
            table = _quote(path)
            rel = _Relation(await self._table_columns(conn, path), "_t")
            args: list[str] = []
            if request.method in ("GET", "HEAD"):
                select = f"select {rel.select_list(request.query.get('select'))}"
                sql = f"{select} from public.{table} _t{rel.where(request.query.items(), args)}"
                text = await conn.fetchval(_as_json_array(sql + rel.tail(request.query)), *args)
                return web.Response(text=text, content_type="application/json")
            if request.method == "POST":
                rows = payload if isinstance(payload, list) else [payload]
                listed = request.query.get("columns", "").replace('"', "")
                names = listed.split(",") if listed else list(rows[0])
                cols = ", ".join(rel.name(n) for n in names)
                write = (
                    f"insert into public.{table} as _t ({cols}) select {cols}"
                    f" from json_populate_recordset(null::public.{table}, $1::json) returning _t.*"
                )
                status = 201
            elif request.method == "PATCH":
                if not isinstance(payload, dict) or not payload:
                    raise PgrstError(400, "PGRST102", "PATCH needs a JSON object")
                args.append(json.dumps(payload))
                sets = ", ".join(f"{rel.name(n)} = _b.{rel.name(n)}" for n in payload)
                write = (
                    f"update public.{table} as _t set {sets}"
                    f" from json_populate_record(null::public.{table}, $1::json) _b"
                    f"{rel.where(request.query.items(), args)} returning _t.*"
                )
                status = 200
            else:
                raise PgrstError(405, "PGRST117", f"{request.method} is not supported here")
            if request.method == "POST":
                args.append(json.dumps(rows))
            select = f"select {rel.select_list(request.query.get('select'))} from _w _t"
            text = await conn.fetchval(f"with _w as ({write}) {_as_json_array(select)}", *args)
            if not representation:
                return web.Response(status=201 if status == 201 else 204)
            return web.Response(status=status, text=text, content_type="application/json")

    async def _table_columns(self, conn: asyncpg.Connection, table: str) -> dict[str, str]:
        rows = await conn.fetch(
            "select a.attname, format_type(a.atttypid, a.atttypmod) as type from pg_attribute a"
            " join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = 'public' and c.relname = $1 and c.relkind in ('r', 'v', 'p')"
            " and a.attnum > 0 and not a.attisdropped order by a.attnum",
            table,
        )
        if not rows:
            raise PgrstError(404, "PGRST205", f"Could not find the table 'public.{table}'")
        return {r["attname"]: r["type"] for r in rows}

    async def _rpc(self, conn: asyncpg.Connection, name: str, payload: Any, query: Mapping[str, str]) -> str:
        if not isinstance(payload, dict):
            raise PgrstError(400, "PGRST102", "the body of a function call must be a JSON object")
        procs = await conn.fetch(
            "select p.proretset, p.pronargdefaults, p.proargnames,"
            " coalesce(p.proargmodes::text[], array_fill('i'::text, array[p.pronargs])) as modes,"
            " array(select format_type(t, null) from unnest(coalesce(p.proallargtypes,"
            " p.proargtypes::oid[])) with ordinality u(t, i) order by i) as types"
            " from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = 'public' and p.proname = $1",
            name,
        )
        given = set(payload)
        for proc in procs:
            names = proc["proargnames"] or []
            params = [(n, t) for n, t, m in zip(names, proc["types"], proc["modes"]) if m in "ibv"]
            outs = {n: t for n, t, m in zip(names, proc["types"], proc["modes"]) if m in "obt"}
            required = {n for n, _ in params[: len(params) - proc["pronargdefaults"]]}
            if required <= given <= {n for n, _ in params}:
                break
        else:
            raise PgrstError(
                404,
                "PGRST202",
                f"Could not find the function public.{name}({', '.join(sorted(given))})",
                "Perhaps you meant to call another function",
            )
        fn = f"public.{_quote(name)}"
        call_args = ", ".join(f"{_quote(n)} := _a.{_quote(n)}" for n, _ in params if n in given)
        record = ", ".join(f"{_quote(n)} {t}" for n, t in params if n in given)
        source = f"json_to_record($1::json) as _a({record}), lateral " if given else ""
        args = [json.dumps(payload)] if given else []
        if not proc["proretset"]:
            select = f"select to_json({fn}({call_args}))::text"
            sql = f"{select} from json_to_record($1::json) as _a({record})" if given else select
            text: str = await conn.fetchval(sql, *args)
            return text
        rel = _Relation(outs, "_f")
        select = f"select {rel.select_list(query.get('select'))} from {source}{fn}({call_args}) _f"
        sql = select + rel.where(query.items(), args) + rel.tail(query)
        text = await conn.fetchval(_as_json_array(sql), *args)
        return text
