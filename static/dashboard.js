/* Dashboard: the key table (server-side paging, filter, sort; cards on a phone), key actions,
   health checks, the upstream banner, bulk add, delete, weights. */
"use strict";

(() => {
  const { api, el, toast, duration, ago } = orpoll;
  const $ = (id) => document.getElementById(id);
  const tbody = document.querySelector("#keys tbody");
  const view = { page: 1, totalPages: 1, skew: 0, loading: false, again: false,
    selected: new Set(), checking: new Set(), sweeping: false };
  const STATUS_TEXT = { available: "Available", cooling: "Cooling", disabled: "Disabled", paused: "Paused" };

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
      toast("Could not load keys: " + e.message, "error");
    } finally {
      view.loading = false;
      if (view.again) { view.again = false; load(); }
    }
  }

  const SHOWN_IN_CARDS = new Set(["requests_last_hour", "errors_last_hour"]);
  const humanize = (name) => (name.charAt(0).toUpperCase() + name.slice(1)).replace(/_/g, " ");

  /** Every request counter the server reports (new ones appear without a change here). */
  function renderTraffic(requests) {
    const parts = Object.entries(requests || {})
      .filter(([name, value]) => !SHOWN_IN_CARDS.has(name) && typeof value === "number")
      .map(([name, value]) => humanize(name) + " " + value.toLocaleString());
    $("traffic").textContent = parts.join(" · ");
  }

  function renderUpstream(up, now) {
    const banner = $("upstream-banner");
    banner.hidden = !(up && up.down);
    if (banner.hidden) return;
    const since = up.since ? " since " + new Date(up.since * 1000).toLocaleTimeString() +
      " (" + duration(now - up.since) + ")" : "";
    banner.textContent = "OpenRouter is unreachable" + (up.reason ? ": " + up.reason : "") + since +
      ". Clients are told to retry in " + up.retry_after + " s; no key is blamed for it.";
  }

  /** "Checked 4 keys just now in 1.2 s: 3 ok, 1 invalid" from a sweep summary. */
  function sweepText(sweep, now) {
    const results = Object.entries(sweep.results || {}).sort((a, b) => b[1] - a[1])
      .map(([name, n]) => n + " " + name.replace(/_/g, " "));
    return "Checked " + sweep.probed + (sweep.probed === 1 ? " key " : " keys ") + ago(now - sweep.at) + " in " +
      Number(sweep.seconds).toFixed(1) + " s" + (results.length ? ": " + results.join(", ") : "");
  }

  function render(data) {
    for (const node of document.querySelectorAll("[data-count]")) {
      const name = node.dataset.count;
      const value = name in data.counts ? data.counts[name] : data.requests[name];
      node.textContent = Number(value).toLocaleString();
    }
    $("total").textContent = "(" + data.counts.total.toLocaleString() + ")";
    $("page-info").textContent = "Page " + data.page + " of " + data.total_pages +
      " · " + data.total_keys.toLocaleString() + " matching";
    const now = Date.now() / 1000 + view.skew;
    renderTraffic(data.requests);
    renderUpstream(data.upstream, now);
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

  const money = (v) => "$" + Number(v).toFixed(2);

  function row(k) {
    const now = Date.now() / 1000 + view.skew;
    const check = el("input", { type: "checkbox", checked: view.selected.has(k.id),
      onchange: (e) => { e.target.checked ? view.selected.add(k.id) : view.selected.delete(k.id); syncSelection(); } });
    check.setAttribute("aria-label", "Select " + k.key_suffix);
    const keyCell = el("td", { className: "key" },
      el("span", { className: "mono" }, k.key_suffix),
      k.label ? el("span", { className: "label-text" }, k.label) : null,
      el("span", { className: "id mono" }, k.id));
    const weight = el("input", { type: "number", min: 1, value: k.weight, className: "weight",
      onchange: (e) => setWeight(k, e.target) });
    weight.setAttribute("aria-label", "Weight of " + k.key_suffix);
    const err = k.last_error || k.last_status
      ? el("span", { className: "last-error", title: k.last_error },
          k.last_status ? el("b", {}, String(k.last_status)) : null, " ", k.last_error)
      : el("span", { className: "muted" }, "—");
    return el("tr", { dataset: { id: k.id }, className: "status-" + k.status },
      el("td", { className: "sel" }, check),
      keyCell,
      cell("Status", "status-cell", statusCell(k, now)),
      cell("Weight", "num", weight),
      cell("Requests", "traffic", ...trafficCell(k)),
      cell("In flight", "inflight", k.inflight
        ? k.inflight + " · oldest " + duration(k.oldest_inflight_age || 0) : "—"),
      cell("Last error", "error-cell", err),
      cell("Last used", "nowrap", k.last_used ? ago(now - k.last_used) : "never"),
      cell("Probe", "probe", ...probeCell(k, now)),
      cell("Usage", "usage", ...usageCell(k.credit)),
      el("td", { className: "account mono small", title: k.group },
        el("span", { className: "cell-label" }, "Account"), k.group || "—"),
      cell("", "actions", actions(k)));
  }

  /** Requests, failed requests and success share: three views of one count, never at odds. */
  function trafficCell(k) {
    if (!k.requests) return [el("span", { className: "muted" }, "none yet")];
    const failed = k.errors
      ? el("span", { className: "warn-text" }, k.errors.toLocaleString() + " failed")
      : el("span", { className: "ok-text" }, "none failed");
    return [el("span", { className: "line" }, k.requests.toLocaleString() + (k.requests === 1 ? " request" : " requests")),
      el("span", { className: "line small" }, failed, " · " + (100 * k.success_rate).toFixed(1) + "% ok")];
  }

  function probeCell(k, now) {
    if (view.checking.has(k.id)) return [el("span", { className: "muted" }, "checking…")];
    const p = k.probe;
    if (!p) return [el("span", { className: "muted" }, "never")];
    const kind = p.result === "ok" || p.result === "readmitted" ? "ok-text"
      : p.result === "inconclusive" ? "warn-text" : "error-text";
    return [el("span", { className: "line" }, el("b", { className: kind }, p.result),
        typeof p.latency_ms === "number" ? " · " + Math.round(p.latency_ms) + " ms" : ""),
      el("span", { className: "line small muted" }, ago(now - p.at))];
  }

  function usageCell(c) {
    if (!c) return [el("span", { className: "muted" }, "—")];
    const lines = [];
    const spend = [];
    if (typeof c.usage_daily === "number") spend.push("today " + money(c.usage_daily));
    if (typeof c.usage_monthly === "number") spend.push("month " + money(c.usage_monthly));
    if (spend.length) lines.push(spend.join(" · "));
    if (typeof c.limit === "number") {
      lines.push("limit " + money(c.limit) +
        (typeof c.limit_remaining === "number" ? " (" + money(c.limit_remaining) + " left)" : ""));
    } else if ("limit" in c) lines.push("no limit");
    if (c.is_free_tier) lines.push("free tier");
    return lines.length ? lines.map((t) => el("span", { className: "line" }, t))
      : [el("span", { className: "muted" }, "—")];
  }

  function statusCell(k, now) {
    const badge = el("span", { className: "badge " + k.status }, STATUS_TEXT[k.status] || k.status);
    const parts = [badge];
    const until = k.cooldown_until || k.free_cooldown_until;
    if (until && until > now) {
      parts.push(el("span", { className: "countdown", dataset: { until: String(until) } },
        (k.cooldown_until ? "" : ":free ") + duration(until - now)));
    }
    if (k.reason) parts.push(el("span", { className: "reason", title: k.reason }, k.reason));
    if (k.failures) {
      parts.push(el("span", { className: "streak warn-text" },
        k.failures + (k.failures === 1 ? " failure" : " failures") + " in a row"));
    }
    return el("div", { className: "status" }, ...parts);
  }

  const button = (text, onclick, className) =>
    el("button", { type: "button", className: "small" + (className ? " " + className : ""), onclick }, text);

  function actions(k) {
    const btns = [];
    if (!k.enabled) btns.push(button("Resume", () => keyAction(k, "enable")));
    else if (k.status === "disabled") btns.push(button("Enable", () => keyAction(k, "enable"), "primary"));
    else btns.push(button("Pause", () => keyAction(k, "disable")));
    if (k.status === "cooling") btns.push(button("Readmit", () => keyAction(k, "readmit")));
    const checking = view.checking.has(k.id);
    const probe = button(checking ? "Checking…" : "Check", (e) => checkKey(k, e.target));
    probe.disabled = checking;
    btns.push(probe, button("Delete", () => deleteOne(k), "danger"));
    return el("div", { className: "btns" }, ...btns);
  }

  /** Probe one key now; the row shows "Checking…" until the result is in. */
  async function checkKey(k, btn) {
    view.checking.add(k.id);
    btn.disabled = true;
    btn.textContent = "Checking…";
    try {
      const data = await api("POST", "/admin/keys/" + encodeURIComponent(k.id) + "/check");
      const p = data.key.probe;
      const latency = p && typeof p.latency_ms === "number" ? " (" + Math.round(p.latency_ms) + " ms)" : "";
      toast(k.key_suffix + ": check " + data.result + latency, data.result === "error" ? "error" : "ok");
    } catch (e) { toast(e.message, "error"); } finally {
      view.checking.delete(k.id);
      load();
    }
  }

  const DONE = { enable: "enabled", disable: "paused", readmit: "readmitted: its cooldown ended" };

  async function keyAction(k, action) {
    try {
      await api("POST", "/admin/keys/" + encodeURIComponent(k.id) + "/" + action);
      toast(k.key_suffix + ": " + DONE[action], "ok");
      load();
    } catch (e) { toast(e.message, "error"); }
  }

  async function setWeight(k, input) {
    const weight = Number(input.value);
    try {
      await api("POST", "/admin/keys/" + encodeURIComponent(k.id) + "/weight", { weight });
      k.weight = weight;
      toast("Weight of " + k.key_suffix + " set to " + weight, "ok");
    } catch (e) {
      input.value = k.weight;
      toast(e.message, "error");
    }
  }

  async function deleteOne(k) {
    if (!confirm("Delete key " + k.key_suffix + " (" + k.id + ")?")) return;
    try {
      await api("DELETE", "/admin/delete-key/" + encodeURIComponent(k.id));
      view.selected.delete(k.id);
      toast("Deleted " + k.key_suffix, "ok");
      load();
    } catch (e) { toast(e.message, "error"); }
  }

  async function deleteSelected() {
    const ids = [...view.selected];
    if (!ids.length || !confirm("Delete " + ids.length + " selected keys?")) return;
    try {
      const data = await api("POST", "/admin/delete-keys-batch", { ids });
      view.selected.clear();
      toast("Deleted " + data.deleted_count + " keys", "ok");
      load();
    } catch (e) { toast(e.message, "error"); }
  }

  function syncSelection() {
    const boxes = tbody.querySelectorAll(".sel input");
    $("select-all").checked = boxes.length > 0 && [...boxes].every((b) => b.checked);
    $("delete-selected").disabled = view.selected.size === 0;
    $("delete-selected").textContent = view.selected.size
      ? "Delete selected (" + view.selected.size + ")" : "Delete selected";
  }

  async function addKeys() {
    const text = $("bulk").value;
    if (!text.trim()) return;
    $("add").disabled = true;
    try {
      const r = await api("POST", "/admin/add-keys", { key_data: text });
      $("add-result").textContent = r.added_count + " added · " + r.duplicate_count +
        " duplicate · " + r.invalid_count + " invalid";
      $("add-result").className = "result " + (r.invalid_count ? "warn-text" : "ok-text");
      $("add-errors").replaceChildren(...r.error_messages.map((m) => el("li", {}, m)));
      $("add-notes").replaceChildren(...(r.notes || []).map((m) => el("li", {}, "Note: " + m)));
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
      node.textContent = left > 0 ? (node.textContent.startsWith(":free") ? ":free " : "") + duration(left) : "ending";
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
    out.textContent = "Checking every enabled key…";
    out.className = "result small";
    out.hidden = false;
    try {
      const r = await api("POST", "/admin/check-keys");
      out.textContent = sweepText(r, Date.now() / 1000 + view.skew);
      toast("Checked " + r.probed + " keys", "ok");
    } catch (e) {
      out.textContent = "Check failed: " + e.message;
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
