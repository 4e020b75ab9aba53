// Ecovisor's live dashboard (docs/dashboard.md). No build step: plain JS + uPlot (vendored).
// The token is typed in, kept in sessionStorage and sent only as the Authorization
// header (never in a URL). The operator's token opens the site view (/v1/site/...); an
// app's token (403 there) opens that app's view (/v1/apps/{app}/...). Live updates come
// from server-sent events read with fetch(): EventSource cannot send a header.
"use strict";
(() => {
  const KEY = "ecovisor.token";
  const MAX_COMMANDS = 100;
  const $ = (id) => document.getElementById(id);
  const COLORS = ["#d99a00", "#5a6b7b", "#2a7bd5", "#c0392b", "#8e44ad", "#16a085", "#e67e22",
                  "#2c3e50", "#7f8c8d", "#27ae60"];
  let token = sessionStorage.getItem(KEY);
  let run = null;      // the open view: {abort, ...}
  let charts = [];     // [{plot, series: [{get}]}]
  let points = [];     // SitePoint (operator) or AppPoint-shaped objects (app), by tick

  class HttpError extends Error {
    constructor(status, detail) { super(`${status}: ${detail}`); this.status = status; }
  }

  async function api(path, signal) {
    const r = await fetch(path, {headers: {Authorization: `Bearer ${token}`}, cache: "no-store", signal});
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).detail; } catch (_) { /* not JSON */ }
      throw new HttpError(r.status, typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return r.json();
  }

  // Server-sent events over fetch: calls onEvent(name, data) per event until the stream ends.
  async function stream(path, onEvent, signal) {
    const r = await fetch(path, {headers: {Authorization: `Bearer ${token}`, Accept: "text/event-stream"},
                                 cache: "no-store", signal});
    if (!r.ok) throw new HttpError(r.status, "event stream refused");
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buf += value;
      const hold = buf.endsWith("\r") ? "\r" : "";  // a CRLF split across two chunks
      buf = buf.slice(0, buf.length - hold.length).replace(/\r\n?/g, "\n");
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const c = line.indexOf(":");
          const field = c < 0 ? line : line.slice(0, c);
          const v = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
          if (field === "event") name = v;
          else if (field === "data") data.push(v);
        }
        if (data.length) onEvent(name, data.join("\n"));
      }
      buf += hold;
    }
  }

  const fmt = (v, d = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  const mgPerS = (p) => (p.carbon_g * 1000) / p.tick_s;
  const text = (tag, s, cls) => { const e = document.createElement(tag); e.textContent = s; if (cls) e.className = cls; return e; };

  function chart(el, series) {
    const width = Math.max(320, el.clientWidth || 560);
    const opts = {
      width, height: 220,
      scales: {x: {time: true}},
      series: [{}, ...series.map((s, i) => ({label: s.label, stroke: s.color || COLORS[i % COLORS.length], width: 1.6}))],
      axes: [{}, {size: 56}],
      legend: {live: false},
    };
    const plot = new uPlot(opts, [[], ...series.map(() => [])], el);
    charts.push({plot, series});
  }

  function redraw() {
    const xs = points.map((p) => Date.parse(p.time) / 1000);
    for (const c of charts) c.plot.setData([xs, ...c.series.map((s) => points.map((p) => { const v = s.get(p); return v === undefined ? null : v; }))]);
  }

  function setRows(tbody, rows) {
    tbody.replaceChildren(...rows.map((cells) => {
      const tr = document.createElement("tr");
      for (const c of cells) tr.append(text("td", c));
      return tr;
    }));
  }

  function showLatest(p) {
    $("tick").textContent = String(p.tick);
    $("tick-time").textContent = new Date(p.time).toLocaleTimeString();
    const cards = [["solar", fmt(p.solar_w), "W"], ["grid", fmt(p.grid_w), "W"],
                   ["battery out", fmt(p.battery_discharge_rate_w), "W"], ["battery", fmt(p.battery_charge_level_wh), "Wh"],
                   ["power", fmt(p.app_power_w), "W"], ["intensity", fmt(p.grid_carbon_g_per_kwh, 0), "gCO2eq/kWh"],
                   ["carbon", fmt(mgPerS(p), 3), "mg/s"]];
    $("cards").replaceChildren(...cards.map(([k, v, u]) => {
      const s = text("span", `${k} `, "card"); s.append(text("b", v), ` ${u}`); return s;
    }));
    if (p.apps) {
      const rows = Object.values(p.apps).map((a) => [a.app, fmt(a.app_power_w), fmt(a.solar_w), fmt(a.grid_w),
        fmt(a.battery_discharge_rate_w), fmt(a.battery_charge_level_wh), fmt(mgPerS(a), 3), fmt(a.unserved_w)]);
      setRows($("apps").tBodies[0], rows);
      [...$("apps").tBodies[0].rows].forEach((tr, i) => { tr.dataset.app = Object.keys(p.apps)[i]; });
    }
    if (p.containers) {
      const rows = Object.entries(p.containers).map(([c, d]) => [c, fmt(d.power_w), fmt(d.powercap_w),
        d.suspended ? "yes" : "no", fmt(d.carbon_mg_per_s, 3)]);
      setRows($("containers").tBodies[0], rows);
    }
  }

  function addPoint(p) {
    const last = points[points.length - 1];
    if (last && p.tick <= last.tick) return;
    points.push(p);
    const keep = Number($("range").value);
    const t0 = Date.parse(p.time) - keep * 1000;
    while (points.length && Date.parse(points[0].time) < t0) points.shift();
    showLatest(p);
    redraw();
  }

  function addCommand(n, live) {
    const tbody = $("commands").tBodies[0];
    const status = n.type.replace(/^command_/, "");
    const d = n.data || {};
    const what = d.command_type || (d.applied && (d.applied.type || d.applied.action)) || "";
    const {type: _t, action: _a, ...rest} = d.applied || d.change || {};
    let details = n.reason || (Object.keys(rest).length ? JSON.stringify(rest) : "");
    if (details.length > 100) details = `${details.slice(0, 99)}…`;
    const tr = document.createElement("tr");
    tr.className = status;
    const id = (n.command_id || "").slice(0, 8);
    for (const c of [new Date(n.time).toLocaleTimeString(), n.app, status, what, id, details]) tr.append(text("td", c));
    if (live) tbody.prepend(tr); else tbody.append(tr);
    while (tbody.rows.length > MAX_COMMANDS) tbody.deleteRow(-1);
  }

  function setState(s) { $("live-state").textContent = s; }
  function showError(msg) { $("error").textContent = msg; $("error").hidden = !msg; }

  function siteCharts(site) {
    $("cap-sources").textContent = "Site sources (W): Σ of the apps' virtual energy systems";
    $("cap-carbon").textContent = "Carbon rate per app (mg/s)";
    chart($("ch-sources"), [
      {label: "solar", get: (p) => p.solar_w}, {label: "grid", get: (p) => p.grid_w},
      {label: "battery out", get: (p) => p.battery_discharge_rate_w}, {label: "apps' power", get: (p) => p.app_power_w},
      {label: "unserved", get: (p) => p.unserved_w}]);
    chart($("ch-battery"), [{label: "battery (Σ apps)", get: (p) => p.battery_charge_level_wh, color: COLORS[2]}]);
    chart($("ch-intensity"), [{label: "grid intensity", get: (p) => p.grid_carbon_g_per_kwh, color: COLORS[1]}]);
    const per = (f) => site.apps.map((a) => ({label: a.id, get: (p) => (p.apps[a.id] ? f(p.apps[a.id]) : null)}));
    chart($("ch-carbon"), per(mgPerS));
    chart($("ch-apps"), per((a) => a.app_power_w));
  }

  function appCharts() {
    $("cap-sources").textContent = "Power by source (W)";
    $("cap-carbon").textContent = "Carbon rate (mg/s)";
    chart($("ch-sources"), [
      {label: "app power", get: (p) => p.app_power_w, color: COLORS[3]}, {label: "solar", get: (p) => p.solar_w, color: COLORS[0]},
      {label: "grid", get: (p) => p.grid_w, color: COLORS[1]}, {label: "battery out", get: (p) => p.battery_discharge_rate_w, color: COLORS[2]},
      {label: "unserved", get: (p) => p.unserved_w, color: COLORS[4]}]);
    chart($("ch-battery"), [{label: "battery", get: (p) => p.battery_charge_level_wh, color: COLORS[2]}]);
    chart($("ch-intensity"), [{label: "grid intensity", get: (p) => p.grid_carbon_g_per_kwh, color: COLORS[1]}]);
    chart($("ch-carbon"), [{label: "carbon", get: mgPerS, color: COLORS[5]}]);
  }

  const since = (s) => encodeURIComponent(new Date(Date.now() - s * 1000).toISOString());
  const now = () => encodeURIComponent(new Date(Date.now() + 60_000).toISOString());

  // The range from the ledger, then the live stream; on a drop: reload the range, reconnect.
  async function live(view, signal) {
    for (;;) {
      try {
        const range = Number($("range").value);
        let past = [];
        try { past = await api(`${view.ticks}?from=${since(range)}&to=${now()}`, signal); }
        catch (e) { if (e.status !== 503) throw e; }  // the ledger has no tick yet
        points = [];
        past.forEach(addPoint);
        if (!past.length) redraw();
        await stream(view.events, (name, data) => {
          const n = JSON.parse(data);
          if (name === "ready") setState("live");
          else if (name === "site_tick") addPoint(n);
          else if (name === "tick") addPoint({app: n.app, tick: n.tick, time: n.time, ...n.data});
          else if (name.startsWith("command_")) addCommand(n, true);
        }, signal);
      } catch (e) {
        if (signal.aborted) return;
        if (e.status === 401 || e.status === 403) { showError(`refused: ${e.message}`); setState("stopped"); return; }
      }
      if (signal.aborted) return;
      setState("reconnecting…");
      await new Promise((ok) => setTimeout(ok, 2000));
      if (signal.aborted) return;
    }
  }

  async function loadCommands(path, signal) {
    try {
      const log = await api(`${path}?limit=50`, signal);
      $("commands").tBodies[0].replaceChildren();
      log.entries.forEach((n) => addCommand(n, false));
    } catch (e) { if (e.status !== 503) throw e; }
  }

  function reset() {
    if (run) run.abort.abort();
    run = null;
    for (const c of charts) c.plot.destroy();
    charts = [];
    points = [];
    for (const id of ["apps", "containers", "commands"]) $(id).tBodies[0].replaceChildren();
    $("cards").replaceChildren();
    $("tick").textContent = "–";
    $("tick-time").textContent = "";
    $("who").textContent = "";
    $("main").hidden = true;
    setState("not connected");
    delete document.body.dataset.view;
  }

  async function open() {
    reset();
    showError("");
    const abort = new AbortController();
    run = {abort};
    const signal = abort.signal;
    let view;
    try {
      try {
        const site = await api("/v1/site", signal);
        view = {kind: "operator", ticks: "/v1/site/ticks", events: "/v1/site/notifications",
                commands: "/v1/site/commands"};
        $("who").textContent = `operator · site ${site.site}`;
        $("main").hidden = false;
        $("fig-apps").hidden = false; $("sec-apps").hidden = false; $("sec-containers").hidden = true;
        siteCharts(site);
      } catch (e) {
        if (e.status !== 403) throw e;
        const me = await api("/v1/whoami", signal);  // an app's token: its own view
        const base = `/v1/apps/${encodeURIComponent(me.app || me.id)}`;
        view = {kind: "app", ticks: `${base}/ticks`, commands: `${base}/command_log`,
                events: `${base}/notifications?types=tick,command_accepted,command_rejected,command_applied,command_failed`};
        $("who").textContent = `app ${me.app || me.id}`;
        $("main").hidden = false;
        $("fig-apps").hidden = true; $("sec-apps").hidden = true; $("sec-containers").hidden = false;
        appCharts();
      }
      document.body.dataset.view = view.kind;
      $("login").hidden = true; $("logout").hidden = false;
      await loadCommands(view.commands, signal);
      run.view = view;
      live(view, signal);
    } catch (e) {
      if (signal.aborted) return;
      showError(e.status === 401 ? "invalid token" : `cannot open the dashboard: ${e.message}`);
      reset();
    }
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    if (!token) return;
    sessionStorage.setItem(KEY, token);
    open();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    token = null;
    reset();
    $("login").hidden = false; $("logout").hidden = true;
  });
  $("range").addEventListener("change", () => { if (run && run.view) open(); });
  if (token) open();
})();
