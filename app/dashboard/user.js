// /dashboard: a user's balance, spend, calls and keys, on the gateway's own API.
"use strict";

(() => {
  const { api, h, fill, loading, errorBox, money, isZero, addMoney, int, time } = Gw;
  const $ = (id) => document.getElementById(id);
  const PAGE = 20;
  let config = { currency: "USD", stripe: false, supabase: null };
  let cred = null; // {token, kind: "key" | "session", label}
  let supabase = null;
  let offset = 0;

  const call = (path, opts = {}) => api(path, { ...opts, token: cred && cred.token });
  const origin = () => window.location.origin;

  // -- sign-in -------------------------------------------------------------------------------

  function showTab(name) {
    for (const t of ["key", "session", "supabase"]) {
      $("tab-" + t).setAttribute("aria-selected", String(t === name));
      $("form-" + t).hidden = t !== name;
    }
    fill($("signin-msg"));
  }

  async function signIn(token, kind, label) {
    const msg = $("signin-msg");
    loading(msg, "Checking…");
    try {
      const balance = await api("/billing/balance", { token });
      cred = { token, kind, label: label || balance.user_id };
      Gw.credentials.set("user", cred);
      fill(msg);
      start(balance);
    } catch (e) {
      errorBox(msg, e);
    }
  }

  function signedOut(message) {
    cred = null;
    Gw.credentials.clear("user");
    $("app").hidden = true;
    $("signin").hidden = false;
    $("who").hidden = $("signout").hidden = true;
    if (message) errorBox($("signin-msg"), { message });
  }

  function loadSupabase() {
    return new Promise((resolve, reject) => {
      if (window.supabase) return resolve(window.supabase);
      const s = document.createElement("script");
      s.src = "/dashboard/assets/vendor/supabase.js";
      s.onload = () => resolve(window.supabase);
      s.onerror = () => reject(new Error("The Supabase client could not be loaded."));
      document.head.append(s);
    });
  }

  async function setupSupabase() {
    if (!config.supabase) return;
    $("tab-supabase").hidden = false;
    const lib = await loadSupabase();
    // sessionStorage: the session lives as long as the tab, like the other credentials.
    supabase = lib.createClient(config.supabase.url, config.supabase.anon_key, {
      auth: { storage: window.sessionStorage, persistSession: true, detectSessionInUrl: true, flowType: "implicit" },
    });
    supabase.auth.onAuthStateChange((event, session) => {
      if (session && session.access_token && (!cred || cred.kind !== "session" || cred.token !== session.access_token)) {
        signIn(session.access_token, "session", session.user && session.user.email);
      }
    });
  }

  async function supabaseSignIn(ev) {
    ev.preventDefault();
    const msg = $("signin-msg");
    const email = $("sb-email").value.trim();
    const password = $("sb-password").value;
    loading(msg, "Signing in…");
    try {
      if (password) {
        const { data, error } = await supabase.auth.signInWithPassword({ email, password });
        if (error) throw new Error(error.message);
        await signIn(data.session.access_token, "session", email);
      } else {
        const { error } = await supabase.auth.signInWithOtp({ email, options: { emailRedirectTo: origin() + "/dashboard" } });
        if (error) throw new Error(error.message);
        fill(msg, h("div", { class: "notice ok" }, `Check ${email}: the link in it signs you in here.`));
      }
    } catch (e) {
      errorBox(msg, e);
    }
  }

  // -- the page ------------------------------------------------------------------------------

  function start(balance) {
    $("signin").hidden = true;
    $("app").hidden = false;
    $("who").hidden = $("signout").hidden = false;
    $("who").textContent = `${cred.label} · ${cred.kind === "session" ? "session" : "API key"}`;
    $("topup").hidden = !config.stripe;
    offset = 0;
    renderBalance(balance);
    loadUsage();
    loadCalls();
    loadKeys();
  }

  function stat(label, value, { sub, cls } = {}) {
    return h("div", { class: "card stat " + (cls || "") },
      h("div", { class: "label" }, label),
      h("div", { class: "value", "data-testid": "stat-" + label.toLowerCase().replace(/\W+/g, "-") }, value === null ? h("span", { class: "nodata" }, "no data") : money(value), value === null ? null : h("span", { class: "unit" }, config.currency)),
      sub ? h("div", { class: "sub" }, sub) : null);
  }

  function renderBalance(b) {
    const held = addMoney([b.balance, "-" + b.available]);
    fill($("stats"),
      stat("Balance", b.balance, { sub: isZero(held) ? "nothing held for calls in flight" : `${money(held)} held for calls in flight`, cls: isZero(b.balance) ? "zero" : "" }),
      stat("Available", b.available, { sub: "what new calls can spend" }),
      stat("Debt", b.debt, { cls: isZero(b.debt) ? "zero" : "debt", sub: isZero(b.debt) ? "none" : "refunded payments; calls are refused until a top-up pays it" }),
      h("div", { class: "card stat", id: "stat-spend" }, h("div", { class: "label" }, "Spent, 30 days"), h("div", { class: "loading" }, "Loading…")));
    fill($("banner"), isZero(b.balance) && isZero(b.debt)
      ? h("div", { class: "notice info" }, config.stripe ? "Your balance is empty: top up below to make calls." : "Your balance is empty: ask the operator for credit to make calls.")
      : null);
  }

  async function loadUsage() {
    const start = Gw.isoDaysAgo(29);
    loading($("chart-day"));
    loading($("chart-model"));
    const q = (g) => call(`/billing/usage?group_by=${g}&start=${encodeURIComponent(start)}`);
    const [byDay, byModel] = await Promise.allSettled([q("day"), q("model")]);
    const spend = $("stat-spend");
    if (byDay.status === "rejected") {
      errorBox($("chart-day"), byDay.reason);
      fill(spend, h("div", { class: "label" }, "Spent, 30 days"), h("div", { class: "value" }, h("span", { class: "nodata" }, "no data")));
    } else {
      const rows = byDay.value.rows;
      const total = addMoney(rows.map((r) => r.cost));
      const calls = rows.reduce((a, r) => a + r.requests, 0);
      fill(spend, h("div", { class: "label" }, "Spent, 30 days"),
        h("div", { class: "value", "data-testid": "stat-spent" }, money(total), h("span", { class: "unit" }, config.currency)),
        h("div", { class: "sub" }, `${int(calls)} call${calls === 1 ? "" : "s"}`));
      if (!rows.length) {
        fill($("chart-day"), h("div", { class: "empty" }, "No spend in the last 30 days yet: make a call and it shows here."));
      } else {
        const byDate = new Map(rows.map((r) => [r.day, r]));
        const points = [];
        for (let i = 29; i >= 0; i--) {
          const day = Gw.isoDaysAgo(i).slice(0, 10);
          const r = byDate.get(day);
          points.push({ label: day, value: r ? r.cost : "0", requests: r ? r.requests : 0 });
        }
        Charts.columns($("chart-day"), points, { currency: config.currency });
      }
    }
    if (byModel.status === "rejected") {
      errorBox($("chart-model"), byModel.reason);
    } else if (!byModel.value.rows.length) {
      fill($("chart-model"), h("div", { class: "empty" }, "No calls to any model yet."));
    } else {
      const rows = [...byModel.value.rows].sort((a, b) => Number(b.cost) - Number(a.cost));
      Charts.bars($("chart-model"), rows.map((r) => ({ name: r.model || "(unknown)", value: r.cost })), { currency: config.currency });
    }
  }

  function curlExample() {
    return `curl ${origin()}/v1/chat/completions \\\n  -H "Authorization: Bearer $GATEWAY_API_KEY" \\\n  -H "Content-Type: application/json" \\\n  -d '{"model": "MODEL", "messages": [{"role": "user", "content": "Hello!"}]}'`;
  }

  async function loadCalls(more = false) {
    const box = $("calls");
    if (!more) { offset = 0; loading(box, "Loading recent calls…"); }
    try {
      const data = await call(`/billing/transactions?limit=${PAGE}&offset=${offset}`);
      const rows = data.transactions;
      if (!more && !rows.length) {
        fill(box, h("div", { class: "empty" }, "No calls yet: try this curl, then reload.", h("pre", {}, curlExample())));
        fill($("calls-more"));
        return;
      }
      let tbody = box.querySelector("tbody");
      if (!more || !tbody) {
        tbody = h("tbody");
        fill(box, h("div", { class: "table-wrap" }, h("table", { id: "calls-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "What"), h("th", { class: "num hide-narrow" }, "Tokens in → out"), h("th", { class: "num" }, `Amount (${config.currency})`))),
          tbody)));
      }
      for (const t of rows) tbody.append(callRow(t));
      offset += rows.length;
      fill($("calls-more"), rows.length === PAGE ? h("button", { class: "link", onclick: () => loadCalls(true) }, "Older…") : null);
    } catch (e) {
      errorBox(box, e);
    }
  }

  function callRow(t) {
    const isCall = !!t.request_id;
    const negative = String(t.amount).startsWith("-");
    const tokens = t.prompt_tokens === null || t.prompt_tokens === undefined ? "—" : `${int(t.prompt_tokens)} → ${int(t.completion_tokens)}`;
    return h("tr", { class: isCall ? "clickable" : "", tabindex: isCall ? "0" : null, "data-request-id": t.request_id || null,
      onclick: isCall ? () => openDetail(t.request_id) : null,
      onkeydown: isCall ? (e) => { if (e.key === "Enter") openDetail(t.request_id); } : null },
    h("td", {}, time(t.timestamp)),
    h("td", {}, isCall ? h("span", { class: "mono" }, t.model || "call") : h("span", {}, t.description),
      isCall ? null : h("span", { class: "pill ok" }, " credit ")),
    h("td", { class: "num hide-narrow" }, isCall ? tokens : ""),
    h("td", { class: "num " + (negative ? "neg" : "pos"), "data-testid": "amount" }, (negative ? "" : "+") + money(t.amount)));
  }

  async function openDetail(requestId) {
    const dialog = $("detail");
    const body = $("detail-body");
    loading(body, "Loading the call…");
    if (!dialog.open) dialog.showModal();
    try {
      const r = await call(`/billing/requests/${encodeURIComponent(requestId)}`);
      const usage = Object.entries(r.usage || {}).filter(([, v]) => v !== null && v !== 0);
      const statusPill = { charged: "ok", held: "warn", released: "" }[r.status];
      fill(body, h("dl", { class: "kv", id: "detail-kv" },
        h("dt", {}, "Request id"), h("dd", { class: "mono" }, r.request_id),
        h("dt", {}, "Status"), h("dd", {}, h("span", { class: "pill " + (statusPill || "") }, r.status)),
        h("dt", {}, "Model"), h("dd", { class: "mono" }, r.model || "—"),
        h("dt", {}, "Deployment"), h("dd", { class: "mono" }, r.deployment || "—"),
        h("dt", {}, "Cost"), h("dd", { "data-testid": "detail-cost" }, r.cost === null ? h("span", { class: "nodata" }, "not settled yet") : `${money(r.cost)} ${r.currency}`),
        h("dt", {}, "Held"), h("dd", {}, r.hold === null ? "—" : `${money(r.hold)} ${r.currency}`),
        isZero(r.uncollected || "0") ? null : [h("dt", {}, "Uncollected"), h("dd", {}, `${money(r.uncollected)} ${r.currency}`)],
        h("dt", {}, "Usage"), h("dd", {}, usage.length ? usage.map(([k, v]) => `${k.replace(/_/g, " ")}: ${int(v)}`).join(" · ") : h("span", { class: "nodata" }, "no usage reported")),
        h("dt", {}, "Started"), h("dd", {}, time(r.created)),
        h("dt", {}, "Settled"), h("dd", {}, r.settled ? time(r.settled) : "—")));
    } catch (e) {
      errorBox(body, e);
    }
  }

  // -- keys ----------------------------------------------------------------------------------

  function keyCreateForm() {
    if (cred.kind !== "session") {
      return h("div", { class: "notice info" }, "Signed in with an API key: you can see your keys here. To create or revoke keys, sign in with a session (email or session token).");
    }
    const form = h("form", { class: "inline", id: "key-form" },
      h("label", { class: "field grow" }, "Name", h("input", { id: "key-name", required: true, maxlength: "200", placeholder: "e.g. laptop" })),
      h("label", { class: "field small" }, "Budget", h("input", { id: "key-budget", inputmode: "decimal", placeholder: "none" })),
      h("label", { class: "field small" }, "per", h("select", { id: "key-period" }, ["month", "week", "day", "total"].map((p) => h("option", { value: p }, p)))),
      h("label", { class: "field small" }, "Expires", h("input", { id: "key-expires", type: "date" })),
      h("label", { class: "field grow" }, "Models (comma-separated)", h("input", { id: "key-models", placeholder: "all" })),
      h("button", { class: "primary", type: "submit" }, "Create key"));
    form.addEventListener("submit", createKey);
    return [form, h("div", { id: "key-msg" })];
  }

  async function createKey(ev) {
    ev.preventDefault();
    const msg = $("key-msg");
    const body = { name: $("key-name").value.trim() };
    const budget = $("key-budget").value.trim();
    if (budget) body.budget = { amount: budget, period: $("key-period").value };
    const expires = $("key-expires").value;
    if (expires) body.expires_at = new Date(expires + "T23:59:59Z").toISOString();
    const models = $("key-models").value.split(",").map((m) => m.trim()).filter(Boolean);
    if (models.length) body.models = models;
    loading(msg, "Creating…");
    try {
      const r = await call("/account/keys", { method: "POST", body });
      const btn = h("button", { type: "button" }, "Copy");
      btn.addEventListener("click", () => Gw.copy(r.key, btn));
      fill(msg, h("div", { class: "notice ok" }, `Key “${r.name}” created. Copy it now: it is shown only once.`,
        h("div", { class: "secret" }, h("code", { id: "new-key" }, r.key), btn)));
      $("key-form").reset();
      loadKeys(false);
    } catch (e) {
      errorBox(msg, e);
    }
  }

  async function loadKeys(withForm = true) {
    if (withForm) fill($("keys-create"), keyCreateForm());
    const box = $("keys");
    loading(box, "Loading keys…");
    try {
      const { keys } = await call("/account/keys");
      if (!keys.length) {
        fill(box, h("div", { class: "empty" }, cred.kind === "session" ? "No keys yet: create one above to call the API." : "No keys listed."));
        return;
      }
      const session = cred.kind === "session";
      fill(box, h("div", { class: "table-wrap" }, h("table", { id: "keys-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", { class: "hide-narrow" }, "Key id"), h("th", {}, "Budget"), h("th", { class: "hide-narrow" }, "Expires"), h("th", { class: "hide-narrow" }, "Models"), h("th", {}, "Status"), session ? h("th", {}, "") : null)),
        h("tbody", {}, [...keys].reverse().map((k) => keyRow(k, session))))));
    } catch (e) {
      errorBox(box, e);
    }
  }

  function keyRow(k, session) {
    const expired = k.expires_at && new Date(k.expires_at) < new Date();
    const status = k.revoked ? h("span", { class: "pill bad" }, "revoked") : expired ? h("span", { class: "pill warn" }, "expired") : h("span", { class: "pill ok" }, "active");
    const budget = k.budget ? `${money(k.budget.spent)} of ${money(k.budget.amount)} ${config.currency} / ${k.budget.period}` : "no limit";
    return h("tr", { "data-key-id": k.key_id },
      h("td", {}, k.name || h("span", { class: "nodata" }, "unnamed")),
      h("td", { class: "mono hide-narrow" }, k.key_id),
      h("td", {}, budget),
      h("td", { class: "hide-narrow" }, k.expires_at ? time(k.expires_at) : "never"),
      h("td", { class: "hide-narrow" }, k.models ? k.models.join(", ") : "all"),
      h("td", {}, status),
      session ? h("td", { class: "num" }, k.revoked ? null : h("button", { class: "danger", onclick: () => revokeKey(k) }, "Revoke")) : null);
  }

  async function revokeKey(k) {
    if (!window.confirm(`Revoke “${k.name || k.key_id}”? Calls with it stop working at once.`)) return;
    try {
      await call(`/account/keys/${encodeURIComponent(k.key_id)}`, { method: "DELETE" });
      loadKeys(false);
    } catch (e) {
      errorBox($("keys"), e);
    }
  }

  // -- top-up and export ---------------------------------------------------------------------

  async function topUp(ev) {
    ev.preventDefault();
    const msg = $("topup-msg");
    loading(msg, "Opening Stripe Checkout…");
    try {
      const r = await call("/billing/checkout", { method: "POST", body: { amount: $("topup-amount").value.trim() } });
      window.location.assign(r.url);
    } catch (e) {
      errorBox(msg, e);
    }
  }

  async function exportCsv() {
    const btn = $("csv");
    btn.disabled = true;
    btn.textContent = "Exporting…";
    try {
      const response = await call("/billing/transactions.csv?limit=10000", { raw: true });
      const url = URL.createObjectURL(await response.blob());
      const a = h("a", { href: url, download: "transactions.csv" });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      errorBox($("calls-more"), e);
    } finally {
      btn.disabled = false;
      btn.textContent = "Export CSV";
    }
  }

  // -- start ---------------------------------------------------------------------------------

  async function boot() {
    for (const t of ["key", "session", "supabase"]) $("tab-" + t).addEventListener("click", () => showTab(t));
    $("form-key").addEventListener("submit", (e) => { e.preventDefault(); signIn($("api-key").value.trim(), "key"); });
    $("form-session").addEventListener("submit", (e) => { e.preventDefault(); signIn($("session-token").value.trim(), "session"); });
    $("form-supabase").addEventListener("submit", supabaseSignIn);
    $("signout").addEventListener("click", async () => { if (supabase) await supabase.auth.signOut(); signedOut(); fill($("signin-msg")); });
    $("topup-form").addEventListener("submit", topUp);
    $("csv").addEventListener("click", exportCsv);
    $("detail-close").addEventListener("click", () => $("detail").close());
    try {
      config = await api("/dashboard/config.json");
    } catch (e) { /* defaults: no Stripe, no Supabase */ }
    try {
      await setupSupabase();
    } catch (e) {
      errorBox($("signin-msg"), e);
    }
    const saved = Gw.credentials.get("user");
    if (saved) {
      cred = saved;
      try {
        start(await call("/billing/balance"));
      } catch (e) {
        signedOut(e.status === 401 ? "Your sign-in has expired; sign in again." : e.message);
      }
    } else {
      $("signin").hidden = false;
    }
  }

  boot();
})();
