// Shared by both pages: the credential (kept in sessionStorage, sent only as a header), calls to the
// gateway's own API with money kept as exact decimal strings, DOM helpers and formatting.
"use strict";

const Gw = (() => {
  const MONEY_KEYS = new Set([
    "balance", "available", "debt", "amount", "cost", "hold", "uncollected", "reserved", "spent", "threshold",
  ]);

  // JSON numbers under money keys stay as the text the gateway wrote ("0.00012", never 0.00011999...).
  function parseJson(text) {
    return JSON.parse(text, function (key, value, context) {
      if (typeof value === "number" && MONEY_KEYS.has(key)) {
        return context && typeof context.source === "string" ? context.source : String(value);
      }
      return value;
    });
  }

  const credentials = {
    get(scope) {
      const raw = sessionStorage.getItem("gw." + scope);
      return raw ? JSON.parse(raw) : null;
    },
    set(scope, value) { sessionStorage.setItem("gw." + scope, JSON.stringify(value)); },
    clear(scope) { sessionStorage.removeItem("gw." + scope); },
  };

  class ApiError extends Error {
    constructor(message, status, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function plainWords(status, body) {
    const err = body && body.error ? body.error : null;
    const said = err && err.message ? err.message : "";
    if (status === 401) return "This credential was not accepted (unknown, expired or revoked). " + said;
    if (status === 403) return said || "This credential is not allowed to do that.";
    if (status === 429) return "Too many requests for now; wait a moment and try again.";
    if (status >= 500) return "The gateway could not answer (" + status + "). " + (said || "Try again shortly.");
    return said || "The request failed (" + status + ").";
  }

  async function api(path, { method = "GET", body, token, raw = false } = {}) {
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit", cache: "no-store",
      });
    } catch (e) {
      throw new ApiError("The gateway cannot be reached. Is it running?", 0, "network");
    }
    if (raw && response.ok) return response;
    const text = await response.text();
    let data = null;
    try { data = text ? parseJson(text) : null; } catch (e) { data = null; }
    if (!response.ok) {
      throw new ApiError(plainWords(response.status, data).trim(), response.status, data && data.error ? data.error.code : null);
    }
    return data;
  }

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function fill(el, ...children) {
    el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
    return el;
  }

  function loading(el, text) { return fill(el, h("div", { class: "loading", role: "status" }, text || "Loading…")); }
  function errorBox(el, err) { return fill(el, h("div", { class: "notice error", role: "alert" }, err.message || String(err))); }

  // Exact: string operations only. "1234.5" -> "1,234.50"; "0.00012" stays "0.00012".
  function money(value) {
    if (value === null || value === undefined) return "—";
    let s = String(value);
    let sign = "";
    if (s.startsWith("-")) { sign = "−"; s = s.slice(1); }
    let [int, frac = ""] = s.split(".");
    if (frac.length < 2) frac = frac.padEnd(2, "0");
    int = int.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return sign + int + "." + frac;
  }

  function isZero(value) { return value !== null && value !== undefined && /^-?0*(\.0*)?$/.test(String(value)); }

  // Sum exact decimal strings (8 places are enough for the ledger) with BigInt.
  function addMoney(values) {
    const SCALE = 8;
    let total = 0n;
    for (const v of values) {
      let s = String(v);
      const neg = s.startsWith("-");
      if (neg) s = s.slice(1);
      const [int, frac = ""] = s.split(".");
      const n = BigInt(int || "0") * 10n ** BigInt(SCALE) + BigInt((frac + "0".repeat(SCALE)).slice(0, SCALE) || "0");
      total += neg ? -n : n;
    }
    const neg = total < 0n;
    if (neg) total = -total;
    const digits = total.toString().padStart(SCALE + 1, "0");
    let out = digits.slice(0, -SCALE) + "." + digits.slice(-SCALE);
    out = out.replace(/0+$/, "").replace(/\.$/, "");
    return (neg ? "-" : "") + out;
  }

  function int(n) { return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"); }

  function time(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  function isoDaysAgo(days) {
    const d = new Date();
    d.setUTCHours(0, 0, 0, 0);
    d.setUTCDate(d.getUTCDate() - days);
    return d.toISOString();
  }

  async function copy(text, button) {
    try {
      await navigator.clipboard.writeText(text);
      if (button) { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 1500); }
    } catch (e) {
      if (button) button.textContent = "Select and copy";
    }
  }

  return { api, parseJson, credentials, ApiError, h, fill, loading, errorBox, money, isZero, addMoney, int, time, isoDaysAgo, copy };
})();
