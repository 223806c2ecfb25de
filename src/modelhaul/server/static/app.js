// modelhaul web page: the queue, the speed limit and the store, kept current by the
// service's event stream (a snapshot, then every change). Buttons only send requests; what
// the page shows always comes back through the stream, so several open pages agree.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const FINAL = new Set(["completed", "failed", "cancelled"]);
  const ACTIVE = new Set(["queued", "running", "verifying"]);
  const state = { downloads: new Map(), store: null, limit: null, mirror: [] };

  // ------------------------------------------------------------------ formatting

  function bytes(n) {
    if (n === null || n === undefined) return "?";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
  }

  function duration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "";
    s = Math.round(s);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const c of children) node.append(c);
    return node;
  }

  // ------------------------------------------------------------------ the API

  async function api(method, path, body) {
    const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    if (resp.status === 401) {
      showLogin();
      throw new Error("this service needs its access token");
    }
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!resp.ok) throw new Error(errorText(data, resp.status));
    return data;
  }

  function errorText(data, status) {
    if (data && data.error) {
      return data.error.message + (data.error.hint ? " (" + data.error.hint + ")" : "");
    }
    if (data && Array.isArray(data.detail)) {
      return data.detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ");
    }
    return "HTTP " + status;
  }

  function report(where, promise) {
    $(where).textContent = "";
    return promise.catch((err) => { $(where).textContent = err.message; });
  }

  // ------------------------------------------------------------------ live events

  let retryDelay = 500;
  let failedOpens = 0;
  let useSse = false;

  function setConn(kind, text) {
    const c = $("conn");
    c.dataset.state = kind;
    c.textContent = text;
  }

  function connect() {
    setConn("connecting", "connecting…");
    if (useSse || typeof WebSocket === "undefined") return connectSse();
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
    let opened = false;
    ws.onopen = () => { opened = true; failedOpens = 0; retryDelay = 500; setConn("live", "live"); };
    ws.onmessage = (m) => handle(JSON.parse(m.data));
    ws.onclose = () => {
      if (!opened && ++failedOpens >= 2) useSse = true; // e.g. a proxy without WebSocket
      lost();
    };
  }

  function connectSse() {
    const es = new EventSource("/events");
    es.onopen = () => { retryDelay = 500; setConn("live", "live"); };
    es.onmessage = (m) => handle(JSON.parse(m.data));
    es.onerror = () => { es.close(); lost(); };
  }

  function lost() {
    setConn("down", "reconnecting…");
    // The next snapshot replaces everything, so nothing is lost while we are away.
    setTimeout(() => checkAccess().then((ok) => { if (ok) connect(); }), retryDelay);
    retryDelay = Math.min(retryDelay * 2, 10000);
  }

  async function checkAccess() {
    try {
      const resp = await fetch("/api/limit", { credentials: "same-origin" });
      if (resp.status === 401) { showLogin(); return false; }
      return true;
    } catch (e) {
      lost();
      return false;
    }
  }

  function handle(ev) {
    switch (ev.event) {
      case "snapshot":
        state.downloads = new Map(ev.downloads.map((d) => [d.id, d]));
        state.limit = ev.limit;
        state.store = ev.store;
        state.mirror = ev.mirror || [];
        $("queue-body").replaceChildren();
        renderQueue();
        renderLimit();
        renderStore();
        renderMirror();
        break;
      case "download":
        upsert(ev.download);
        break;
      case "progress":
        if (ev.download) upsert(ev.download);
        break;
      case "removed":
        state.downloads.delete(ev.id);
        renderQueue();
        break;
      case "limit":
        state.limit = { rate_bytes_per_s: ev.rate_bytes_per_s };
        renderLimit();
        break;
      case "store":
        state.store = ev.store;
        renderStore();
        break;
      case "mirror":
        state.mirror = ev.models;
        renderMirror();
        break;
    }
  }

  function upsert(d) {
    state.downloads.set(d.id, d);
    renderQueue();
  }

  // ------------------------------------------------------------------ the queue

  function renderQueue() {
    const body = $("queue-body");
    const ids = [...state.downloads.keys()].sort((a, b) => Number(a) - Number(b));
    const keep = new Set(ids.map((id) => "dl-" + id));
    for (const tr of [...body.children]) if (!keep.has(tr.id)) tr.remove();
    let prev = null;
    for (const id of ids) {
      let tr = document.getElementById("dl-" + id);
      if (!tr) tr = buildRow(id);
      const want = prev ? prev.nextSibling : body.firstChild;
      if (tr !== want) body.insertBefore(tr, want);
      updateRow(tr, state.downloads.get(id));
      prev = tr;
    }
    $("queue").hidden = ids.length === 0;
    $("queue-empty").hidden = ids.length !== 0;
    const speed = runningSpeed();
    $("total").textContent = speed > 0 ? "↓ " + bytes(speed) + "/s" : "";
    $("rate-now").textContent = speed > 0 ? "· " + bytes(speed) + "/s now" : "· idle";
  }

  // The speed of what runs now, from the downloads' own views: the service's "total" event
  // stops when nothing moves, so it would leave the last speed standing on a paused queue.
  function runningSpeed() {
    let speed = 0;
    for (const d of state.downloads.values()) if (d.state === "running") speed += d.speed || 0;
    return speed;
  }

  function buildRow(id) {
    const tr = el("tr", { id: "dl-" + id });
    tr.dataset.id = id;
    // The label is drawn twice: dark on the empty track, white on the fill (clipped to the
    // progress), so every glyph stays readable whatever colour is under it.
    const fill = el("div", { className: "fill" }, el("span", { className: "label" }));
    const bar = el("div", { className: "bar" }, el("span", { className: "label" }), fill);
    bar.setAttribute("role", "progressbar");
    const prio = el("input", { className: "prio", type: "number", min: -1000, max: 1000, step: 1 });
    prio.setAttribute("aria-label", "priority");
    prio.addEventListener("change", () => {
      const value = parseInt(prio.value, 10);
      if (Number.isNaN(value)) return;
      report("queue-error", api("PUT", "/api/downloads/" + id + "/priority", { priority: value }));
    });
    const actions = el("td", { className: "actions" });
    for (const [action, label, cls] of [
      ["pause", "Pause", ""], ["resume", "Resume", ""], ["retry", "Retry", ""],
      ["cancel", "Cancel", "danger"], ["forget", "Clear", ""],
    ]) {
      const b = el("button", { type: "button", textContent: label, className: (action + " " + cls).trim() });
      b.dataset.action = action;
      actions.append(b);
    }
    const where = el("div", { className: "where" },
      el("span", { className: "source" }), " → ", el("span", { className: "dest" }));
    const why = el("div", { className: "why" },
      el("span", { className: "category" }), el("span", { className: "message" }), el("span", { className: "hint" }));
    tr.append(
      el("td", { className: "id" }, String(id)),
      el("td", { className: "item" }, el("div", { className: "name" }), where, why),
      el("td", {}, el("span", { className: "state" })),
      el("td", {}, bar),
      el("td", { className: "speed" }),
      el("td", { className: "conns" }),
      el("td", { className: "eta" }),
      el("td", {}, prio),
      actions,
    );
    return tr;
  }

  function updateRow(tr, d) {
    tr.dataset.state = d.state;
    tr.className = FINAL.has(d.state) ? "final" : "";
    tr.querySelector(".name").textContent = d.name;
    const st = tr.querySelector(".state");
    st.textContent = d.state;
    st.className = "state " + d.state;
    updateWhere(tr, d);
    updateWhy(tr, d);
    updateBar(tr.querySelector(".bar"), d);
    const running = d.state === "running";
    tr.querySelector(".speed").textContent = running && d.speed > 0 ? bytes(d.speed) + "/s" : "";
    tr.querySelector(".conns").textContent = running && d.connections > 0 ? String(d.connections) : "";
    tr.querySelector(".eta").textContent = running ? duration(d.eta) : "";
    updatePriority(tr.querySelector(".prio"), d);
    updateActions(tr, d);
  }

  function updateWhere(tr, d) {
    const dest = d.path || (d.kind === "model" ? "the store" : "?");
    tr.querySelector(".source").textContent = d.source;
    tr.querySelector(".dest").textContent = dest;
    tr.querySelector(".where").title = d.source + "\n→ " + dest;
  }

  function updateWhy(tr, d) {
    const why = tr.querySelector(".why");
    const e = d.state === "failed" ? d.error : null;
    why.hidden = !e;
    if (!e) return;
    const cat = why.querySelector(".category");
    cat.textContent = e.category.replace(/_/g, " ");
    cat.dataset.category = e.category;
    why.querySelector(".message").textContent = e.message;
    why.querySelector(".hint").textContent = e.hint || "";
  }

  function updateBar(bar, d) {
    const present = Boolean(d.already_present);
    const pct = d.total ? Math.min(100, (100 * d.bytes_done) / d.total) : d.state === "completed" ? 100 : 0;
    bar.className = "bar " + (present ? "present" : d.state);
    bar.dataset.bytes = String(d.bytes_done);
    bar.dataset.total = d.total === null ? "" : String(d.total);
    bar.setAttribute("aria-valuenow", pct.toFixed(1));
    // A pull that found every file in the store fetched nothing: say that, not "0 B".
    const text = present
      ? "already in the store"
      : (d.total ? pct.toFixed(1) + "% · " : "") + bytes(d.bytes_done) + (d.total ? " / " + bytes(d.total) : "");
    for (const label of bar.querySelectorAll(".label")) label.textContent = text;
    bar.querySelector(".fill").style.clipPath = "inset(0 " + (present ? 100 : 100 - pct).toFixed(2) + "% 0 0)";
  }

  function updatePriority(prio, d) {
    // A finished download runs no more; its priority means nothing (a retry keeps it).
    prio.disabled = FINAL.has(d.state);
    prio.title = prio.disabled ? "finished: the priority no longer applies" : "";
    if (document.activeElement !== prio) prio.value = String(d.priority);
  }

  function updateActions(tr, d) {
    const failed = d.state === "failed";
    const show = {
      pause: ACTIVE.has(d.state),
      // Resuming continues a transfer; a permanent failure (not found, auth) needs a fix
      // first, and then a retry.
      resume: d.state === "paused" || (failed && !d.permanent),
      retry: failed && d.permanent,
      cancel: !(d.state === "completed" || d.state === "cancelled"),
      forget: FINAL.has(d.state),
    };
    for (const b of tr.querySelectorAll("button[data-action]")) b.hidden = !show[b.dataset.action];
  }

  $("queue-body").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-action]");
    if (!b) return;
    const id = b.closest("tr").dataset.id;
    const action = b.dataset.action;
    const request = action === "forget"
      ? api("DELETE", "/api/downloads/" + id)
      : api("POST", "/api/downloads/" + id + "/" + action);
    report("queue-error", request);
  });

  // ------------------------------------------------------------------ the throughput chart

  // One sample a second of the speed of everything running, for the last 5 minutes.
  const CHART = { every_ms: 1000, keep: 300, width: 600, height: 72, samples: [] };

  function sampleThroughput() {
    CHART.samples.push(runningSpeed());
    if (CHART.samples.length > CHART.keep) CHART.samples.shift();
    drawChart();
  }

  function drawChart() {
    const { samples, keep, width, height } = CHART;
    const peak = Math.max(0, ...samples);
    const top = peak > 0 ? peak * 1.15 : 1;
    // The time axis grows with the page's age, from one minute up to five.
    const span = Math.min(keep, Math.max(60, samples.length));
    const step = width / (span - 1);
    const x0 = width - (samples.length - 1) * step;
    const pts = samples.map((v, i) =>
      (x0 + i * step).toFixed(1) + "," + (height - (v / top) * (height - 2)).toFixed(1));
    const chart = $("chart");
    chart.querySelector(".line").setAttribute("points", pts.join(" "));
    chart.querySelector(".area").setAttribute("d", pts.length
      ? "M" + x0.toFixed(1) + "," + height + " L" + pts.join(" L") + " L" + width + "," + height + " Z"
      : "");
    chart.dataset.samples = String(samples.length);
    chart.dataset.peak = String(peak);
    $("chart-peak").textContent = peak > 0 ? "peak " + bytes(peak) + "/s" : "";
    $("chart-span").textContent = Math.round((span * CHART.every_ms) / 60000) + " min ago";
  }

  // ------------------------------------------------------------------ adding

  const MODEL_REF = /^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*(@\S+)?$/;

  $("add-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const source = $("add-source").value.trim();
    const out = $("add-out").value.trim();
    const priority = parseInt($("add-priority").value, 10) || 0;
    if (!source) return;
    const isModel = source.startsWith("hf://") || (!source.includes("://") && MODEL_REF.test(source));
    const request = isModel
      ? api("POST", "/api/pulls", { source, priority })
      : api("POST", "/api/downloads", out ? { url: source, out, priority } : { url: source, priority });
    report("add-error", request.then(() => {
      $("add-source").value = "";
      $("add-out").value = "";
    }));
  });

  // ------------------------------------------------------------------ the speed limit

  function renderLimit() {
    const rate = state.limit ? state.limit.rate_bytes_per_s : null;
    const cur = $("limit-current");
    cur.textContent = "now: " + (rate ? bytes(rate) + "/s" : "unlimited");
    cur.dataset.rate = rate ? String(rate) : "";
  }

  $("limit-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("limit-input").value.trim();
    const rate = text === "" ? null : /^\d+$/.test(text) ? Number(text) : text;
    report("limit-error", api("PUT", "/api/limit", { rate }).then(() => { $("limit-input").value = ""; }));
  });

  // ------------------------------------------------------------------ the store

  function renderStore() {
    const s = state.store;
    const body = $("store-body");
    body.replaceChildren();
    if (!s) {
      $("disk").textContent = "scanning…";
      return;
    }
    $("disk").textContent = bytes(s.used) + " used by the store · " + bytes(s.free) + " free on disk · " + s.root;
    for (const m of s.models) {
      const name = m.repo_type === "model" ? m.name : m.repo_type + "s/" + m.name;
      const tr = el("tr");
      tr.dataset.name = m.name;
      tr.dataset.repoType = m.repo_type;
      const pin = el("button", { type: "button", className: m.pinned ? "unpin" : "pin", textContent: m.pinned ? "Unpin" : "Pin" });
      const rm = el("button", { type: "button", className: "remove danger", textContent: "Remove" });
      pin.addEventListener("click", () => report("store-error",
        api("POST", m.pinned ? "/api/models/unpin" : "/api/models/pin", { name: m.name, repo_type: m.repo_type })));
      rm.addEventListener("click", () => {
        // Pinning says "keep this": the service removes a pinned model only with force, so
        // the question names the pin, and a yes is that force. A model still downloading is
        // not forced: the service's refusal says to wait.
        const forced = m.pinned && m.status !== "downloading";
        const question = m.pinned
          ? name + " is pinned; remove anyway? (" + bytes(m.size) + ")"
          : "Remove " + name + " (" + bytes(m.size) + ") from the store?";
        if (!window.confirm(question)) return;
        const body = { name: m.name, repo_type: m.repo_type };
        if (forced) body.force = true;
        report("store-error", api("POST", "/api/models/remove", body));
      });
      const status = m.partial_bytes && m.status !== "ready" ? m.status + " (+" + bytes(m.partial_bytes) + ")" : m.status;
      tr.append(
        el("td", { className: "name", textContent: name, title: m.path }),
        el("td", { textContent: m.revisions.join(", ") || "-" }),
        el("td", { textContent: String(m.files) }),
        el("td", { className: "size", textContent: bytes(m.size) }),
        el("td", {}, el("span", { className: "state " + m.status, textContent: status })),
        el("td", { className: "pinned", textContent: m.pinned ? "yes" : "" }),
        el("td", { className: "actions" }, pin, rm),
      );
      body.append(tr);
    }
    $("store").hidden = s.models.length === 0;
    $("store-empty").hidden = s.models.length !== 0;
  }

  // ------------------------------------------------------------------ the Hub mirror

  // Bytes served to clients against bytes fetched upstream, per model: the mirror's worth.
  function renderMirror() {
    const body = $("mirror-body");
    body.replaceChildren();
    let served = 0;
    let fetched = 0;
    for (const m of state.mirror) {
      const name = m.repo_type === "model" ? m.name : m.repo_type + "s/" + m.name;
      served += m.served_bytes;
      fetched += m.upstream_bytes;
      const ratio = m.upstream_bytes > 0 ? (m.served_bytes / m.upstream_bytes).toFixed(1) + "×" : "";
      const tr = el("tr", { id: "mirror-" + m.repo_type + "-" + m.name.replace("/", "--") });
      tr.dataset.served = String(m.served_bytes);
      tr.dataset.upstream = String(m.upstream_bytes);
      tr.append(
        el("td", { className: "name", textContent: name }),
        el("td", { className: "served", textContent: bytes(m.served_bytes) }),
        el("td", { className: "upstream", textContent: bytes(m.upstream_bytes) }),
        el("td", { className: "ratio", textContent: ratio }),
      );
      body.append(tr);
    }
    $("mirror").hidden = state.mirror.length === 0;
    $("mirror-empty").hidden = state.mirror.length !== 0;
    $("mirror-total").textContent = state.mirror.length
      ? "· " + bytes(served) + " served · " + bytes(fetched) + " from upstream" : "";
  }

  $("mirror-endpoint").textContent = location.origin + "/hf";

  // ------------------------------------------------------------------ access

  function showLogin() {
    $("login").hidden = false;
    $("app").hidden = true;
    setConn("down", "signed out");
  }

  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    location.href = "/?token=" + encodeURIComponent($("login-token").value.trim());
  });

  drawChart();
  setInterval(sampleThroughput, CHART.every_ms);
  checkAccess().then((ok) => { if (ok) connect(); });
})();
