// /dashboard/admin: users and their money, credit and limits, deployments' health, spend over time.
"use strict";

(() => {
  const { api, h, fill, loading, errorBox, money, isZero, addMoney, int } = Gw;
  const $ = (id) => document.getElementById(id);
  let token = null;
  let currency = "USD";
  const call = (path, opts = {}) => api(path, { ...opts, token });

  function stat(label, value, sub, cls) {
    return h("div", { class: "card stat " + (cls || "") }, h("div", { class: "label" }, label),
      h("div", { class: "value", "data-testid": "stat-" + label.toLowerCase().replace(/\W+/g, "-") }, value === null ? h("span", { class: "nodata" }, "no data") : value),
      sub ? h("div", { class: "sub" }, sub) : null);
  }
  const cash = (v) => [money(v), h("span", { class: "unit" }, currency)];

  async function signIn(key) {
    const msg = $("signin-msg");
    loading(msg, "Checking…");
    try {
      await api("/admin/users?limit=1", { token: key });
      token = key;
      Gw.credentials.set("admin", { token });
      fill(msg);
      start();
    } catch (e) {
      errorBox(msg, e.status === 401 ? { message: "That is not this gateway's admin key." } : e);
    }
  }

  function signedOut(message) {
    token = null;
    Gw.credentials.clear("admin");
    $("app").hidden = true;
    $("signin").hidden = false;
    $("signout").hidden = $("refresh").hidden = true;
    fill($("signin-msg"), message ? h("div", { class: "notice error" }, message) : null);
  }

  // The four figures at the top, each filled in by whichever call brings it.
  const SLOTS = [["users", "Users"], ["balances", "Balances"], ["debt", "Debt"], ["spend", "Spent, 30 days"]];
  function put(slot, card) {
    card.id = "slot-" + slot;
    $("slot-" + slot).replaceWith(card);
  }

  function start() {
    fill($("stats"), SLOTS.map(([slot, label]) => h("div", { class: "card stat", id: "slot-" + slot }, h("div", { class: "label" }, label), h("div", { class: "loading" }, "Loading…"))));
    $("signin").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = $("refresh").hidden = false;
    loadAll();
  }

  function loadAll() {
    loadUsers();
    loadSpend();
    loadDeployments();
  }

  async function loadUsers() {
    const box = $("users");
    loading(box, "Loading users…");
    try {
      const { users } = await call("/admin/users?limit=1000");
      const total = addMoney(users.map((u) => u.balance));
      const debt = addMoney(users.map((u) => u.debt));
      const owing = users.filter((u) => !isZero(u.debt)).length;
      put("users", stat("Users", int(users.length), users.length === 1000 ? "first 1,000 shown" : null));
      put("balances", stat("Balances", cash(total), "sum of every prepaid balance"));
      put("debt", stat("Debt", cash(debt), owing ? `${owing} user${owing === 1 ? "" : "s"} owing` : "nobody owes", isZero(debt) ? "zero" : "debt"));
      if (!users.length) {
        fill(box, h("div", { class: "empty" }, "No users yet: create one with",
          h("pre", {}, `curl -X POST ${location.origin}/admin/users \\\n  -H "Authorization: Bearer $ADMIN_API_KEY" -H "Content-Type: application/json" \\\n  -d '{"user_id": "alice", "balance": "10"}'`)));
        return;
      }
      const limit = (v) => (v === null ? h("span", { class: "nodata" }, "default") : int(v));
      fill(box, h("div", { class: "table-wrap" }, h("table", { id: "users-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "User"), h("th", { class: "num" }, "Balance"), h("th", { class: "num hide-narrow" }, "Held"), h("th", { class: "num" }, "Debt"), h("th", { class: "num hide-narrow" }, "RPM"), h("th", { class: "num hide-narrow" }, "RPH"), h("th", { class: "num hide-narrow" }, "TPM"))),
        h("tbody", {}, users.map((u) => h("tr", { class: "clickable", tabindex: "0", "data-user-id": u.user_id, onclick: () => select(u) },
          h("td", { class: "mono" }, u.user_id),
          h("td", { class: "num", "data-testid": "balance" }, money(u.balance)),
          h("td", { class: "num hide-narrow" }, money(u.reserved)),
          h("td", { class: "num" }, isZero(u.debt) ? h("span", { class: "nodata" }, "—") : h("span", { class: "pill bad" }, money(u.debt))),
          h("td", { class: "num hide-narrow" }, limit(u.rpm_limit)),
          h("td", { class: "num hide-narrow" }, limit(u.rph_limit)),
          h("td", { class: "num hide-narrow" }, limit(u.tpm_limit))))))));
    } catch (e) {
      if (e.status === 401) return signedOut("The admin key is no longer accepted; sign in again.");
      errorBox(box, e);
    }
  }

  function select(u) {
    $("credit-user").value = u.user_id;
    $("limits-user").value = u.user_id;
    $("limits-rpm").value = u.rpm_limit ?? "";
    $("limits-rph").value = u.rph_limit ?? "";
    $("limits-tpm").value = u.tpm_limit ?? "";
    $("credit-amount").focus();
  }

  async function loadSpend() {
    const start = encodeURIComponent(Gw.isoDaysAgo(29));
    loading($("chart-day"));
    loading($("chart-model"));
    const [byDay, byModel] = await Promise.allSettled([
      call(`/admin/usage?group_by=day&start=${start}`), call(`/admin/usage?group_by=model&start=${start}`),
    ]);
    if (byDay.status === "rejected") {
      errorBox($("chart-day"), byDay.reason);
      put("spend", stat("Spent, 30 days", null));
    } else {
      const rows = byDay.value.rows;
      const calls = rows.reduce((a, r) => a + r.requests, 0);
      put("spend", stat("Spent, 30 days", cash(addMoney(rows.map((r) => r.cost))), `${int(calls)} call${calls === 1 ? "" : "s"}`));
      if (!rows.length) {
        fill($("chart-day"), h("div", { class: "empty" }, "No calls in the last 30 days."));
      } else {
        const byDate = new Map(rows.map((r) => [r.day, r]));
        const points = [];
        for (let i = 29; i >= 0; i--) {
          const day = Gw.isoDaysAgo(i).slice(0, 10);
          const r = byDate.get(day);
          points.push({ label: day, value: r ? r.cost : "0", requests: r ? r.requests : 0 });
        }
        Charts.columns($("chart-day"), points, { currency });
      }
    }
    if (byModel.status === "rejected") {
      errorBox($("chart-model"), byModel.reason);
    } else if (!byModel.value.rows.length) {
      fill($("chart-model"), h("div", { class: "empty" }, "No calls to any model yet."));
    } else {
      const rows = [...byModel.value.rows].sort((a, b) => Number(b.cost) - Number(a.cost));
      Charts.bars($("chart-model"), rows.map((r) => ({ name: `${r.model} · ${int(r.requests)} calls`, value: r.cost })), { currency });
    }
  }

  async function loadDeployments() {
    const box = $("deployments");
    loading(box, "Loading deployments…");
    const [breakers, detailed] = await Promise.allSettled([call("/health/circuit-breakers"), call("/health/detailed")]);
    if (detailed.status === "fulfilled") {
      const d = detailed.value;
      const failing = d.checks.filter((c) => c.status !== "ok").map((c) => c.name);
      fill($("health-summary"), h("span", { class: "pill " + (failing.length ? "bad" : "ok"), id: "health-status" },
        failing.length ? `degraded: ${failing.join(", ")}` : `healthy · store ${d.store}`));
    } else {
      fill($("health-summary"), h("span", { class: "pill bad" }, "health unknown"));
    }
    if (breakers.status === "rejected") return errorBox(box, breakers.reason);
    const deps = breakers.value.deployments;
    if (!deps.length) return fill(box, h("div", { class: "empty" }, "No deployments: add models to the config file (GATEWAY_CONFIG)."));
    const byModel = new Map();
    for (const d of deps) byModel.set(d.model_name, [...(byModel.get(d.model_name) || []), d]);
    fill(box, h("div", { class: "table-wrap" }, h("table", { id: "deployments-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", {}, "Deployment"), h("th", {}, "State"))),
      h("tbody", {}, [...byModel.entries()].flatMap(([model, list]) => list.map((d, i) => h("tr", { "data-deployment-id": d.deployment_id },
        h("td", { class: "mono" }, i === 0 ? model : ""),
        h("td", { class: "mono" }, d.deployment_id),
        h("td", {}, d.state === "open" ? h("span", { class: "pill bad" }, "cooling down") : h("span", { class: "pill ok" }, "serving")))))))));
  }

  async function credit(ev) {
    ev.preventDefault();
    const msg = $("credit-msg");
    const user = $("credit-user").value.trim();
    const body = { amount: $("credit-amount").value.trim(), idempotency_key: "dash-" + crypto.randomUUID() };
    const description = $("credit-desc").value.trim();
    if (description) body.description = description;
    loading(msg, "Applying…");
    try {
      const r = await call(`/admin/users/${encodeURIComponent(user)}/credits`, { method: "POST", body });
      fill(msg, h("div", { class: "notice ok" }, `${r.user_id}'s balance is now ${money(r.balance)} ${currency}.`));
      $("credit-amount").value = "";
      loadUsers();
    } catch (e) {
      errorBox(msg, e);
    }
  }

  async function limits(ev) {
    ev.preventDefault();
    const msg = $("limits-msg");
    const user = $("limits-user").value.trim();
    const body = {};
    for (const [k, id] of [["rpm_limit", "limits-rpm"], ["rph_limit", "limits-rph"], ["tpm_limit", "limits-tpm"]]) {
      const v = $(id).value.trim();
      if (v !== "" && !/^\d+$/.test(v)) return errorBox(msg, { message: "Limits are whole numbers, or empty for the default." });
      body[k] = v === "" ? null : Number(v);
    }
    loading(msg, "Saving…");
    try {
      const r = await call(`/admin/users/${encodeURIComponent(user)}/limits`, { method: "PUT", body });
      fill(msg, h("div", { class: "notice ok" }, `Saved for ${r.user_id}.`));
      loadUsers();
    } catch (e) {
      errorBox(msg, e);
    }
  }

  async function boot() {
    $("form-admin").addEventListener("submit", (e) => { e.preventDefault(); signIn($("admin-key").value.trim()); });
    $("signout").addEventListener("click", () => signedOut());
    $("refresh").addEventListener("click", loadAll);
    $("credit-form").addEventListener("submit", credit);
    $("limits-form").addEventListener("submit", limits);
    try { currency = (await api("/dashboard/config.json")).currency; } catch (e) { /* keep the default */ }
    const saved = Gw.credentials.get("admin");
    if (saved) { token = saved.token; start(); } else { $("signin").hidden = false; }
  }

  boot();
})();
