/* Dashboard: the key table (server-side paging, filter, sort), bulk add, delete, weights. */
"use strict";

(() => {
  const { api, el, toast, duration, ago } = orpoll;
  const $ = (id) => document.getElementById(id);
  const tbody = document.querySelector("#keys tbody");
  const view = { page: 1, totalPages: 1, skew: 0, loading: false, selected: new Set() };
  const STATUS_TEXT = { available: "Available", cooling: "Cooling", disabled: "Disabled", paused: "Paused" };

  function query() {
    const params = new URLSearchParams({
      page: view.page, limit: $("limit").value, sort: $("sort").value,
      status: $("status").value, q: $("q").value.trim(),
    });
    return "/admin/key-status?" + params;
  }

  async function load() {
    if (view.loading) return;
    view.loading = true;
    try {
      const data = await api("GET", query());
      view.skew = data.now - Date.now() / 1000;
      view.totalPages = data.total_pages;
      if (view.page > data.total_pages) { view.page = data.total_pages; view.loading = false; return load(); }
      render(data);
    } catch (e) {
      toast("Could not load keys: " + e.message, "error");
    } finally {
      view.loading = false;
    }
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
    $("prev").disabled = data.page <= 1;
    $("next").disabled = data.page >= data.total_pages;
    tbody.replaceChildren(...data.keys.map(row));
    $("empty").hidden = data.keys.length > 0;
    syncSelection();
  }

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
    const credit = k.credit && typeof k.credit.limit_remaining === "number"
      ? "$" + k.credit.limit_remaining.toFixed(2) : "—";
    return el("tr", { dataset: { id: k.id }, className: "status-" + k.status },
      el("td", { className: "sel" }, check),
      keyCell,
      el("td", {}, statusCell(k, now)),
      el("td", { className: "num" }, weight),
      el("td", { className: "num" + (k.failures ? " warn-text" : "") }, k.failures),
      el("td", { className: "error-cell" }, err),
      el("td", { className: "nowrap" }, k.last_used ? ago(now - k.last_used) : "never"),
      el("td", { className: "num" }, k.requests.toLocaleString()),
      el("td", { className: "num" }, k.success_rate === null ? "—" : (100 * k.success_rate).toFixed(1) + "%"),
      el("td", { className: "num" }, credit),
      el("td", { className: "account mono small", title: k.group }, k.group || "—"),
      el("td", { className: "actions" }, actions(k)));
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
    return el("div", { className: "status" }, ...parts);
  }

  function actions(k) {
    const toggle = k.enabled
      ? el("button", { type: "button", className: "small", onclick: () => keyAction(k, "disable") }, "Pause")
      : el("button", { type: "button", className: "small", onclick: () => keyAction(k, "enable") }, "Resume");
    return el("div", { className: "btns" }, toggle,
      el("button", { type: "button", className: "small", onclick: () => keyAction(k, "check") }, "Check"),
      el("button", { type: "button", className: "small danger", onclick: () => deleteOne(k) }, "Delete"));
  }

  async function keyAction(k, action) {
    try {
      const data = await api("POST", "/admin/keys/" + encodeURIComponent(k.id) + "/" + action);
      toast(k.key_suffix + ": " + (data.result ? "check " + data.result : action + "d"), "ok");
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
      if (r.added_count) $("bulk").value = "";
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
    $("check-all").disabled = true;
    try {
      const r = await api("POST", "/admin/check-keys");
      toast("Checked " + r.probed + " keys", "ok");
      load();
    } catch (e) { toast(e.message, "error"); } finally { $("check-all").disabled = false; }
  });

  setInterval(tick, 1000);
  setInterval(() => {
    const editing = document.activeElement && document.activeElement.classList.contains("weight");
    if ($("auto").checked && !editing && !document.hidden) load();
  }, 5000);
  load();
})();
