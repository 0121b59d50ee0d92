/* Dashboard: the key table (server-side paging, filter, sort; cards on a phone), key actions,
   health checks, the upstream banner, bulk add, delete, weights. */
"use strict";

(() => {
  const { api, el, toast, duration, ago, t, tOr, tn, num, money, clock } = orpoll;
  const $ = (id) => document.getElementById(id);
  const tbody = document.querySelector("#keys tbody");
  const view = { page: 1, totalPages: 1, skew: 0, loading: false, again: false,
    selected: new Set(), checking: new Set(), sweeping: false };
  const NONE = "—";  // an empty value: a mark, not a word

  function query() {
    const params = new URLSearchParams({
      page: view.page, limit: $("limit").value, sort: $("sort").value,
      status: $("status").value, q: $("q").value.trim(),
    });
    return "/admin/key-status?" + params;
  }

  /** Fetch and show the current page; a call during a fetch runs once more after it. */
  async function load() {
    if (view.loading) { view.again = true; return; }
    view.loading = true;
    try {
      const data = await api("GET", query());
      view.skew = data.now - Date.now() / 1000;
      view.totalPages = data.total_pages;
      if (view.page > data.total_pages) { view.page = data.total_pages; view.again = true; }
      else render(data);
    } catch (e) {
      toast(t("dash.load_failed", { detail: e.message }), "error");
    } finally {
      view.loading = false;
      if (view.again) { view.again = false; load(); }
    }
  }

  const humanize = (name) => (name.charAt(0).toUpperCase() + name.slice(1)).replace(/_/g, " ");
  const probeName = (result) => tOr("probe." + result, result.replace(/_/g, " "));

  /** Every request counter the server reports (new ones appear without a change here). */
  function renderTraffic(requests) {
    const parts = Object.entries(requests || {})
      .filter(([, value]) => typeof value === "number")
      .map(([name, value]) => tOr("traffic." + name, humanize(name)) + " " + num(value));
    $("traffic").textContent = parts.join(" · ");
  }

  function renderUpstream(up, now) {
    const banner = $("upstream-banner");
    banner.hidden = !(up && up.down);
    if (banner.hidden) return;
    const since = up.since ? t("upstream.since", { time: clock(up.since), duration: duration(now - up.since) }) : "";
    const reason = up.reason ? t("upstream.reason", { reason: up.reason }) : "";
    banner.textContent = t("upstream.down", { reason, since, retry: num(up.retry_after) });
  }

  /** Cut off from the other instances sharing the pool: this one serves from its own state. */
  function renderCluster(cluster, now) {
    const banner = $("cluster-banner");
    banner.hidden = !(cluster && cluster.backend !== "none" && !cluster.connected);
    if (banner.hidden) return;
    const since = cluster.since ? t("upstream.since", { time: clock(cluster.since), duration: duration(now - cluster.since) }) : "";
    const reason = cluster.error ? t("upstream.reason", { reason: cluster.error }) : "";
    banner.textContent = t("cluster.degraded", { backend: cluster.backend, reason, since });
  }

  /** "Checked 4 keys just now in 1.2 s: 3 ok, 1 invalid" from a sweep summary. */
  function sweepText(sweep, now) {
    const results = Object.entries(sweep.results || {}).sort((a, b) => b[1] - a[1])
      .map(([name, n]) => t("sweep.item", { n: num(n), result: probeName(name) }));
    const seconds = num(Number(sweep.seconds), { minimumFractionDigits: 1, maximumFractionDigits: 1 });
    return tn("sweep.done", sweep.probed, { ago: ago(now - sweep.at), seconds }) +
      (results.length ? t("sweep.results", { list: results.join(t("list.sep")) }) : "");
  }

  function render(data) {
    for (const node of document.querySelectorAll("[data-count]")) {
      const name = node.dataset.count;
      node.textContent = num(Number(data.counts[name]));
    }
    $("total").textContent = t("dash.total", { n: num(data.counts.total) });
    $("page-info").textContent = t("dash.page_info",
      { page: num(data.page), pages: num(data.total_pages), matching: num(data.total_keys) });
    const now = Date.now() / 1000 + view.skew;
    renderTraffic(data.requests);
    renderUpstream(data.upstream, now);
    renderCluster(data.cluster, now);
    if (!view.sweeping && data.health && data.health.at) {
      $("check-result").textContent = sweepText(data.health, now);
      $("check-result").hidden = false;
    }
    $("prev").disabled = data.page <= 1;
    $("next").disabled = data.page >= data.total_pages;
    tbody.replaceChildren(...data.keys.map(row));
    $("empty").hidden = data.keys.length > 0;
    syncSelection();
  }

  /** A table cell; ``label`` names the value when rows are shown as cards (phones). */
  function cell(label, className, ...children) {
    return el("td", { className }, label ? el("span", { className: "cell-label" }, label) : null, ...children);
  }

  function row(k) {
    const now = Date.now() / 1000 + view.skew;
    const check = el("input", { type: "checkbox", checked: view.selected.has(k.id),
      onchange: (e) => { e.target.checked ? view.selected.add(k.id) : view.selected.delete(k.id); syncSelection(); } });
    check.setAttribute("aria-label", t("key.select", { key: k.key_suffix }));
    const keyCell = el("td", { className: "key" },
      el("span", { className: "mono" }, k.key_suffix),
      k.label ? el("span", { className: "label-text" }, k.label) : null,
      el("span", { className: "id mono" }, k.id));
    const weight = el("input", { type: "number", min: 1, value: k.weight, className: "weight",
      onchange: (e) => setWeight(k, e.target) });
    weight.setAttribute("aria-label", t("key.weight_of", { key: k.key_suffix }));
    const err = k.last_error || k.last_status
      ? el("span", { className: "last-error", title: k.last_error },
          k.last_status ? el("b", {}, String(k.last_status)) : null, " ", k.last_error)
      : el("span", { className: "muted" }, NONE);
    return el("tr", { dataset: { id: k.id }, className: "status-" + k.status },
      el("td", { className: "sel" }, check),
      keyCell,
      cell(t("col.status"), "status-cell", statusCell(k, now)),
      cell(t("col.weight"), "num", weight),
      cell(t("col.requests"), "traffic", ...trafficCell(k)),
      cell(t("col.today"), "today", ...todayCell(k)),
      cell(t("col.inflight"), "inflight", k.inflight
        ? t("key.inflight", { n: num(k.inflight), age: duration(k.oldest_inflight_age || 0) }) : NONE),
      cell(t("col.last_error"), "error-cell", err),
      cell(t("col.last_used"), "nowrap", k.last_used ? ago(now - k.last_used) : t("time.never")),
      cell(t("col.probe"), "probe", ...probeCell(k, now)),
      cell(t("col.usage"), "usage", ...usageCell(k.credit)),
      el("td", { className: "account mono small", title: k.group },
        el("span", { className: "cell-label" }, t("col.account")), k.group || NONE),
      cell("", "actions", actions(k)));
  }

  /** Requests, failed requests and success share: three views of one count, never at odds. */
  function trafficCell(k) {
    if (!k.requests) return [el("span", { className: "muted" }, t("key.no_requests"))];
    const failed = k.errors
      ? el("span", { className: "warn-text" }, tn("key.failed", k.errors))
      : el("span", { className: "ok-text" }, t("key.none_failed"));
    const rate = num(k.success_rate, { style: "percent", minimumFractionDigits: 1, maximumFractionDigits: 1 });
    return [el("span", { className: "line" }, tn("key.requests", k.requests)),
      el("span", { className: "line small" }, failed, " · " + t("key.success", { rate }))];
  }

  /** Today's figures from the request log (UTC day): requests, failed, tokens, cost. */
  function todayCell(k) {
    if (!k.today_requests) return [el("span", { className: "muted" }, NONE)];
    const failed = { requests: num(k.today_requests), errors: num(k.today_errors) };
    const log = el("a", { href: "/admin/requests-log?key=" + encodeURIComponent(k.id), className: "small" },
      t("key.requests_log"));
    return [el("span", { className: "line" }, t("key.today", failed)),
      el("span", { className: "line small" },
        t("key.today_usage", { tokens: num(k.today_tokens), cost: money(k.today_cost) })),
      el("span", { className: "line" }, log)];
  }

  function probeCell(k, now) {
    if (view.checking.has(k.id)) return [el("span", { className: "muted" }, t("key.checking"))];
    const p = k.probe;
    if (!p) return [el("span", { className: "muted" }, t("time.never"))];
    const kind = p.result === "ok" || p.result === "readmitted" ? "ok-text"
      : p.result === "inconclusive" ? "warn-text" : "error-text";
    return [el("span", { className: "line" }, el("b", { className: kind }, probeName(p.result)),
        typeof p.latency_ms === "number" ? " · " + t("unit.ms", { n: num(Math.round(p.latency_ms)) }) : ""),
      el("span", { className: "line small muted" }, ago(now - p.at))];
  }

  function usageCell(c) {
    if (!c) return [el("span", { className: "muted" }, NONE)];
    const lines = [];
    const spend = [];
    if (typeof c.usage_daily === "number") spend.push(t("usage.today", { amount: money(c.usage_daily) }));
    if (typeof c.usage_monthly === "number") spend.push(t("usage.month", { amount: money(c.usage_monthly) }));
    if (spend.length) lines.push(spend.join(" · "));
    if (typeof c.limit === "number") {
      lines.push(typeof c.limit_remaining === "number"
        ? t("usage.limit_left", { limit: money(c.limit), left: money(c.limit_remaining) })
        : t("usage.limit", { limit: money(c.limit) }));
    } else if ("limit" in c) lines.push(t("usage.no_limit"));
    if (c.is_free_tier) lines.push(t("usage.free_tier"));
    return lines.length ? lines.map((text) => el("span", { className: "line" }, text))
      : [el("span", { className: "muted" }, NONE)];
  }

  function statusCell(k, now) {
    const badge = el("span", { className: "badge " + k.status }, tOr("status." + k.status, k.status));
    const parts = [badge];
    const until = k.cooldown_until || k.free_cooldown_until;
    if (until && until > now) {
      const free = k.cooldown_until ? "" : "free";
      parts.push(el("span", { className: "countdown", dataset: { until: String(until), free } },
        countdown(free, until - now)));
    }
    if (k.reason) {
      // The reason is the scheduler's or upstream's own words; the kind names it in the page's language.
      const reason = tOr("kind." + k.kind, k.reason, { reason: k.reason });
      parts.push(el("span", { className: "reason", title: reason }, reason));
    }
    if (k.failures) {
      parts.push(el("span", { className: "streak warn-text" }, tn("key.streak", k.failures)));
    }
    return el("div", { className: "status" }, ...parts);
  }

  /** A cooldown's time left; a free-model cooldown (":free" models only) says so. */
  const countdown = (free, left) =>
    free ? t("key.free_cooldown", { left: duration(left) }) : duration(left);

  const button = (text, onclick, className) =>
    el("button", { type: "button", className: "small" + (className ? " " + className : ""), onclick }, text);

  function actions(k) {
    const btns = [];
    if (!k.enabled) btns.push(button(t("action.resume"), () => keyAction(k, "enable")));
    else if (k.status === "disabled") btns.push(button(t("action.enable"), () => keyAction(k, "enable"), "primary"));
    else btns.push(button(t("action.pause"), () => keyAction(k, "disable")));
    if (k.status === "cooling") btns.push(button(t("action.readmit"), () => keyAction(k, "readmit")));
    const checking = view.checking.has(k.id);
    const probe = button(checking ? t("action.checking") : t("action.check"), (e) => checkKey(k, e.target));
    probe.disabled = checking;
    btns.push(probe, button(t("action.delete"), () => deleteOne(k), "danger"));
    return el("div", { className: "btns" }, ...btns);
  }

  /** Probe one key now; the row shows that it is checking until the result is in. */
  async function checkKey(k, btn) {
    view.checking.add(k.id);
    btn.disabled = true;
    btn.textContent = t("action.checking");
    try {
      const data = await api("POST", "/admin/keys/" + encodeURIComponent(k.id) + "/check");
      const p = data.key.probe;
      const latency = p && typeof p.latency_ms === "number"
        ? t("toast.latency", { ms: t("unit.ms", { n: num(Math.round(p.latency_ms)) }) }) : "";
      toast(t("toast.checked", { key: k.key_suffix, result: probeName(data.result), latency }),
        data.result === "error" ? "error" : "ok");
    } catch (e) { toast(e.message, "error"); } finally {
      view.checking.delete(k.id);
      load();
    }
  }

  const DONE = { enable: "toast.enable", disable: "toast.disable", readmit: "toast.readmit" };

  async function keyAction(k, action) {
    try {
      await api("POST", "/admin/keys/" + encodeURIComponent(k.id) + "/" + action);
      toast(t(DONE[action], { key: k.key_suffix }), "ok");
      load();
    } catch (e) { toast(e.message, "error"); }
  }

  async function setWeight(k, input) {
    const weight = Number(input.value);
    try {
      await api("POST", "/admin/keys/" + encodeURIComponent(k.id) + "/weight", { weight });
      k.weight = weight;
      toast(t("toast.weight", { key: k.key_suffix, weight: num(weight) }), "ok");
    } catch (e) {
      input.value = k.weight;
      toast(e.message, "error");
    }
  }

  async function deleteOne(k) {
    if (!confirm(t("confirm.delete_one", { key: k.key_suffix, id: k.id }))) return;
    try {
      await api("DELETE", "/admin/delete-key/" + encodeURIComponent(k.id));
      view.selected.delete(k.id);
      toast(t("toast.deleted_one", { key: k.key_suffix }), "ok");
      load();
    } catch (e) { toast(e.message, "error"); }
  }

  async function deleteSelected() {
    const ids = [...view.selected];
    if (!ids.length || !confirm(tn("confirm.delete_many", ids.length))) return;
    try {
      const data = await api("POST", "/admin/delete-keys-batch", { ids });
      view.selected.clear();
      toast(tn("toast.deleted_many", data.deleted_count), "ok");
      load();
    } catch (e) { toast(e.message, "error"); }
  }

  function syncSelection() {
    const boxes = tbody.querySelectorAll(".sel input");
    $("select-all").checked = boxes.length > 0 && [...boxes].every((b) => b.checked);
    $("delete-selected").disabled = view.selected.size === 0;
    $("delete-selected").textContent = view.selected.size
      ? t("dash.delete_selected_n", { n: num(view.selected.size) }) : t("dash.delete_selected");
  }

  async function addKeys() {
    const text = $("bulk").value;
    if (!text.trim()) return;
    $("add").disabled = true;
    try {
      const r = await api("POST", "/admin/add-keys", { key_data: text });
      $("add-result").textContent = t("add.result",
        { added: num(r.added_count), duplicate: num(r.duplicate_count), invalid: num(r.invalid_count) });
      $("add-result").className = "result " + (r.invalid_count ? "warn-text" : "ok-text");
      $("add-errors").replaceChildren(...r.error_messages.map((m) => el("li", {}, m)));
      $("add-notes").replaceChildren(...(r.notes || []).map((m) => el("li", {}, t("add.note", { note: m }))));
      // Keep the refused lines (the server names them by number, never echoing a key).
      const lines = text.split("\n");
      $("bulk").value = (r.rejected_lines || []).map((n) => lines[n - 1]).join("\n");
      load();
    } catch (e) {
      $("add-result").textContent = e.message;
      $("add-result").className = "result error-text";
    } finally {
      $("add").disabled = false;
    }
  }

  function tick() {
    const now = Date.now() / 1000 + view.skew;
    for (const node of document.querySelectorAll(".countdown")) {
      const left = Number(node.dataset.until) - now;
      node.textContent = left > 0 ? countdown(node.dataset.free, left) : t("key.ending");
    }
  }

  let searchTimer = 0;
  $("q").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(() => { view.page = 1; load(); }, 250); });
  for (const id of ["status", "sort", "limit"]) $(id).addEventListener("change", () => { view.page = 1; load(); });
  $("prev").addEventListener("click", () => { view.page = Math.max(1, view.page - 1); load(); });
  $("next").addEventListener("click", () => { view.page = Math.min(view.totalPages, view.page + 1); load(); });
  $("add").addEventListener("click", addKeys);
  $("delete-selected").addEventListener("click", deleteSelected);
  $("select-all").addEventListener("change", (e) => {
    for (const box of tbody.querySelectorAll(".sel input")) {
      box.checked = e.target.checked;
      const id = box.closest("tr").dataset.id;
      e.target.checked ? view.selected.add(id) : view.selected.delete(id);
    }
    syncSelection();
  });
  $("check-all").addEventListener("click", async () => {
    const out = $("check-result");
    $("check-all").disabled = true;
    view.sweeping = true;
    out.textContent = t("check.running");
    out.className = "result small";
    out.hidden = false;
    try {
      const r = await api("POST", "/admin/check-keys");
      out.textContent = sweepText(r, Date.now() / 1000 + view.skew);
      toast(tn("check.toast", r.probed), "ok");
    } catch (e) {
      out.textContent = t("check.failed", { detail: e.message });
      out.className = "result small error-text";
    } finally {
      $("check-all").disabled = false;
      view.sweeping = false;
      load();
    }
  });

  setInterval(tick, 1000);
  setInterval(() => {
    const editing = document.activeElement && document.activeElement.classList.contains("weight");
    if ($("auto").checked && !editing && !document.hidden) load();
  }, 5000);
  load();
})();
