// The dispatcher dashboard: polls dashboard/data and draws everything with plain DOM and
// SVG. No framework, no third-party code, no build step.
(function () {
  "use strict";

  const POLL_MS = 1500;
  const TOKEN_KEY = "dispatcher.dashboard.token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  // The API root: where this page is mounted, without the trailing "dashboard".
  const BASE = window.location.pathname.replace(/dashboard\/?$/, "");
  // Every API process's inline executor (uvicorn --workers): shown when there are several.
  function fleetNote(fleet) {
    const total = (fleet && fleet.total) || {};
    if (!total.processes || total.processes < 2) return "";
    return " · all " + total.processes + " API processes: " + (total.running || 0) + " running, " +
      (total.waiting || 0) + " waiting, " + (total.spilled || 0) + " spilled";
  }
  const COLORS = { inline: "#2f7de1", celery: "#7b4fd6", fail: "#d9413b", ok: "#2e9e62", other: "#6b7385" };

  const state = {
    schedulesAt: 0,
    paused: false,
    timer: null,
    inFlight: false,
    openFailures: new Set(),
    redispatched: [], // {from, to, name, at, error}
    depths: [], // [{t, values: {series: depth}}] since the page opened, for the trend chart
    last: null,
  };

  // ------------------------------------------------------------------ small helpers

  function $(id) { return document.getElementById(id); }

  // h("div", {class: "x", dataset: {id: 1}}, child, "text", ...): text is never parsed as HTML.
  function h(tag, attrs) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    for (let i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }

  function s(tag, attrs) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    for (let i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }

  function setAttrs(el, attrs) {
    if (!attrs) return;
    for (const key of Object.keys(attrs)) {
      const value = attrs[key];
      if (value === null || value === undefined || value === false) continue;
      if (key === "dataset") {
        for (const d of Object.keys(value)) el.dataset[d] = String(value[d]);
      } else if (key === "text") {
        el.textContent = String(value);
      } else if (key.startsWith("on")) {
        el.addEventListener(key.slice(2), value);
      } else {
        el.setAttribute(key, String(value));
      }
    }
  }

  function append(el, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach((c) => append(el, c)); return; }
    el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }

  function replace(el, child) {
    el.replaceChildren();
    append(el, child);
  }

  function empty(text) { return h("div", { class: "empty" }, text); }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1) return ms.toFixed(2) + " ms";
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
    const m = Math.floor(ms / 60000);
    return m + "m " + Math.round((ms % 60000) / 1000) + "s";
  }

  function fmtTick(ms) {
    if (ms === 0) return "0";
    if (ms < 1) return String(Number(ms.toPrecision(2))) + " ms";
    if (ms < 1000) return String(Number(ms.toPrecision(3))) + " ms";
    return String(Number((ms / 1000).toPrecision(3))) + " s";
  }

  function fmtAgo(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
    seconds = Math.max(0, seconds);
    if (seconds < 60) return Math.round(seconds) + "s ago";
    if (seconds < 3600) return Math.round(seconds / 60) + "m ago";
    return Math.round(seconds / 3600) + "h ago";
  }

  function fmtClock(epoch) {
    const d = new Date(epoch * 1000);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function fmtNum(n) {
    if (n === null || n === undefined) return "–";
    if (Math.abs(n) >= 1000) return (n / 1000).toFixed(n >= 10000 ? 0 : 1) + "k";
    return Number.isInteger(n) ? String(n) : n.toFixed(1);
  }

  function shortId(id) { return id ? String(id).slice(0, 8) : ""; }

  function routeBadge(route) {
    return h("span", { class: "badge " + (route || ""), text: route || "?" });
  }

  function stateBadge(st) { return h("span", { class: "badge " + (st || ""), text: st || "?" }); }

  // A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten.
  function niceMax(value) {
    if (!(value > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 5, 10]) if (m * p >= value) return m * p;
    return 10 * p;
  }

  function widthOf(el, fallback) {
    const w = el.clientWidth;
    return w > 50 ? w : fallback;
  }

  function legend(el, items) {
    replace(el, items.map((it) => h("span", null,
      h("i", { class: it.line ? "line" : "", style: "background:" + it.color }), it.label)));
  }

  // ------------------------------------------------------------------ fetching

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  function headers(extra) {
    const out = Object.assign({ Accept: "application/json" }, extra || {});
    const t = token();
    if (t) out.Authorization = "Bearer " + t;
    return out;
  }

  function setLive(kind, text) {
    $("live").dataset.state = kind;
    $("live-text").textContent = text;
  }

  function showBanner(text) {
    const b = $("banner");
    if (text) { b.textContent = text; b.hidden = false; } else { b.hidden = true; }
  }

  async function poll() {
    state.timer = null;
    if (state.paused || state.inFlight) return;
    state.inFlight = true;
    try {
      const response = await fetch(BASE + "dashboard/data", { headers: headers(), cache: "no-store" });
      if (response.status === 401) {
        setLive("error", "token needed");
        showBanner("This API requires a bearer token (DISPATCH_API_TOKEN): enter it with the Token button.");
        $("token-form").hidden = false;
      } else if (response.status === 403) {  // no token set, and this is another host
        setLive("error", "HTTP 403");
        let detail = "Forbidden: set DISPATCH_API_TOKEN to view this from another host.";
        try { detail = (await response.json()).detail || detail; } catch (e) { /* a proxy's page */ }
        showBanner(detail);
      } else if (!response.ok) {
        setLive("error", "HTTP " + response.status);
      } else {
        const data = await response.json();
        state.last = data;
        showBanner("");
        render(data);
        setLive("live", "live · " + fmtClock(data.generated_at));
        refreshSchedules();
      }
    } catch (err) {
      setLive("error", "unreachable");
    } finally {
      state.inFlight = false;
      schedule(POLL_MS);
    }
  }

  // Schedules change slowly: read every 5 s, from GET schedules.
  async function refreshSchedules() {
    if (Date.now() - state.schedulesAt < 5000) return;
    state.schedulesAt = Date.now();
    try {
      const response = await fetch(BASE + "schedules", { headers: headers(), cache: "no-store" });
      if (response.ok) renderSchedules(await response.json());
    } catch (err) { /* the next poll tries again */ }
  }

  function renderSchedules(rows) {
    const el = $("schedules");
    $("schedules-count").textContent = rows.length ? rows.length + " scheduled" : "";
    if (!rows.length) { replace(el, empty("no schedules")); return; }
    replace(el, h("table", null,
      h("thead", null, h("tr", null, ["Task", "Schedule", "Arguments", "Last run", "Next run"]
        .map((t) => h("th", { text: t })))),
      h("tbody", null, rows.map((r) => h("tr", { dataset: { task: r.task } },
        h("td", { text: r.task }),
        h("td", { class: "mono", text: r.schedule + " (" + r.timezone + ")" }),
        h("td", { class: "mono small", text: JSON.stringify(r.kwargs) }),
        h("td", { class: "small", text: r.last_run ? fmtClock(r.last_run) : "–" }),
        h("td", { class: "small next-run", text: fmtClock(r.next_run) }))))));
  }

  function schedule(ms) {
    if (state.paused) return;
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = setTimeout(poll, ms);
  }

  // ------------------------------------------------------------------ rendering

  function render(data) {
    const sections = [
      ["tiles", () => renderTiles(data)],
      ["throughput", () => renderThroughput(data.throughput, data.generated_at)],
      ["queues", () => renderQueues(data.queues)],
      ["durations", () => renderDurations(data.durations || [])],
      ["running", () => renderRunning(data.running || [], data.generated_at)],
      ["failures", () => renderFailures(data.failures || [], data.generated_at)],
      ["dead", () => renderDead(data.dead_letters || [], data.generated_at)],
      ["routes", () => renderRoutes(data.routes || [])],
    ];
    for (const [id, fn] of sections) {
      try { fn(); } catch (err) { replace($(id), empty("could not draw this panel: " + err.message)); }
    }
    const w = data.window || {};
    const notes = ["last " + Math.round((w.seconds || 0) / 60) + " min · " + (w.records || 0) + " jobs"];
    if (w.truncated) notes.push("(newest " + w.max_records + " only)");
    const errors = data.errors || {};
    const failed = Object.keys(errors);
    if (failed.length) notes.push("· unavailable: " + failed.join(", "));
    $("window-note").textContent = notes.join(" ");
    $("window-note").title = failed.map((k) => k + ": " + errors[k]).join("\n");
  }

  function tile(label, value, sub, kind, id) {
    return h("div", { class: "tile " + (kind || ""), dataset: { tile: id } },
      h("div", { class: "label", text: label }),
      h("div", { class: "value", text: value }),
      h("div", { class: "sub", text: sub || "\u00a0" }));
  }

  function renderTiles(data) {
    const t = data.totals || {};
    const q = data.queues || {};
    const celery = q.celery || {};
    const queued = Object.values(celery).reduce((a, b) => a + b, 0);
    const inline = q.inline || {};
    const rate = t.failure_rate;
    const dead = (data.dead_letters || []).length;
    const spool = q.spool_depth;
    replace($("tiles"), [
      tile("Finished / min", fmtNum(t.per_minute || 0), (t.succeeded || 0) + " ok · " + (t.failed || 0) + " failed", "info", "per-minute"),
      tile("Failure rate", rate === null || rate === undefined ? "–" : (rate * 100).toFixed(rate < 0.1 ? 1 : 0) + " %",
        "of jobs finished", rate > 0.05 ? "bad" : rate > 0 ? "warn" : "good", "failure-rate"),
      tile("Running", fmtNum(t.running || 0), "inline here: " + (inline.running || 0) + " / " + (inline.concurrency || 0) + fleetNote(q.inline_fleet), "info", "running"),
      tile("Queued", fmtNum(queued + Math.max(0, (inline.outstanding || 0) - (inline.running || 0))),
        "celery " + queued + " · inline " + Math.max(0, (inline.outstanding || 0) - (inline.running || 0)),
        queued > 100 ? "warn" : "info", "queued"),
      tile("Dead letters", fmtNum(dead), dead ? "need a look" : "none", dead ? "bad" : "good", "dead"),
      tile("Dispatched", fmtNum(t.dispatched || 0), spool ? "spooled (broker down): " + spool : "in the window",
        spool ? "warn" : "info", "dispatched"),
    ]);
  }

  // Small multiples: one stacked area chart per route on a shared y scale.
  function renderThroughput(tp, now) {
    const el = $("throughput");
    if (!tp || !tp.starts) { replace(el, empty("no data")); return; }
    const routes = Object.keys(tp.routes || {});
    routes.sort((a, b) => (a === "inline" ? -1 : b === "inline" ? 1 : a.localeCompare(b)));
    let top = 0;
    for (const r of routes) {
      const lines = tp.routes[r];
      tp.starts.forEach((_, i) => {
        top = Math.max(top, lines.succeeded[i] + lines.failed[i], lines.dispatched[i]);
      });
    }
    const yMax = niceMax(Math.max(top, 4));
    const width = Math.max(220, (widthOf(el, 700) - 14 * (routes.length - 1)) / Math.max(1, routes.length));
    replace(el, routes.map((r) => {
      const lines = tp.routes[r];
      const ok = lines.succeeded.reduce((a, b) => a + b, 0);
      const failed = lines.failed.reduce((a, b) => a + b, 0);
      return h("div", { class: "chart", dataset: { route: r } },
        h("div", { class: "chart-title" }, h("span", null, routeBadge(r)),
          h("span", { class: "muted", text: ok + " ok · " + failed + " failed" })),
        areaChart(tp, lines, COLORS[r] || COLORS.other, yMax, width, now));
    }));
    legend($("tp-legend"), [
      { label: "succeeded", color: "#7fa7d9" },
      { label: "failed", color: COLORS.fail },
      { label: "dispatched", color: "#1d2433", line: true },
    ]);
  }

  function areaChart(tp, lines, color, yMax, width, now) {
    const height = 150, left = 30, right = 6, topPad = 6, bottom = 20;
    const n = tp.starts.length;
    const plotW = width - left - right, plotH = height - topPad - bottom;
    const step = plotW / Math.max(1, n);
    const x = (i) => left + i * step;
    const y = (v) => topPad + plotH - (v / yMax) * plotH;
    const svg = s("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height, role: "img" });
    const divisions = [5, 4, 2].find((d) => Number.isInteger(yMax / d)) || 4;
    for (let k = 0; k <= divisions; k++) {
      const v = (yMax * k) / divisions;
      svg.appendChild(s("line", { class: "grid-line", x1: left, x2: width - right, y1: y(v), y2: y(v) }));
      svg.appendChild(s("text", { x: left - 4, y: y(v) + 4, "text-anchor": "end", text: fmtNum(v) }));
    }
    // Stacked bars per bucket: succeeded at the bottom, failed on top.
    const gap = Math.min(2, step * 0.15);
    for (let i = 0; i < n; i++) {
      const okV = lines.succeeded[i], failV = lines.failed[i];
      if (okV > 0) {
        svg.appendChild(s("rect", { x: x(i) + gap / 2, y: y(okV), width: step - gap, height: y(0) - y(okV),
          fill: color, "fill-opacity": 0.55, rx: 1 }));
      }
      if (failV > 0) {
        svg.appendChild(s("rect", { x: x(i) + gap / 2, y: y(okV + failV), width: step - gap,
          height: y(okV) - y(okV + failV), fill: COLORS.fail, rx: 1 }));
      }
    }
    // Dispatched as a line through the bucket centres.
    const pts = lines.dispatched.map((v, i) => (x(i) + step / 2).toFixed(1) + "," + y(v).toFixed(1));
    svg.appendChild(s("polyline", { points: pts.join(" "), fill: "none", stroke: "#1d2433", "stroke-width": 1.5,
      "stroke-linejoin": "round", "stroke-opacity": 0.8 }));
    svg.appendChild(s("line", { class: "axis", x1: left, x2: width - right, y1: y(0), y2: y(0) }));
    // Time labels: minutes before now.
    const span = n * tp.bucket_seconds;
    for (let m = 0; m * 60 <= span; m++) {
      const t = now - m * 60;
      const i = (t - tp.starts[0]) / tp.bucket_seconds;
      if (i < 0) break;
      svg.appendChild(s("text", { x: Math.min(width - right, x(i)), y: height - 5,
        "text-anchor": m === 0 ? "end" : "middle", text: m === 0 ? "now" : "-" + m + "m" }));
    }
    // Hover targets with a tooltip per bucket.
    for (let i = 0; i < n; i++) {
      svg.appendChild(s("rect", { class: "hit", x: x(i), y: topPad, width: step, height: plotH },
        s("title", { text: fmtClock(tp.starts[i]) + " (" + tp.bucket_seconds + " s)\n" + lines.succeeded[i] +
          " succeeded, " + lines.failed[i] + " failed, " + lines.dispatched[i] + " dispatched" })));
    }
    return svg;
  }

  function hbars(rows, width, opts) {
    // rows: [{label, value, color, title, sub}] -> horizontal bars with value labels.
    const labelW = opts.labelW || 150, valueW = 64, rowH = opts.rowH || 24;
    const max = niceMax(Math.max(opts.min || 1, ...rows.map((r) => r.value)));
    const plotW = Math.max(40, width - labelW - valueW);
    const height = rows.length * rowH + 4;
    const svg = s("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height, role: "img" });
    rows.forEach((r, i) => {
      const yy = i * rowH + 2;
      const g = s("g", { "data-label": r.label });
      g.appendChild(s("text", { class: "task-label", x: 0, y: yy + rowH / 2 + 4, text: clip(r.label, labelW) }));
      g.appendChild(s("rect", { x: labelW, y: yy + 4, width: plotW, height: rowH - 8, fill: "#eef1f5", rx: 3 }));
      const w = Math.max(r.value > 0 ? 2 : 0, (r.value / max) * plotW);
      g.appendChild(s("rect", { x: labelW, y: yy + 4, width: w, height: rowH - 8, fill: r.color, rx: 3 }));
      g.appendChild(s("text", { class: "value-label", x: labelW + plotW + 6, y: yy + rowH / 2 + 4,
        text: r.text !== undefined ? r.text : fmtNum(r.value) }));
      if (r.title) g.appendChild(s("title", { text: r.title }));
      svg.appendChild(g);
    });
    return svg;
  }

  function clip(text, px) {
    const max = Math.floor(px / 6.6);
    text = String(text);
    return text.length > max ? "…" + text.slice(text.length - max + 1) : text;
  }

  function renderQueues(q) {
    const el = $("queues");
    if (!q) { replace(el, empty("queue depths unavailable")); return; }
    const rows = [];
    const celery = q.celery || {};
    for (const name of Object.keys(celery).sort()) {
      const depth = celery[name];
      rows.push({ label: "celery · " + name, value: depth, color: depth > 100 ? "#e39a1b" : COLORS.celery,
        title: depth + " messages waiting in Celery queue " + name });
    }
    const inline = q.inline || {};
    const waiting = Math.max(0, (inline.outstanding || 0) - (inline.running || 0));
    rows.push({ label: "inline · running", value: inline.running || 0, color: COLORS.inline,
      text: (inline.running || 0) + " / " + (inline.concurrency || 0),
      title: "inline jobs running in this API process, of DISPATCH_INLINE_CONCURRENCY" });
    rows.push({ label: "inline · waiting", value: waiting, color: "#8db8f0",
      title: "inline jobs waiting (or between retries) in this API process" });
    if (q.spool_depth !== null && q.spool_depth !== undefined) {
      rows.push({ label: "outage spool", value: q.spool_depth, color: q.spool_depth ? "#e39a1b" : "#b9c2d3",
        title: "jobs spooled to disk while the broker was unreachable" });
    }
    const width = widthOf(el, 420);
    const parts = [hbars(rows, width, { labelW: 150, min: 5 })];
    const values = {};
    for (const name of Object.keys(celery)) values["celery · " + name] = celery[name];
    values["inline · waiting"] = waiting;
    const now = state.last ? state.last.generated_at : Date.now() / 1000;
    const lastPoint = state.depths[state.depths.length - 1];
    if (lastPoint && lastPoint.t === now) lastPoint.values = values; else state.depths.push({ t: now, values: values });
    while (state.depths.length && state.depths[0].t < now - 300) state.depths.shift();
    parts.push(depthTrend(state.depths, width, now));
    if (q.error) parts.push(h("div", { class: "notice error", text: "broker: " + q.error }));
    if (!q.broker_configured) parts.push(h("div", { class: "muted small", text: "no broker configured: inline route only" }));
    replace(el, parts);
    $("queue-note").textContent = "inline: this API process" + fleetNote(q.inline_fleet);
  }

  // Queue depths over time, as seen by this page since it opened (the server keeps no history).
  function depthTrend(points, width, now) {
    const names = [];
    for (const p of points) for (const k of Object.keys(p.values)) if (!names.includes(k)) names.push(k);
    const height = 96, left = 30, right = 6, top = 14, bottom = 16;
    const plotW = width - left - right, plotH = height - top - bottom;
    const yMax = niceMax(Math.max(4, ...points.map((p) => Math.max(0, ...Object.values(p.values)))));
    const x = (t) => left + Math.max(0, (t - (now - 300)) / 300) * plotW;
    const y = (v) => top + plotH - (v / yMax) * plotH;
    const svg = s("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height, role: "img", class: "trend" });
    svg.appendChild(s("text", { x: left, y: 10, text: "depth, last 5 min (since this page opened)" }));
    [0, yMax / 2, yMax].forEach((v) => {
      svg.appendChild(s("line", { class: "grid-line", x1: left, x2: width - right, y1: y(v), y2: y(v) }));
      svg.appendChild(s("text", { x: left - 4, y: y(v) + 4, "text-anchor": "end", text: fmtNum(v) }));
    });
    const palette = [COLORS.celery, "#b48be8", "#5a3aa8", "#d58ef0", "#8db8f0"];
    names.forEach((name, i) => {
      const pts = points.filter((p) => name in p.values).map((p) => x(p.t).toFixed(1) + "," + y(p.values[name]).toFixed(1));
      const color = name.startsWith("inline") ? COLORS.inline : palette[i % palette.length];
      if (pts.length) {
        svg.appendChild(s("polyline", { points: pts.join(" "), fill: "none", stroke: color, "stroke-width": 1.8,
          "stroke-linejoin": "round" }, s("title", { text: name })));
      }
    });
    ["-5m", "-4m", "-3m", "-2m", "-1m", "now"].forEach((label, i) => {
      svg.appendChild(s("text", { x: left + (i / 5) * plotW, y: height - 3,
        "text-anchor": i === 0 ? "start" : i === 5 ? "end" : "middle", text: label }));
    });
    return svg;
  }

  function renderDurations(rows) {
    const el = $("durations");
    legend($("dur-legend"), [
      { label: "p50", color: "#2f7de1" }, { label: "p95", color: "#8db8f0" }, { label: "p99", color: "#d3e3f9" },
    ]);
    if (!rows.length) { replace(el, empty("no finished jobs in the window")); return; }
    const width = widthOf(el, 600), labelW = Math.min(220, width * 0.34), valueW = 150, rowH = 26;
    // Log scale when durations span orders of magnitude (a 2 ms task next to a 4 s one).
    const hi = Math.max(...rows.map((r) => r.p99 || 0), 0.001);
    const lo = Math.max(Math.min(...rows.map((r) => r.p50 || hi)), 0.01);
    const log = hi / lo > 30;
    const plotW = Math.max(60, width - labelW - valueW);
    const height = rows.length * rowH + 20;
    const svg = s("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height, role: "img" });
    let xs, ticks;
    if (log) {
      const d0 = Math.floor(Math.log10(lo)), d1 = Math.ceil(Math.log10(hi));
      const span = Math.max(1, d1 - d0);
      xs = (v) => labelW + Math.max(0, Math.min(1, (Math.log10(Math.max(v, Math.pow(10, d0))) - d0) / span)) * plotW;
      ticks = [];
      for (let d = d0; d <= d1; d++) ticks.push(Math.pow(10, d));
    } else {
      const max = niceMax(hi);
      xs = (v) => labelW + (v / max) * plotW;
      ticks = [0, 1, 2, 3, 4].map((k) => (max * k) / 4);
    }
    rows.forEach((r, i) => {
      const yy = i * rowH + 2;
      const g = s("g", { "data-task": r.task });
      g.appendChild(s("text", { class: "task-label", x: 0, y: yy + rowH / 2 + 4, text: clip(r.task, labelW) }));
      g.appendChild(s("rect", { x: labelW, y: yy + 5, width: plotW, height: rowH - 10, fill: "#f4f6f9", rx: 3 }));
      [["p99", "#d3e3f9"], ["p95", "#8db8f0"], ["p50", "#2f7de1"]].forEach(([k, c]) => {
        const v = r[k] || 0;
        g.appendChild(s("rect", { x: labelW, y: yy + 5, width: Math.max(v > 0 ? 2 : 0, xs(v) - labelW),
          height: rowH - 10, fill: c, rx: 3 }));
      });
      g.appendChild(s("text", { class: "value-label", x: labelW + plotW + 8, y: yy + rowH / 2 + 4,
        text: fmtMs(r.p50) + " · " + fmtMs(r.p95) + " · " + fmtMs(r.p99) }));
      g.appendChild(s("title", { text: r.task + "\n" + r.count + " jobs\np50 " + fmtMs(r.p50) + "\np95 " +
        fmtMs(r.p95) + "\np99 " + fmtMs(r.p99) + "\nmax " + fmtMs(r.max) }));
      svg.appendChild(g);
    });
    const axisY = rows.length * rowH + 14;
    ticks.forEach((v, k) => {
      svg.appendChild(s("line", { class: "grid-line", x1: xs(v), x2: xs(v), y1: 2, y2: axisY - 10 }));
      svg.appendChild(s("text", { x: xs(v), y: axisY, "text-anchor": k === 0 ? "start" : k === ticks.length - 1 ? "end" : "middle",
        text: fmtTick(v) }));
    });
    if (log) svg.appendChild(s("text", { x: labelW + plotW + 8, y: axisY, text: "log scale" }));
    replace(el, svg);
  }

  function renderRunning(rows, now) {
    const el = $("running");
    const active = rows.filter((r) => r.state === "STARTED" || r.state === "RETRY").length;
    $("running-count").textContent = active + " running" + (rows.length > active ? " · " + (rows.length - active) + " just finished" : "");
    if (!rows.length) { replace(el, empty("nothing running")); return; }
    // Bars start where they were drawn last time and slide to the new value.
    const before = {};
    el.querySelectorAll(".job").forEach((j) => {
      const fill = j.querySelector(".fill");
      if (fill) before[j.dataset.taskId] = fill.style.width;
    });
    const moves = [];
    replace(el, rows.map((r) => {
      const p = r.progress || null;
      const finished = r.state === "SUCCESS" || r.state === "FAILURE" || r.state === "REVOKED";
      const pct = p && p.percent !== null && p.percent !== undefined ? Math.max(0, Math.min(100, p.percent)) : null;
      const target = (pct === null ? 0 : pct) + "%";
      const fill = h("div", { class: "fill" + (r.state === "FAILURE" ? " failed" : pct === 100 ? " done" : ""),
        style: "width:" + (before[r.task_id] || "0%") });
      moves.push([fill, target]);
      const bar = h("div", { class: "bar" + (pct === null ? " unknown" : "") }, fill);
      const since = r.started_at || r.dispatched_at;
      const label = pct !== null ? Math.round(pct) + " %" : p ? String(p.current) : "…";
      const msg = p ? [p.message, p.total ? p.current + " / " + p.total : null].filter(Boolean).join(" · ") : "";
      let stop = null;
      if (!finished) {
        stop = h("button", { class: "cancel", type: "button", text: "Cancel",
          title: "Tell this job to stop (POST tasks/{id}/cancel); it ends REVOKED" });
        stop.addEventListener("click", () => cancelJob(r, stop));
      }
      return h("div", { class: "job" + (finished ? " finished" : ""), dataset: { taskId: r.task_id, state: r.state } },
        h("div", { class: "name", title: r.task_name + " " + r.task_id }, r.task_name,
          h("span", { class: "muted mono", text: "  " + shortId(r.task_id) }), stop),
        h("div", { class: "meta" }, routeBadge(r.route), stateBadge(r.state),
          r.attempt > 1 ? h("span", { text: "attempt " + r.attempt + "/" + r.max_attempts }) : null,
          h("span", { text: finished ? "done " + fmtAgo(now - r.finished_at) : since ? "for " + fmtMs((now - since) * 1000) : "" })),
        h("div", { class: "progress", dataset: { percent: pct === null ? "" : Math.round(pct) } },
          bar, h("span", { class: "pct", text: label }),
          msg ? h("div", { class: "msg", text: msg }) : null));
    }));
    el.getBoundingClientRect(); // lay out the starting widths before moving them
    for (const [fill, target] of moves) fill.style.width = target;
  }

  function renderFailures(rows, now) {
    const el = $("failures");
    $("failures-count").textContent = rows.length ? rows.length + " in the window" : "";
    if (!rows.length) { replace(el, empty("no failures in the window")); return; }
    replace(el, h("div", { class: "failures" }, rows.map((r) => {
      const err = r.error || {};
      const d = h("details", { class: "failure", dataset: { taskId: r.task_id } },
        h("summary", null,
          h("span", { class: "err", text: err.type || "Failure" }),
          h("span", { class: "name", text: r.task_name }),
          routeBadge(r.route),
          h("span", { class: "muted small", text: fmtAgo(now - (r.finished_at || r.dispatched_at)) +
            (r.attempt ? " · attempt " + r.attempt + "/" + r.max_attempts : "") + (r.reason ? " · " + r.reason : "") }),
          h("span", { class: "msg mono", text: err.message || "" })),
        h("div", { class: "muted small mono", text: "task " + r.task_id + (r.request_id ? " · request " + r.request_id : "") }),
        h("pre", { text: r.traceback || "(no traceback recorded)" }));
      if (state.openFailures.has(r.task_id)) d.open = true;
      d.addEventListener("toggle", () => {
        if (d.open) state.openFailures.add(r.task_id); else state.openFailures.delete(r.task_id);
      });
      return d;
    })));
  }

  function renderDead(rows, now) {
    const el = $("dead");
    $("dead-count").textContent = rows.length ? rows.length + " waiting" : "";
    replace($("redispatched"), state.redispatched.slice(-3).reverse().map((n) =>
      h("div", { class: "notice" + (n.error ? " error" : ""), dataset: { from: n.from, to: n.to || "" } },
        n.error ? "Re-dispatch of " + shortId(n.from) + " failed: " + n.error
          : "Re-dispatched " + n.name + " " + shortId(n.from) + " as new job ",
        n.error ? null : h("span", { class: "mono new-task-id", text: n.to }),
        n.error ? null : " (" + n.route + ")")));
    if (!rows.length) { replace(el, empty("no dead letters")); return; }
    const table = h("table", null,
      h("thead", null, h("tr", null, ["Task", "Error", "Attempts", "Died", ""].map((t) => h("th", { text: t })))),
      h("tbody", null, rows.map((r) => {
        const err = r.error || {};
        const button = h("button", { class: "primary redispatch", type: "button", text: "Re-dispatch",
          title: "Dispatch this job again as a new job (POST tasks/{id}/retry)" });
        button.addEventListener("click", () => redispatch(r, button));
        return h("tr", { dataset: { taskId: r.task_id } },
          h("td", null, h("div", { text: r.task_name }), h("div", { class: "muted small mono", text: shortId(r.task_id) + " · " }, routeBadge(r.route))),
          h("td", { title: r.traceback || "" }, h("span", { class: "err", text: err.type || "" }), " ",
            h("span", { class: "muted small", text: err.message || "" })),
          h("td", { class: "num", text: (r.attempts || "?") + "/" + (r.max_attempts || "?") }),
          h("td", { class: "muted small", text: fmtAgo(now - r.dead_at) }),
          h("td", null, button));
      })));
    replace(el, table);
  }

  async function cancelJob(row, button) {
    button.disabled = true;
    button.textContent = "Cancelling…";
    try {
      const response = await fetch(BASE + "tasks/" + encodeURIComponent(row.task_id) + "/cancel",
        { method: "POST", headers: headers() });
      button.textContent = response.ok ? "Told to stop" : response.status === 409 ? "Finished" : "HTTP " + response.status;
    } catch (err) {
      button.textContent = "Failed";
      button.title = String(err);
    }
    schedule(0);
  }

  async function redispatch(row, button) {
    button.disabled = true;
    button.textContent = "Sending…";
    let note;
    try {
      const response = await fetch(BASE + "tasks/" + encodeURIComponent(row.task_id) + "/retry",
        { method: "POST", headers: headers() });
      if (response.ok) {
        const body = await response.json();
        note = { from: row.task_id, to: body.task_id, name: row.task_name, route: body.route, at: Date.now() };
      } else {
        let detail = "HTTP " + response.status;
        try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
        note = { from: row.task_id, error: detail, at: Date.now() };
      }
    } catch (err) {
      note = { from: row.task_id, error: String(err), at: Date.now() };
    }
    state.redispatched.push(note);
    if (state.last) renderDead(state.last.dead_letters || [], state.last.generated_at);
    schedule(0);
  }

  const KNOWN_COLUMNS = ["task", "route", "reason", "queue", "priority", "weight", "timeout", "async", "retry"];

  function retrySummary(r) {
    if (!r || typeof r !== "object") return formatValue(r);
    if (r.max_attempts === 1) return "no retry";
    return r.max_attempts + " attempts, " + r.base_delay + "s ×" + r.multiplier + " ≤ " + r.max_delay + "s" +
      (r.jitter ? ", jitter" : "") + (r.retry_on ? " on " + [].concat(r.retry_on).join("/") : "");
  }

  function formatValue(v) {
    if (v === null || v === undefined) return h("span", { class: "muted", text: "–" });
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (Array.isArray(v)) return v.map((x) => (typeof x === "object" ? JSON.stringify(x) : String(x))).join(", ");
    if (typeof v === "object") {
      return Object.keys(v).map((k) => h("span", { class: "kv" }, h("b", { text: k + ": " }),
        typeof v[k] === "object" && v[k] !== null ? JSON.stringify(v[k]) : String(v[k])));
    }
    if (typeof v === "number" && !Number.isInteger(v)) return String(Math.round(v * 1000) / 1000);
    return String(v);
  }

  // weight="auto": the task's shared p95 against the inline limit (moves to Celery above
  // it, back below half of it), then the numbers and since when it is on its route.
  function adaptiveCell(a) {
    const limit = a.max_seconds, p95 = a.p95_seconds;
    const w = 120, hgt = 14, scale = (v) => Math.min(w, (v / (2 * limit)) * w);
    const over = p95 !== null && p95 !== undefined && p95 > limit;
    const bar = s("svg", { width: w, height: hgt, class: "gauge", role: "img" },
      s("rect", { x: 0, y: 3, width: w, height: 8, rx: 4, fill: "#eef1f5" }),
      p95 === null || p95 === undefined ? null
        : s("rect", { x: 0, y: 3, width: Math.max(2, scale(p95)), height: 8, rx: 4, fill: over ? COLORS.celery : COLORS.inline }),
      s("line", { x1: scale(limit / 2), x2: scale(limit / 2), y1: 0, y2: hgt, stroke: "#6b7385", "stroke-dasharray": "2,2" }),
      s("line", { x1: scale(limit), x2: scale(limit), y1: 0, y2: hgt, stroke: COLORS.fail, "stroke-width": 1.5 }),
      s("title", { text: "p95 " + (p95 === null || p95 === undefined ? "–" : p95 + " s") + "; moves to celery above " +
        limit + " s, back to inline below " + limit / 2 + " s" }));
    const since = a.since ? " since " + fmtClock(a.since) : "";
    return h("div", { class: "adaptive" }, bar,
      h("span", { class: "small", text: "p95 " + (p95 === null || p95 === undefined ? "–" : fmtMs(p95 * 1000)) +
        " of " + a.samples + "/" + a.window + " runs → " + a.route + since }));
  }

  function renderRoutes(rows) {
    const el = $("routes");
    if (!rows.length) { replace(el, empty("no tasks registered")); return; }
    const extra = [];
    for (const r of rows) for (const k of Object.keys(r)) if (!KNOWN_COLUMNS.includes(k) && !extra.includes(k)) extra.push(k);
    const columns = KNOWN_COLUMNS.filter((k) => rows.some((r) => k in r)).concat(extra);
    const cell = (r, k) => {
      const v = r[k];
      if (k === "route") return h("td", null, routeBadge(v));
      if (k === "retry") return h("td", { class: "small", text: retrySummary(v) });
      if (k === "timeout") return h("td", { class: "num", text: v === null || v === undefined ? "–" : v + " s" });
      if (k === "task") return h("td", { class: "mono", text: v });
      if (k === "adaptive" && v && typeof v === "object" && "max_seconds" in v) return h("td", null, adaptiveCell(v));
      return h("td", { class: typeof v === "number" ? "num" : "small" }, formatValue(v));
    };
    replace(el, h("table", null,
      h("thead", null, h("tr", null, columns.map((k) => h("th", { text: k.replace(/_/g, " ") })))),
      h("tbody", null, rows.map((r) => h("tr", { dataset: { task: r.task } }, columns.map((k) => cell(r, k)))))));
  }

  // ------------------------------------------------------------------ controls

  function init() {
    $("pause").addEventListener("click", () => {
      state.paused = !state.paused;
      $("pause").textContent = state.paused ? "Resume" : "Pause";
      if (state.paused) {
        if (state.timer !== null) clearTimeout(state.timer);
        state.timer = null;
        setLive("paused", "paused");
      } else {
        schedule(0);
      }
    });
    $("token-toggle").addEventListener("click", () => {
      const form = $("token-form");
      form.hidden = !form.hidden;
      if (!form.hidden) $("token").focus();
    });
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
      $("token").value = "";
      $("token-form").hidden = true;
      schedule(0);
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { if (state.last) render(state.last); }, 150);
    });
    poll();
  }

  init();
})();
