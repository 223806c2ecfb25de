// modelhaul web page: the queue, the speed limit and the store, kept current by the
// service's event stream (a snapshot, then every change). Buttons only send requests; what
// the page shows always comes back through the stream, so several open pages agree.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const FINAL = new Set(["completed", "failed", "cancelled"]);
  const ACTIVE = new Set(["queued", "running", "verifying"]);
  const state = { downloads: new Map(), store: null, limit: null };

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
        $("queue-body").replaceChildren();
        renderQueue();
        renderLimit();
        renderStore();
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
      case "total":
        $("total").textContent = ev.speed > 0 ? "↓ " + bytes(ev.speed) + "/s" : "";
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
  }

  function buildRow(id) {
    const tr = el("tr", { id: "dl-" + id });
    tr.dataset.id = id;
    const bar = el("div", { className: "bar" }, el("div", { className: "fill" }), el("span", { className: "label" }));
    const prio = el("input", { className: "prio", type: "number", min: -1000, max: 1000, step: 1 });
    prio.setAttribute("aria-label", "priority");
    prio.addEventListener("change", () => {
      const value = parseInt(prio.value, 10);
      if (Number.isNaN(value)) return;
      report("queue-error", api("PUT", "/api/downloads/" + id + "/priority", { priority: value }));
    });
    const actions = el("td", { className: "actions" });
    for (const [action, label, cls] of [
      ["pause", "Pause", ""], ["resume", "Resume", ""], ["cancel", "Cancel", "danger"], ["forget", "Clear", ""],
    ]) {
      const b = el("button", { type: "button", textContent: label, className: (action + " " + cls).trim() });
      b.dataset.action = action;
      actions.append(b);
    }
    tr.append(
      el("td", { className: "id" }, String(id)),
      el("td", { className: "name" }),
      el("td", {}, el("span", { className: "state" })),
      el("td", {}, bar),
      el("td", { className: "speed" }),
      el("td", { className: "eta" }),
      el("td", {}, prio),
      actions,
    );
    return tr;
  }

  function updateRow(tr, d) {
    tr.dataset.state = d.state;
    tr.className = FINAL.has(d.state) ? "final" : "";
    const name = tr.querySelector(".name");
    name.textContent = d.name;
    name.title = d.source + (d.path ? "\n→ " + d.path : "");
    const st = tr.querySelector(".state");
    st.textContent = d.state;
    st.className = "state " + d.state;
    if (d.error && d.state !== "cancelled") st.title = d.error.message + (d.error.hint ? "\n" + d.error.hint : "");
    const bar = tr.querySelector(".bar");
    const pct = d.total ? Math.min(100, (100 * d.bytes_done) / d.total) : d.state === "completed" ? 100 : 0;
    bar.className = "bar " + d.state;
    bar.dataset.bytes = String(d.bytes_done);
    bar.dataset.total = d.total === null ? "" : String(d.total);
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuenow", pct.toFixed(1));
    bar.querySelector(".fill").style.width = pct.toFixed(2) + "%";
    bar.querySelector(".label").textContent =
      (d.total ? pct.toFixed(1) + "% · " : "") + bytes(d.bytes_done) + (d.total ? " / " + bytes(d.total) : "");
    tr.querySelector(".speed").textContent = d.state === "running" && d.speed > 0 ? bytes(d.speed) + "/s" : "";
    tr.querySelector(".eta").textContent = d.state === "running" ? duration(d.eta) : "";
    const prio = tr.querySelector(".prio");
    if (document.activeElement !== prio) prio.value = String(d.priority);
    const show = {
      pause: ACTIVE.has(d.state),
      resume: d.state === "paused" || d.state === "failed",
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
        if (!window.confirm("Remove " + name + " (" + bytes(m.size) + ") from the store?")) return;
        report("store-error", api("POST", "/api/models/remove", { name: m.name, repo_type: m.repo_type }));
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

  checkAccess().then((ok) => { if (ok) connect(); });
})();
