/* The Requests page: the request log with the filters of /admin/requests, paged newest first
   by cursor, each row opening to its attempt trace; the CSV export takes the same filters. */
"use strict";

(() => {
  const { api, el, t, tOr, num } = orpoll;
  const $ = (id) => document.getElementById(id);
  const tbody = document.querySelector("#log tbody");
  const NONE = "—";
  const LIMIT = 50;
  // cursors[i] is the cursor of page i (null for the newest); open: ids whose trace is shown.
  const view = { cursors: [null], page: 0, next: null, open: new Set() };
  const lang = document.documentElement.lang || "en";
  const stamp = new Intl.DateTimeFormat(lang, { dateStyle: "short", timeStyle: "medium" });
  // One request often costs a fraction of a cent: cents alone would show most as zero.
  const cost = (v) => num(v, { style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 6 });

  /** The filters as query parameters (times as epoch seconds from the local inputs). */
  function filters() {
    const params = new URLSearchParams();
    for (const name of ["since", "until"]) {
      const value = $("f-" + name).value;
      if (value) params.set(name, String(new Date(value).getTime() / 1000));
    }
    for (const name of ["status", "model", "key", "client", "stream"]) {
      const value = $("f-" + name).value.trim();
      if (value) params.set(name, value);
    }
    return params;
  }

  /** Filters named in the page's address (a key's link from the dashboard, a reload). */
  function fromAddress() {
    const given = new URLSearchParams(location.search);
    for (const name of ["status", "model", "key", "client", "stream"]) {
      if (given.has(name)) $("f-" + name).value = given.get(name);
    }
  }

  async function load() {
    const params = filters();
    $("csv").href = "/admin/requests.csv?" + params;
    const keep = new URLSearchParams(params);
    keep.delete("since");
    keep.delete("until");
    history.replaceState(null, "", location.pathname + (String(keep) ? "?" + keep : ""));
    params.set("limit", String(LIMIT));
    const cursor = view.cursors[view.page];
    if (cursor) params.set("cursor", cursor);
    try {
      const data = await api("GET", "/admin/requests?" + params);
      $("log-error").hidden = true;
      view.next = data.next_cursor;
      render(data);
    } catch (e) {
      $("log-error").textContent = t("log.failed", { detail: e.message });
      $("log-error").hidden = false;
    }
  }

  function render(data) {
    $("log-total").textContent = t("log.total", { n: num(data.total) });
    const first = view.page * LIMIT + 1;
    $("log-page").textContent = data.data.length
      ? t("log.page", { from: num(first), to: num(first + data.data.length - 1), total: num(data.total) }) : "";
    $("newer").disabled = view.page === 0;
    $("older").disabled = !view.next;
    const rows = [];
    for (const r of data.data) {
      rows.push(row(r));
      if (view.open.has(r.id)) rows.push(trace(r));
    }
    tbody.replaceChildren(...rows);
    $("log-empty").hidden = data.data.length > 0;
  }

  function cell(label, className, ...children) {
    return el("td", { className }, el("span", { className: "cell-label" }, label), ...children);
  }

  function statusBadge(r) {
    const failed = r.status >= 400 || r.error;
    const text = r.error ? r.status + " · " + (r.error.code || r.error.type) : String(r.status);
    return el("span", { className: "badge " + (failed ? "disabled" : "available") }, text);
  }

  function row(r) {
    const model = r.answered_model || r.model || NONE;
    const tokens = r.usage_known ? num((r.tokens.prompt || 0) + (r.tokens.completion || 0)) : NONE;
    const toggle = el("button", { type: "button", className: "small trace-toggle",
      onclick: () => { view.open.has(r.id) ? view.open.delete(r.id) : view.open.add(r.id); toggleTrace(r, toggle); } },
      t("log.show_trace"));
    toggle.setAttribute("aria-expanded", String(view.open.has(r.id)));
    if (view.open.has(r.id)) toggle.textContent = t("log.hide_trace");
    return el("tr", { dataset: { id: String(r.id) }, className: "log-row" },
      cell(t("log.col_time"), "nowrap", stamp.format(new Date(r.time * 1000))),
      cell(t("log.col_status"), "", statusBadge(r), r.stream ? el("span", { className: "tag" }, t("log.stream_tag")) : null),
      cell(t("log.col_model"), "model", model),
      cell(t("log.col_key"), "mono", r.key ? r.key.masked : NONE),
      cell(t("log.col_client"), "mono", r.client || NONE),
      cell(t("log.col_attempts"), "num", num(r.attempts.length)),
      cell(t("log.col_duration"), "num", t("unit.ms", { n: num(Math.round(r.duration_ms)) })),
      cell(t("log.col_tokens"), "num", tokens),
      cell(t("log.col_cost"), "num", r.cost === null ? NONE : cost(r.cost)),
      el("td", { className: "actions" }, toggle));
  }

  function toggleTrace(r, button) {
    const tr = button.closest("tr");
    const shown = tr.nextElementSibling && tr.nextElementSibling.classList.contains("trace-row");
    if (shown) tr.nextElementSibling.remove();
    else tr.after(trace(r));
    button.textContent = shown ? t("log.show_trace") : t("log.hide_trace");
    button.setAttribute("aria-expanded", String(!shown));
  }

  /** The keys tried, in order: what each said about its key, its status and time. */
  function trace(r) {
    const items = r.attempts.map((a, i) => el("li", { className: "attempt verdict-" + (a.verdict === "ok" ? "ok" : "bad") },
      el("span", { className: "step" }, num(i + 1)),
      el("span", { className: "mono attempt-key" }, a.key),
      el("span", { className: "verdict" }, tOr("verdict." + a.verdict, a.verdict)),
      el("span", { className: "attempt-status" }, String(a.status || NONE)),
      el("span", { className: "muted" }, t("unit.ms", { n: num(Math.round(a.ms)) }))));
    const facts = [
      t("log.trace_request", { id: r.request_id || NONE }),
      r.ttfb_ms === null ? null : t("log.trace_ttfb", { ms: num(Math.round(r.ttfb_ms)) }),
      r.client_disconnected ? t("log.trace_disconnected") : null,
      r.error ? t("log.trace_error", { type: r.error.type, code: r.error.code || NONE }) : null,
    ].filter(Boolean);
    const box = el("div", { className: "trace" },
      items.length ? el("ol", { className: "attempts" }, ...items) : el("p", { className: "muted" }, t("log.no_attempts")),
      el("p", { className: "small muted" }, facts.join(" · ")));
    return el("tr", { className: "trace-row" }, el("td", { colSpan: 10 }, box));
  }

  $("log-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    view.cursors = [null];
    view.page = 0;
    load();
  });
  $("log-filters").addEventListener("reset", () => setTimeout(() => { view.cursors = [null]; view.page = 0; load(); }));
  $("older").addEventListener("click", () => {
    if (!view.next) return;
    view.cursors[view.page + 1] = view.next;
    view.page += 1;
    load();
  });
  $("newer").addEventListener("click", () => { view.page = Math.max(0, view.page - 1); load(); });
  fromAddress();
  load();
})();
