/* Dashboard usage: the KPI cards, requests and errors per minute (last hour, last 24 h), cost
   per day (30 days) drawn with uPlot, and the top keys, models and clients by cost. */
"use strict";

(() => {
  const { api, el, t, num, money } = orpoll;
  const $ = (id) => document.getElementById(id);
  const MINUTE = 60, DAY = 86400;
  const lang = document.documentElement.lang || "en";
  const charts = {};
  const COLORS = { requests: "#4f46e5", errors: "#dc2626", cost: "#059669" };

  const percent = (part, whole) => whole
    ? num(part / whole, { style: "percent", minimumFractionDigits: 1, maximumFractionDigits: 1 }) : "—";
  const setKpi = (name, text) => {
    for (const node of document.querySelectorAll(`[data-kpi="${name}"]`)) node.textContent = text;
  };

  /** Dense series over [start, end) a step apart from sparse rows ({time, ...}); 0 where none. */
  function dense(rows, start, end, step, fields) {
    const at = new Map(rows.map((r) => [r.time, r]));
    const out = [[], ...fields.map(() => [])];
    for (let x = start; x < end; x += step) {
      const row = at.get(x);
      out[0].push(x);
      fields.forEach((f, i) => out[i + 1].push(row ? row[f] : 0));
    }
    return out;
  }

  const timeFormat = (options) => new Intl.DateTimeFormat(lang, options);
  const HOURS = timeFormat({ hour: "2-digit", minute: "2-digit" });
  const DAYS = timeFormat({ month: "short", day: "numeric", timeZone: "UTC" });

  const LABELS = { requests: "chart.requests", errors: "chart.errors", cost: "chart.cost" };
  function series(name, color, extra) {
    return { label: t(LABELS[name]), stroke: color, fill: color + "22", width: 1.5, ...extra };
  }

  /** Draw (or redraw with new data) the chart in #id: the first call builds it. */
  function draw(id, data, seriesList, xFormat, yFormat) {
    const box = $(id);
    box.dataset.points = String(data[0].length);
    if (charts[id]) { charts[id].setData(data); return; }
    if (typeof uPlot !== "function") return;
    const opts = {
      width: Math.max(240, box.clientWidth), height: 180,
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      series: [{ value: (u, v) => (v == null ? "" : xFormat.format(new Date(v * 1000))) }, ...seriesList],
      axes: [
        { values: (u, splits) => splits.map((v) => xFormat.format(new Date(v * 1000))) },
        { values: (u, splits) => splits.map(yFormat), size: 60 },
      ],
    };
    charts[id] = new uPlot(opts, data, box);
  }

  function drawMinutes(rows, now) {
    const end = Math.floor(now / MINUTE) * MINUTE + MINUTE;
    const fields = ["requests", "errors"];
    const day = dense(rows, end - DAY, end, MINUTE, fields);
    const hour = day.map((column) => column.slice(-60));
    const list = [series("requests", COLORS.requests), series("errors", COLORS.errors)];
    draw("chart-1h", hour, list, HOURS, (v) => num(v));
    draw("chart-24h", day, list, HOURS, (v) => num(v));
    const sum = (column) => column.reduce((a, b) => a + b, 0);
    const [r1, e1, r24, e24] = [sum(hour[1]), sum(hour[2]), sum(day[1]), sum(day[2])];
    setKpi("requests_1h", num(r1));
    setKpi("error_rate_1h", t("kpi.error_rate", { rate: percent(e1, r1) }));
    setKpi("requests_24h", num(r24));
    setKpi("error_rate_24h", t("kpi.error_rate", { rate: percent(e24, r24) }));
  }

  function drawDays(rows, firstDay, today) {
    const data = dense(rows, firstDay, today + DAY, DAY, ["cost"]);
    const bars = uPlot.paths && uPlot.paths.bars ? { paths: uPlot.paths.bars({ size: [0.6, 40] }), points: { show: false } } : {};
    draw("chart-cost", data, [series("cost", COLORS.cost, bars)], DAYS, (v) => money(v));
    const todayRow = rows.find((r) => r.time === today);
    setKpi("cost_today", money(todayRow ? todayRow.cost : 0));
    const tokens = todayRow ? todayRow.prompt_tokens + todayRow.completion_tokens : 0;
    setKpi("tokens_today", num(tokens));
    setKpi("cost_30d", money(rows.reduce((a, r) => a + r.cost, 0)));
  }

  function drawTop(group, rows) {
    const table = $("top-" + group);
    table.tBodies[0].replaceChildren(...rows.map((r) => {
      const name = group === "key"
        ? el("td", { className: "mono" }, r.key_suffix || r.group, el("span", { className: "id" }, r.group))
        : el("td", { className: group === "client" ? "mono" : "" }, r.group || "—");
      return el("tr", {}, name, el("td", { className: "num" }, num(r.requests)),
        el("td", { className: "num" }, money(r.cost)));
    }));
    table.nextElementSibling.hidden = rows.length > 0;
  }

  async function loadUsage() {
    const now = Date.now() / 1000;
    const today = Math.floor(now / DAY) * DAY, firstDay = today - 29 * DAY;
    const usage = (query) => api("GET", "/admin/usage?" + new URLSearchParams(query));
    try {
      const [minutes, days, ...tops] = await Promise.all([
        usage({ group_by: "minute", since: now - DAY }),
        usage({ group_by: "day", since: firstDay }),
        ...["key", "model", "client"].map((g) => usage({ group_by: g, since: firstDay, top: 10 })),
      ]);
      drawMinutes(minutes.data, now);
      drawDays(days.data, firstDay, today);
      ["key", "model", "client"].forEach((g, i) => drawTop(g, tops[i].data));
      $("usage-updated").textContent = t("usage.updated", { time: orpoll.clock(now) });
    } catch (e) {
      $("usage-updated").textContent = t("usage.failed", { detail: e.message });
    }
  }

  async function loadOverview() {
    try {
      const o = await api("GET", "/admin/overview");
      setKpi("streams_open", num(o.streams_open));
    } catch (e) { setKpi("streams_open", "—"); }
  }

  const live = () => $("auto") && $("auto").checked && !document.hidden;
  new ResizeObserver(() => {
    for (const [id, chart] of Object.entries(charts)) chart.setSize({ width: Math.max(240, $(id).clientWidth), height: 180 });
  }).observe($("chart-1h").parentElement.parentElement);
  setInterval(() => { if (live()) loadOverview(); }, 5000);
  setInterval(() => { if (live()) loadUsage(); }, 60000);
  loadOverview();
  loadUsage();
})();
