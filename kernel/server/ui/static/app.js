// Legato's web UI: one page, routed by the URL's hash, reading the API of the server it came from.
//   #/                          workflows
//   #/w/WID                     a workflow: versions (diff of two), instances (state filter, pages)
//   #/w/WID/i/IID               an instance: DAG with live states, actions, timeline
//   #/w/WID/i/IID/loop/SCOPE    a loop's body (SCOPE: the loop step, or loop/3 for one iteration)
//   #/w/WID/i/IID/s/STEP        a step: params as evaluated, outputs, attempts, live log
// Live updates come from GET …/instances/IID/events (Server-Sent Events); actions go through the
// same API with the token kept in sessionStorage.
"use strict";

(function () {
  const D = window.LegatoDag;
  const main = document.getElementById("main");
  const crumbs = document.getElementById("crumbs");
  const announce = document.getElementById("announce");
  const livePill = document.getElementById("live-pill");
  const W = "/api/v3/workflows";
  const enc = encodeURIComponent;
  let cleanup = [];  // what the current page must stop when another opens (streams, timers)

  // -- small helpers ------------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) {
      const v = attrs[k];
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) e.append(c instanceof Node ? c : String(c));
    return e;
  }
  // Replace an element's children, leaving out the null ones (Element.append would write "null").
  function fill(e, ...kids) { e.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false)); return e; }
  const fmt = (n) => (n == null ? "" : Number(n).toLocaleString("en-US"));
  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }
  function clock(iso) {  // a timeline's: the time to the millisecond (the date is in the tooltip)
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleTimeString(undefined, { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }
  function took(a, b) {
    if (!a) return "";
    const ms = (b ? new Date(b) : new Date()) - new Date(a);
    if (ms < 1000) return `${ms} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
  }
  function state(s, extra) {
    const c = D.category(s);
    return h("span", { class: `state s-${c}`, "data-state": s, title: s },
      h("span", { class: "g", "aria-hidden": "true" }, D.GLYPH[c]), extra ? `${s} ${extra}` : s);
  }
  function say(text) { announce.textContent = text; }
  function toast(text, bad) {
    const t = h("div", { class: "toast" + (bad ? " error" : ""), role: "alert" }, text);
    document.body.append(t);
    setTimeout(() => t.remove(), bad ? 8000 : 4000);
  }
  function setCrumbs(items) {
    crumbs.textContent = "";
    items.forEach(([label, href], i) => crumbs.append(h("li", {}, href && i < items.length - 1 ? h("a", { href }, label) : h("span", { "aria-current": i === items.length - 1 ? "page" : null }, label))));
    document.title = items.length ? `${items[items.length - 1][0]} · Legato` : "Legato";
  }

  async function api(path, options) {
    const r = await fetch(path, options);
    const text = await r.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (e) { body = { error: { message: text } }; }
    if (!r.ok) {
      const err = new Error((body && body.error && body.error.message) || `${r.status} ${r.statusText}`);
      err.status = r.status;
      throw err;
    }
    return body;
  }
  function failure(err) { return h("p", { class: "error", role: "alert" }, err.message || String(err)); }

  // -- theme ----------------------------------------------------------------------------------------
  const themeButton = document.getElementById("theme-button");
  function isDark() {
    const t = document.documentElement.dataset.theme;
    return t ? t === "dark" : window.matchMedia("(prefers-color-scheme: dark)").matches;
  }
  function showTheme() {
    themeButton.textContent = isDark() ? "\u263C Light" : "\u263E Dark";
    themeButton.setAttribute("aria-pressed", String(isDark()));
  }
  themeButton.addEventListener("click", () => {
    const next = isDark() ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    try { localStorage.setItem("legato-theme", next); } catch (e) { /* private mode: this page only */ }
    showTheme();
  });
  showTheme();

  // -- the token and actions ------------------------------------------------------------------------
  const tokenDialog = document.getElementById("token-dialog");
  const tokenInput = document.getElementById("token-input");
  const KEY = "legato-api-token";
  const token = () => sessionStorage.getItem(KEY) || "";
  function askToken() {
    return new Promise((resolve) => {
      tokenInput.value = token();
      tokenDialog.returnValue = "";
      tokenDialog.addEventListener("close", function done() {
        tokenDialog.removeEventListener("close", done);
        if (tokenDialog.returnValue === "ok" && tokenInput.value.trim()) sessionStorage.setItem(KEY, tokenInput.value.trim());
        if (tokenDialog.returnValue === "forget") sessionStorage.removeItem(KEY);
        resolve(token());
      });
      tokenDialog.showModal();
      tokenInput.focus();
    });
  }
  document.getElementById("token-button").addEventListener("click", askToken);

  const confirmDialog = document.getElementById("confirm");
  function confirmAction(title, text) {
    return new Promise((resolve) => {
      document.getElementById("confirm-title").textContent = title;
      document.getElementById("confirm-text").textContent = text;
      confirmDialog.returnValue = "";
      confirmDialog.addEventListener("close", function done() {
        confirmDialog.removeEventListener("close", done);
        resolve(confirmDialog.returnValue === "ok");
      });
      confirmDialog.showModal();
      document.getElementById("confirm-cancel").focus();
    });
  }

  // Ask, confirm, send with the token (asked once per tab; asked again when refused), say the outcome.
  async function act(title, text, method, path, body) {
    if (!(await confirmAction(title, text))) return null;
    if (!token() && !sessionStorage.getItem(KEY + "-none")) {
      // Asked once per tab; Cancel sends without one (a server started with --no-auth needs none).
      if (!(await askToken())) sessionStorage.setItem(KEY + "-none", "1");
    }
    for (let tries = 0; tries < 2; tries++) {
      const headers = { "Content-Type": "application/json" };
      if (token()) headers.Authorization = `Bearer ${token()}`;
      try {
        const out = await api(path + (path.includes("?") ? "&" : "?") + "blocking=false", { method, headers, body: JSON.stringify(body || {}) });
        toast(`${title}: ${out.outcome || "asked (pending)"}`);
        say(`${title}: ${out.outcome || "asked (pending)"}`);
        return out;
      } catch (err) {
        if ((err.status === 401 || err.status === 403) && tries === 0) {
          if (err.status === 403) sessionStorage.removeItem(KEY);
          if (!(await askToken())) return null;
          continue;
        }
        toast(`${title}: ${err.message}`, true);
        return null;
      }
    }
    return null;
  }
  function actionButton(label, cls, onclick, id) {
    return h("button", { type: "button", class: cls || "", onclick, "data-action": id || label.toLowerCase() }, label);
  }

  // -- workflows ------------------------------------------------------------------------------------
  async function workflowsPage() {
    setCrumbs([["Workflows", "#/"]]);
    const [list, triggers] = await Promise.all([api(`${W}?recent=12`), api("/api/v3/triggers").catch(() => [])]);
    const rows = list.map((w) => h("tr", {},
      h("td", {}, h("a", { href: `#/w/${enc(w.workflow_id)}` }, w.workflow_id)),
      h("td", { class: "num" }, w.active_version != null ? `v${w.active_version}` : h("span", { class: "muted" }, "none")),
      h("td", { class: "num" }, fmt(w.versions)),
      h("td", {}, w.run_strategy || h("span", { class: "muted" }, "?")),
      h("td", {}, runDots(w.workflow_id, w.recent)),
      h("td", { "data-next-trigger": w.workflow_id }, nextTrigger(triggers.filter((t) => t.workflow_id === w.workflow_id)))));
    return [h("h1", {}, "Workflows"),
      list.length ? h("table", { "aria-label": "Workflows" },
        h("thead", {}, h("tr", {}, h("th", {}, "Workflow"), h("th", { class: "num" }, "Active"), h("th", { class: "num" }, "Versions"),
          h("th", {}, "Run strategy"), h("th", {}, "Latest runs (newest first)"), h("th", {}, "Next trigger"))),
        h("tbody", {}, rows))
        : h("p", { class: "empty" }, "No workflow yet: push one with `legato push FILE` or POST /api/v3/workflows."),
      legend(), h("p", {}, h("a", { href: "#/signals" }, "Signals and triggers"))];
  }
  // A workflow's next trigger (GET /api/v3/triggers): the soonest due of its running ones, else why none.
  function nextTrigger(rows) {
    if (!rows.length) return h("span", { class: "muted" }, "none");
    if (rows.every((t) => t.paused)) return h("span", { class: "muted" }, "paused");
    const due = rows.filter((t) => !t.paused && !t.disabled && t.next_due).map((t) => t.next_due).sort();
    if (!due.length) return h("span", { class: "muted" }, rows.some((t) => t.problem) ? "does not load" : rows[0].type || "");
    const first = rows.find((t) => t.next_due === due[0]);
    return h("span", { title: `${first.type} ${first.schedule}` }, `${when(due[0])} (${first.type})`);
  }
  function runDots(wid, runs) {
    if (!runs.length) return h("span", { class: "muted" }, "no runs");
    return h("span", { class: "dots" }, runs.map((r) => {
      const c = D.category(r.status);
      return h("a", { class: `dot s-${c}`, href: `#/w/${enc(wid)}/i/${enc(r.instance_id)}`, title: `${r.status} · ${when(r.created_at)}`,
        "aria-label": `${r.status}, instance ${r.instance_id.slice(0, 8)}, ${when(r.created_at)}`, "data-state": r.status }, D.GLYPH[c]);
    }));
  }
  function legend() {
    return h("div", { class: "legend", "aria-label": "What the shapes mean" }, h("span", { class: "muted" }, "Key:"),
      ["SUCCEEDED", "RUNNING", "WAITING_FOR_PERMITS", "FATALLY_FAILED", "STOPPED", "NOT_CREATED"].map((s) => state(s)));
  }

  // -- a workflow: versions and instances -------------------------------------------------------------
  async function workflowPage(wid, query) {
    setCrumbs([["Workflows", "#/"], [wid, `#/w/${enc(wid)}`]]);
    const [versions, summary] = await Promise.all([api(`${W}/${enc(wid)}/versions`), api(`${W}?recent=0`)]);
    const mine = summary.find((w) => w.workflow_id === wid) || {};
    const out = [h("h1", {}, wid, mine.run_strategy ? h("span", { class: "live-pill" }, mine.run_strategy) : null)];
    if (mine.run_strategy === "STRICT_SEQUENTIAL") {
      out.push(h("div", { class: "row" }, actionButton("Unblock", "", async () => {
        await act("Unblock", `Let ${wid}'s queue go on past its failed instances?`, "PUT", `${W}/${enc(wid)}/actions/unblock`);
        route();
      })));
    }
    // Versions, and a diff of two of them.
    const pick = (name, value) => h("select", { id: name, "aria-label": name === "diff-a" ? "Older version" : "Newer version" },
      versions.map((v) => h("option", { value: v.version, selected: v.version === value }, `v${v.version}${v.active ? " (active)" : ""}`)));
    const last = versions[versions.length - 1].version;
    const a = pick("diff-a", Math.max(1, last - 1)), b = pick("diff-b", last);
    const diffOut = h("pre", { class: "json diff", id: "diff", "aria-live": "polite" });
    async function showDiff() {
      const [va, vb] = await Promise.all([api(`${W}/${enc(wid)}/versions/${a.value}`), api(`${W}/${enc(wid)}/versions/${b.value}`)]);
      const parts = Diff.diffLines(JSON.stringify(va.definition, null, 2) + "\n", JSON.stringify(vb.definition, null, 2) + "\n");
      diffOut.textContent = "";
      let changed = 0;
      for (const p of parts) {
        const lines = p.value.replace(/\n$/, "").split("\n");
        if (p.added || p.removed) changed += lines.length;
        if (!p.added && !p.removed && lines.length > 6) {
          diffOut.append(h("span", {}, lines.slice(0, 2).map((l) => "  " + l + "\n").join("")),
            h("span", { class: "muted" }, `  … ${lines.length - 4} unchanged lines …\n`),
            h("span", {}, lines.slice(-2).map((l) => "  " + l + "\n").join("")));
          continue;
        }
        diffOut.append(h("span", { class: p.added ? "add" : p.removed ? "del" : "" }, lines.map((l) => (p.added ? "+ " : p.removed ? "- " : "  ") + l + "\n").join("")));
      }
      if (!changed) diffOut.textContent = `v${a.value} and v${b.value} are the same definition.`;
    }
    a.addEventListener("change", showDiff); b.addEventListener("change", showDiff);
    out.push(h("div", { class: "grid2" },
      h("section", { "aria-labelledby": "versions-h" }, h("h2", { id: "versions-h" }, "Versions"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Version"), h("th", {}, "Created"), h("th", { class: "num" }, "Steps"), h("th", {}, ""))),
          h("tbody", {}, versions.slice().reverse().map((v) => h("tr", {},
            h("td", {}, `v${v.version}`), h("td", {}, when(v.created_at)), h("td", { class: "num" }, fmt(v.steps)),
            h("td", {}, v.active ? h("b", {}, "active") : "")))))),
      h("section", { "aria-labelledby": "diff-h" }, h("h2", { id: "diff-h" }, "Diff"),
        versions.length > 1 ? [h("div", { class: "row" }, a, "\u2192", b), h("div", { style: "margin-top:8px" }, diffOut)]
          : h("p", { class: "muted" }, "One version only: push another to compare."))));
    if (versions.length > 1) showDiff();

    // Instances: a state filter and cursor pages (the cursors seen are kept to go back).
    const statusNow = query.get("status") || "";
    const cursor = query.get("cursor") || "";
    const back = (query.get("back") || "").split(",").filter(Boolean);
    const params = new URLSearchParams({ first: "25" });
    if (statusNow) params.set("status", statusNow);
    if (cursor) params.set("cursor", cursor);
    const page = await api(`${W}/${enc(wid)}/instances?${params}`);
    const filter = h("select", { id: "status-filter", "aria-label": "Only instances in this state",
      onchange: (e) => { location.hash = `#/w/${enc(wid)}` + (e.target.value ? `?status=${e.target.value}` : ""); } },
    ["", "CREATED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "STOPPED", "TIMED_OUT"].map((s) => h("option", { value: s, selected: s === statusNow }, s || "every state")));
    const link = (c, b2) => `#/w/${enc(wid)}?` + new URLSearchParams(Object.assign(statusNow ? { status: statusNow } : {}, c ? { cursor: c } : {}, b2.length ? { back: b2.join(",") } : {}));
    out.push(h("section", { "aria-labelledby": "instances-h" }, h("h2", { id: "instances-h" }, "Instances"),
      h("div", { class: "row", style: "margin-bottom:8px" }, filter),
      page.items.length ? h("table", { id: "instances" }, h("thead", {}, h("tr", {}, h("th", {}, "Instance"), h("th", {}, "State"), h("th", { class: "num" }, "Version"),
        h("th", { class: "num" }, "Run"), h("th", {}, "Created"), h("th", {}, "Took"))),
      h("tbody", {}, page.items.map((i) => h("tr", {},
        h("td", { class: "mono" }, h("a", { href: `#/w/${enc(wid)}/i/${enc(i.instance_id)}` }, i.instance_id.slice(0, 12))),
        h("td", {}, state(i.status)), h("td", { class: "num" }, `v${i.version}`), h("td", { class: "num" }, i.run_id),
        h("td", {}, when(i.created_at)), h("td", {}, took(i.started_at, i.ended_at))))))
        : h("p", { class: "empty" }, statusNow ? `No ${statusNow} instance.` : "No instance yet."),
      h("div", { class: "pager" },
        back.length || cursor ? h("a", { href: link(back[back.length - 1] === "-" ? "" : back[back.length - 1] || "", back.slice(0, -1)), rel: "prev" }, "\u2190 Newer") : null,
        page.next_cursor ? h("a", { href: link(page.next_cursor, back.concat([cursor || "-"])), rel: "next", id: "next-page" }, "Older \u2192") : null)));
    return out;
  }

  // -- an instance ----------------------------------------------------------------------------------
  function instanceActions(wid, iid, status, after) {
    const base = `${W}/${enc(wid)}/instances/${enc(iid)}/actions`;
    const short = iid.slice(0, 8);
    const ended = ["SUCCEEDED", "FAILED", "STOPPED", "TIMED_OUT"].includes(status);
    const buttons = [];
    if (!ended) {
      buttons.push(actionButton("Stop", "", async () => after(await act("Stop", `Stop instance ${short}? Its running steps are cancelled; it ends STOPPED.`, "PUT", `${base}/stop`)), "stop"));
      buttons.push(actionButton("Kill", "danger", async () => after(await act("Kill", `Kill instance ${short}? It ends FAILED.`, "PUT", `${base}/kill`)), "kill"));
    } else {
      if (status !== "SUCCEEDED") {
        buttons.push(actionButton("Restart from incomplete", "primary", async () => after(await act("Restart from incomplete",
          `Run instance ${short} again from its incomplete steps (a new run)?`, "POST", `${base}/restart`, { mode: "RESTART_FROM_INCOMPLETE" })), "restart"));
      }
      buttons.push(actionButton("Restart from the beginning", "", async () => after(await act("Restart from the beginning",
        `Run instance ${short} again from its first steps (a new run)?`, "POST", `${base}/restart`, { mode: "RESTART_FROM_BEGINNING" })), "restart-beginning"));
    }
    return h("div", { class: "row", id: "instance-actions", role: "toolbar", "aria-label": "Actions" }, buttons);
  }

  // The instance's event stream: calls onEvents with each batch of new timeline events.
  function follow(wid, iid, after, handlers) {
    let source = null, offset = after, closed = false;
    function open() {
      const url = `${W}/${enc(wid)}/instances/${enc(iid)}/events` + (offset != null ? `?after=${offset}` : "");
      source = new EventSource(url);
      source.addEventListener("hello", (e) => { const d = JSON.parse(e.data); main.dataset.live = "on"; if (offset == null) offset = d.offset; livePill.hidden = false; livePill.classList.add("on"); handlers.hello && handlers.hello(d); });
      source.addEventListener("timeline", (e) => { const d = JSON.parse(e.data); offset = d.offset; handlers.events(d.events); });
      source.addEventListener("instance", (e) => handlers.instance && handlers.instance(JSON.parse(e.data)));
      source.addEventListener("end", () => { source.close(); livePill.classList.remove("on"); livePill.textContent = "ended"; main.dataset.live = "ended"; });
      source.onerror = () => { livePill.classList.remove("on"); };
    }
    open();
    const stop = () => { closed = true; if (source) source.close(); livePill.hidden = true; livePill.textContent = "live"; };
    cleanup.push(stop);
    return { reopen() { if (!closed) { source.close(); livePill.textContent = "live"; open(); } }, stop };
  }

  async function instancePage(wid, iid, scope) {
    // scope: a loop's body over its iterations (`loop`, `loop/3/inner`), or one iteration's (`loop/3`)
    const oneIteration = !!scope && /^\d+$/.test(scope.split("/").pop());
    const prefix = scope ? scope + "/" : "";
    const base = `${W}/${enc(wid)}/instances/${enc(iid)}`;
    const t0 = performance.now();
    const q = scope ? `?scope=${enc(scope)}` : "";
    // The timeline first: its length is where the event stream starts, so that every change after
    // the graph below was read reaches the page (one made in between is applied twice: harmless).
    const tl = await api(base + "/timeline?last=200");
    const [inst, graph] = await Promise.all([api(base + "?view=summary").catch(() => null), api(base + "/graph" + q)]);
    iid = graph.instance_id;
    const iidShort = iid.slice(0, 12);
    const trail = [["Workflows", "#/"], [wid, `#/w/${enc(wid)}`], [iidShort, `#/w/${enc(wid)}/i/${enc(iid)}`]];
    if (scope) trail.push([scope, ""]);
    setCrumbs(trail);

    const statusBox = h("span", { id: "instance-status" }, state(graph.status));
    const actionsBox = h("div", { id: "actions-box" });
    const meta = h("div", { class: "meta", id: "instance-meta" });
    function showMeta(i) {
      meta.textContent = "";
      if (!i) return;
      const parent = i.parent;
      fill(meta, h("span", {}, "version ", h("b", {}, `v${i.version}`)), h("span", {}, "run ", h("b", { id: "run-id" }, i.run_id)),
        h("span", {}, "created ", h("b", {}, when(i.created_at))), i.started_at ? h("span", {}, "started ", h("b", {}, when(i.started_at))) : null,
        i.ended_at ? h("span", {}, "ended ", h("b", {}, when(i.ended_at)), ` (${took(i.started_at, i.ended_at)})`) : null,
        parent ? h("span", {}, "started by ", h("a", { href: `#/w/${enc(parent.workflow_id)}/i/${enc(parent.instance_id)}` }, `${parent.workflow_id} / ${parent.step_id}`)) : null,
        i.message ? h("span", {}, h("b", {}, i.message)) : null);
    }
    let current = graph.status, shownRun = graph.run_id;
    async function refreshHeader() {
      const i = await api(base + "?view=summary").catch(() => null);
      if (i) { current = i.status; statusBox.replaceChildren(state(i.status)); showMeta(i); }
      actionsBox.replaceChildren(instanceActions(wid, iid, current, afterAction));
    }
    function afterAction(out) { if (out) { refreshHeader(); stream.reopen(); } }
    showMeta(inst);
    actionsBox.append(instanceActions(wid, iid, graph.status, afterAction));

    const dagBox = h("div", { class: "dag-wrap", id: "dag" });
    const note = h("p", { class: "dag-note", id: "dag-note" });
    const drill = h("div", { id: "drill" });
    const dag = D.render(dagBox, graph, { open: (unit, byId) => openUnit(unit, byId) });
    note.textContent = `${fmt(dag.stats.steps)} step${dag.stats.steps === 1 ? "" : "s"}` + (dag.stats.drawn !== dag.stats.steps ? `, drawn as ${fmt(dag.stats.drawn)} nodes (parallel steps and long chains grouped; open a group to list its steps)` : "") + ` · laid out in ${Math.round(dag.stats.layout_ms)} ms`;
    function openUnit(unit, byId) {
      if (unit.members.length === 1) {
        const n = byId.get(unit.members[0]);
        const loop = n.kind === "foreach" || n.kind === "while";
        if (loop && (!scope || oneIteration)) location.hash = `#/w/${enc(wid)}/i/${enc(iid)}/loop/${enc(prefix + n.id)}`;
        else if (n.kind === "subworkflow" && n.child) location.hash = `#/w/${enc(n.child.workflow_id)}/i/${enc(n.child.instance_id)}`;
        else if (!scope) location.hash = `#/w/${enc(wid)}/i/${enc(iid)}/s/${enc(n.id)}`;
        else if (oneIteration) location.hash = `#/w/${enc(wid)}/i/${enc(iid)}/s/${enc(prefix + n.id)}`;
        else toast(`${n.id} runs once per iteration: open an iteration below to see one`);
        return;
      }
      // A group: its steps, a page at a time.
      let shown = 200;
      const render = () => {
        drill.replaceChildren(h("h2", { id: "drill-h" }, unit.label),
          h("table", { "aria-labelledby": "drill-h" }, h("thead", {}, h("tr", {}, h("th", {}, "Step"), h("th", {}, "State"), h("th", { class: "num" }, "Attempt"))),
            h("tbody", {}, unit.members.slice(0, shown).map((m) => { const n = byId.get(m); return h("tr", {},
              h("td", {}, scope ? m : h("a", { href: `#/w/${enc(wid)}/i/${enc(iid)}/s/${enc(m)}` }, m)), h("td", {}, state(n.status)), h("td", { class: "num" }, n.attempt)); }))),
          unit.members.length > shown ? h("div", { class: "pager" }, h("button", { type: "button", onclick: () => { shown += 1000; render(); } }, `Show more (${fmt(unit.members.length - shown)} left)`)) : null);
        drill.scrollIntoView({ block: "nearest" });
      };
      render();
    }

    const timeline = h("tbody", { id: "timeline" });
    const actionsList = h("tbody", { id: "actions-list" });
    const out = [h("h1", {}, scope ? `${scope} of ${iidShort}` : `Instance ${iidShort}`, statusBox), meta, actionsBox,
      h("h2", {}, scope ? "Loop body" : "DAG"), dagBox, note, drill];
    if (scope && !oneIteration) out.push(await iterationsTable(wid, iid, scope));
    out.push(h("div", { class: "grid2" },
      h("section", { "aria-labelledby": "tl-h" }, h("h2", { id: "tl-h" }, "Timeline (newest first)"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "Step"), h("th", {}, "State"), h("th", {}, "Message"))), timeline)),
      h("section", { "aria-labelledby": "ac-h" }, h("h2", { id: "ac-h" }, "Actions asked (who, when)"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "Who"), h("th", {}, "What"), h("th", {}, "Outcome"))), actionsList))));

    function eventRow(e) {
      return h("tr", {}, h("td", { class: "mono", title: when(e.ts) }, clock(e.ts)), h("td", {}, e.step_id || h("i", {}, "instance")),
        h("td", {}, state(e.status, e.attempt > 1 ? `#${e.attempt}` : "")), h("td", {}, e.message || ""));
    }
    async function loadActions() {
      const list = await api(base + "/actions").catch(() => []);
      actionsList.replaceChildren(...(list.length ? list.slice().reverse().map((a) => h("tr", {}, h("td", { class: "mono", title: when(a.requested_at) }, clock(a.requested_at)), h("td", {}, a.requested_by),
        h("td", {}, a.verb + (a.step_id ? ` ${a.step_id}` : "") + (a.params && a.params.mode ? ` (${a.params.mode})` : "")), h("td", {}, a.outcome || "pending")))
        : [h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No action asked yet."))]));
    }
    loadActions();
    timeline.replaceChildren(...tl.events.slice().reverse().map(eventRow));

    // Live: apply each event to its node (a loop body's events refresh the loop's counts, throttled).
    let pendingGraph = null;
    function refetchGraph() {
      if (pendingGraph) return;
      pendingGraph = setTimeout(async () => {
        pendingGraph = null;
        const g = await api(base + "/graph" + q).catch(() => null);
        if (g) for (const n of g.nodes) dag.update(n.id, n.status, n.attempt, { iterations: n.iterations, total: n.total, child: n.child, counts: n.counts }, true);
        dag.flush();
      }, 1000);
    }
    const stream = follow(wid, iid, tl.total, {
      events(events) {
        for (const e of events) {
          if (e.step_id === null) { statusBox.replaceChildren(state(e.status)); current = e.status; continue; }
          if (!e.step_id.startsWith(prefix)) continue;
          const rest = e.step_id.slice(prefix.length);
          if (!scope && !rest.includes("/") && dag.update(rest, e.status, e.attempt, null, true)) continue;
          refetchGraph();
        }
        dag.flush();
        const rows = events.slice(-500).reverse().map(eventRow);
        timeline.prepend(...rows);
        while (timeline.children.length > 500) timeline.lastChild.remove();
        say(`${events.length} new event(s)`);
      },
      instance(d) {
        if (d.status === current && d.run_id === shownRun) return;  // what the page shows already
        current = d.status; shownRun = d.run_id;
        statusBox.replaceChildren(state(d.status)); refreshHeader(); loadActions();
      },
    });
    window.__legatoPage = { kind: "instance", steps: dag.stats.steps, drawn: dag.stats.drawn, layout_ms: dag.stats.layout_ms, ready_ms: performance.now() - t0 };
    return out;
  }

  async function iterationsTable(wid, iid, loop) {
    const inst = await api(`${W}/${enc(wid)}/instances/${enc(iid)}`).catch(() => null);
    // loop: `outer` or `outer/2/inner`: walk the nested iterations down to it
    const parts = loop.split("/");
    let node = inst && inst.steps[parts[0]];
    for (let i = 1; node && i + 1 < parts.length; i += 2) node = node.iterations && node.iterations[parts[i]] && node.iterations[parts[i]].steps[parts[i + 1]];
    const its = (node && node.iterations) || {};
    const keys = Object.keys(its).sort((a, b) => a - b).slice(0, 500);
    return h("section", {}, h("h2", {}, `Iterations (${fmt(Object.keys(its).length)})`),
      keys.length ? h("table", {}, h("thead", {}, h("tr", {}, h("th", { class: "num" }, "#"), h("th", {}, "State"), h("th", {}, "Loop params"), h("th", {}, "Took"))),
        h("tbody", {}, keys.map((k) => h("tr", {}, h("td", { class: "num" }, h("a", { href: `#/w/${enc(wid)}/i/${enc(iid)}/loop/${enc(loop + "/" + k)}` }, k)),
          h("td", {}, state(its[k].status)), h("td", { class: "mono" }, JSON.stringify(its[k].loop_params || {})), h("td", {}, took(its[k].started_at, its[k].ended_at))))))
        : h("p", { class: "muted" }, "No iteration yet."));
  }

  // -- a step ---------------------------------------------------------------------------------------
  async function stepPage(wid, iid, sid) {
    const base = `${W}/${enc(wid)}/instances/${enc(iid)}`;
    const start = await api(base + "/timeline?last=1");  // where the event stream starts (see instancePage)
    const [inst, step] = await Promise.all([api(base + "?view=summary"), api(`${base}/steps/${enc(sid)}`)]);
    iid = inst.instance_id;
    setCrumbs([["Workflows", "#/"], [wid, `#/w/${enc(wid)}`], [iid.slice(0, 12), `#/w/${enc(wid)}/i/${enc(iid)}`], [sid, ""]]);
    const statusBox = h("span", { id: "step-status" }, state(step.status));
    const meta = h("div", { class: "meta", id: "step-meta" });
    const params = h("pre", { class: "json", id: "step-params" });
    const outputs = h("pre", { class: "json", id: "step-outputs" });
    const attempts = h("tbody", { id: "attempts" });
    const log = h("pre", { class: "log", id: "log", tabindex: 0, "aria-label": "Log", "aria-live": "off" });
    const actionsBox = h("div", { id: "actions-box" });
    let instStatus = inst.status, stepStatus = step.status;

    function show(s) {
      stepStatus = s.status;
      statusBox.replaceChildren(state(s.status));
      fill(meta, h("span", {}, "attempt ", h("b", { id: "step-attempt" }, s.attempt)),
        s.started_at ? h("span", {}, "started ", h("b", {}, when(s.started_at))) : null,
        s.ended_at ? h("span", {}, "took ", h("b", {}, took(s.started_at, s.ended_at))) : null,
        s.message ? h("span", {}, h("b", {}, s.message)) : null);
      const latest = s.attempts && s.attempts.length ? s.attempts[s.attempts.length - 1] : null;
      params.textContent = latest && latest.params ? JSON.stringify(latest.params, null, 2) : "(not evaluated yet)";
      outputs.textContent = s.outputs && Object.keys(s.outputs).length ? JSON.stringify(s.outputs, null, 2) : "(none yet)";
      attempts.replaceChildren(...(s.attempts || []).map((a) => h("tr", {}, h("td", { class: "num" }, a.run_id), h("td", { class: "num" }, a.attempt),
        h("td", {}, state(a.status)), h("td", {}, when(a.started_at)), h("td", {}, took(a.started_at, a.ended_at)), h("td", {}, a.message || ""))));
      actionsBox.replaceChildren(stepActions());
    }
    function stepActions() {
      const sbase = `${base}/steps/${enc(sid)}/actions`;
      const ended = ["SUCCEEDED", "FAILED", "STOPPED", "TIMED_OUT"].includes(instStatus);
      const stepEnded = D.TERMINAL.has(stepStatus);
      const b = [];
      const after = async (out) => { if (out) { await reload(); stream.reopen(); } };
      if (!ended && !stepEnded && stepStatus !== "NOT_CREATED") {
        b.push(actionButton("Skip", "", async () => after(await act("Skip", `Skip step ${sid}? It ends SKIPPED and the DAG goes on.`, "PUT", `${sbase}/skip`)), "skip"));
        b.push(actionButton("Stop", "", async () => after(await act("Stop", `Stop step ${sid}? It ends STOPPED (and so does the instance).`, "PUT", `${sbase}/stop`)), "stop"));
        b.push(actionButton("Kill", "danger", async () => after(await act("Kill", `Kill step ${sid}? It ends FATALLY_FAILED; its failure mode applies.`, "PUT", `${sbase}/kill`)), "kill"));
      }
      if (ended && !sid.includes("/")) {
        b.push(actionButton("Restart from this step", "primary", async () => after(await act("Restart from this step",
          `Run instance ${iid.slice(0, 8)} again from step ${sid} (a new run)?`, "POST", `${base}/actions/restart`, { mode: "RESTART_FROM_SPECIFIC", step_id: sid })), "restart-from-step"));
      }
      return h("div", { class: "row", role: "toolbar", "aria-label": "Actions" }, b);
    }
    async function reload() {
      const [i, s] = await Promise.all([api(base + "?view=summary"), api(`${base}/steps/${enc(sid)}`)]);
      instStatus = i.status;
      show(s);
    }
    show(step);

    // The log: read from an offset; read again on every event of this step, and every second while it runs.
    let offset = 0, reading = false;
    async function readLog() {
      if (reading) return;
      reading = true;
      try {
        const got = await api(`${base}/logs?step_id=${enc(sid)}&offset=${offset}&limit=2000`);
        offset = got.next_offset;
        if (got.chunks.length) {
          const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
          const frag = document.createDocumentFragment();
          for (const c of got.chunks) frag.append(h("span", { class: c.stream === "stderr" ? "err" : "" }, c.text));
          if (log.dataset.empty !== "no") { log.textContent = ""; log.dataset.empty = "no"; }
          log.append(frag);
          if (stick) log.scrollTop = log.scrollHeight;
        } else if (log.dataset.empty !== "no") log.textContent = "(no output yet)";
      } finally { reading = false; }
    }
    await readLog();
    const timer = setInterval(() => { if (!D.TERMINAL.has(stepStatus)) readLog(); }, 500);
    cleanup.push(() => clearInterval(timer));
    const stream = follow(wid, iid, start.total, {
      events(events) {
        if (events.some((e) => e.step_id === sid || e.step_id === null)) { reload(); readLog(); }
      },
    });
    return [h("h1", {}, `Step ${sid}`, statusBox), meta, actionsBox,
      h("div", { class: "grid2" }, h("section", {}, h("h2", {}, "Params (as evaluated)"), params), h("section", {}, h("h2", {}, "Outputs"), outputs)),
      h("h2", {}, "Attempts"),
      h("table", {}, h("thead", {}, h("tr", {}, h("th", { class: "num" }, "Run"), h("th", { class: "num" }, "Attempt"), h("th", {}, "State"), h("th", {}, "Started"), h("th", {}, "Took"), h("th", {}, "Message"))), attempts),
      h("h2", {}, "Log"), log];
  }

  // -- signals and triggers: a stub that reads what this server's API has (from /openapi.json) ----------
  async function signalsPage() {
    setCrumbs([["Workflows", "#/"], ["Signals and triggers", ""]]);
    const spec = await api("/openapi.json");
    const paths = Object.keys(spec.paths).filter((p) => /signal|trigger/i.test(p));
    const out = [h("h1", {}, "Signals and triggers")];
    if (!paths.length) {
      out.push(h("p", { class: "empty", id: "signals-none" }, "This server's API has no signals or triggers yet."));
      return out;
    }
    out.push(h("p", { class: "muted" }, "What this server's API answers about them:"),
      h("ul", { id: "signal-paths" }, paths.map((p) => h("li", { class: "mono" }, Object.keys(spec.paths[p]).map((m) => m.toUpperCase()).join(", ") + " " + p))));
    for (const p of paths.filter((p) => !p.includes("{") && spec.paths[p].get)) {
      out.push(h("h2", {}, p));
      const got = await api(p).catch((err) => ({ error: err.message }));
      out.push(h("pre", { class: "json" }, JSON.stringify(got, null, 2).slice(0, 20000)));
    }
    const byName = paths.find((p) => /\/signals\/\{name\}$/.test(p) && spec.paths[p].get);
    if (byName) {
      const input = h("input", { id: "signal-name", "aria-label": "Signal name", placeholder: "signal name" });
      const shown = h("pre", { class: "json", id: "signal-shown" }, "");
      out.push(h("h2", {}, "The latest signal of a name"),
        h("form", { class: "row", onsubmit: async (e) => {
          e.preventDefault();
          const got = await api(byName.replace("{name}", enc(input.value.trim()))).catch((err) => ({ error: err.message }));
          shown.textContent = JSON.stringify(got, null, 2);
        } }, input, h("button", { type: "submit" }, "Show")), shown);
    }
    return out;
  }

  // -- routing --------------------------------------------------------------------------------------
  // The skip link focuses the content (its href would change the hash, which names the page).
  document.getElementById("skip").addEventListener("click", (e) => { e.preventDefault(); main.focus(); });

  let routed = 0;  // the latest route's number: a slower earlier one must not draw over it
  async function route() {
    const mine = ++routed, hash = location.hash || "#/";
    for (const t of document.querySelectorAll(".toast")) t.remove();  // of the page left
    for (const stop of cleanup.splice(0)) stop();
    delete main.dataset.live;
    delete main.dataset.ready;  // until this page is drawn (what tests and tools wait for)
    const [path, qs] = location.hash.replace(/^#/, "").split("?");
    const parts = (path || "/").split("/").filter(Boolean).map(decodeURIComponent);
    const query = new URLSearchParams(qs || "");
    let page;
    try {
      if (!parts.length) page = await workflowsPage();
      else if (parts[0] === "signals") page = await signalsPage();
      else if (parts[0] === "w" && parts.length === 2) page = await workflowPage(parts[1], query);
      else if (parts[0] === "w" && parts[2] === "i" && parts.length === 4) page = await instancePage(parts[1], parts[3], "");
      else if (parts[0] === "w" && parts[2] === "i" && parts[4] === "loop") page = await instancePage(parts[1], parts[3], parts.slice(5).join("/"));
      else if (parts[0] === "w" && parts[2] === "i" && parts[4] === "s") page = await stepPage(parts[1], parts[3], parts.slice(5).join("/"));
      else page = [h("p", { class: "error" }, `No page at ${location.hash}: `, h("a", { href: "#/" }, "see the workflows"))];
    } catch (err) {
      page = [failure(err), h("p", {}, h("a", { href: "#/" }, "Back to the workflows"))];
    }
    if (mine !== routed) return;
    main.replaceChildren(...[].concat(page));
    main.dataset.ready = hash;
    if (window.__legatoPage && window.__legatoPage.kind === "instance") window.__legatoPage.painted_ms = performance.now();
  }
  window.addEventListener("hashchange", () => { route(); main.focus({ preventScroll: true }); });
  route();
})();
