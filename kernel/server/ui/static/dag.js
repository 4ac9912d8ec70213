// The instance DAG: compressed, laid out by dagre (vendor/dagre.min.js), drawn once as SVG, then
// updated node by node as events arrive.
//
// dagre lays out a few hundred nodes in well under a second and thousands in many seconds (measured:
// 300 nodes ~1 s, 600 ~2 s), so the graph is made small first, without losing a step: siblings with
// the same predecessors and successors (a fan-out) become one group node, long runs of a chain one
// chain node, and, if it is still too big, each rank (longest path from a source) one node. Each
// group shows its steps counted by state and opens the list of them.
"use strict";

(function () {
  const CATEGORY = {
    SUCCEEDED: "ok",
    COMPLETED_WITH_ERROR: "warn", STOPPED: "warn",
    USER_FAILED: "fail", PLATFORM_FAILED: "fail", TIMEOUT_FAILED: "fail", FATALLY_FAILED: "fail",
    INTERNALLY_FAILED: "fail", TIMED_OUT: "fail", FAILED: "fail",
    STARTING: "run", RUNNING: "run", FINISHING: "run", IN_PROGRESS: "run",
    CREATED: "wait", INITIALIZED: "wait", PAUSED: "wait", WAITING_FOR_SIGNALS: "wait",
    EVALUATING_PARAMS: "wait", WAITING_FOR_PERMITS: "wait",
    SKIPPED: "idle", UNSATISFIED: "idle", NOT_CREATED: "idle", DISABLED: "idle",
  };
  // Each category has a shape (glyph) as well as a colour, and the state's name is always written.
  const GLYPH = { ok: "\u2713", fail: "\u2715", run: "\u25B6", wait: "\u25CB", warn: "\u25A0", idle: "\u2013" };
  const ORDER = ["fail", "run", "wait", "warn", "ok", "idle"];
  const category = (s) => CATEGORY[s] || "idle";
  const TERMINAL = new Set(["SUCCEEDED", "COMPLETED_WITH_ERROR", "STOPPED", "FATALLY_FAILED", "INTERNALLY_FAILED",
    "TIMED_OUT", "SKIPPED", "UNSATISFIED", "FAILED", "USER_FAILED", "PLATFORM_FAILED", "TIMEOUT_FAILED"]);

  const GROUP_MIN = 4;     // siblings of the same neighbours drawn as one node from this many
  const CHAIN_MIN = 6;     // a run of a chain drawn as one node from this many steps
  const MAX_LAYOUT = 150;  // nodes handed to dagre at most (see above)
  const SVG = "http://www.w3.org/2000/svg";

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  const short = (t, n) => (t.length > n ? t.slice(0, n - 1) + "\u2026" : t);
  const fmt = (n) => n.toLocaleString("en-US");

  // -- compression ------------------------------------------------------------------------------
  // Units: {id, members: [step ids], kind: "step" | "group" | "chain" | "rank" | "foreach" | ...}.
  function compress(nodes, edges) {
    const byId = new Map(nodes.map((n) => [n.id, n]));
    let units = nodes.map((n) => ({ id: n.id, kind: n.kind, members: [n.id] }));
    let unitOf = new Map(units.map((u) => [u.id, u.id]));
    let links = edges.map(([a, b]) => [a, b]);
    const rebuild = () => {
      const seen = new Set(), out = [];
      for (const [a, b] of edges) {
        const ua = unitOf.get(a), ub = unitOf.get(b);
        if (ua === undefined || ub === undefined || ua === ub) continue;
        const key = ua + "\u0000" + ub;
        if (!seen.has(key)) { seen.add(key); out.push([ua, ub]); }
      }
      links = out;
    };
    const neighbours = () => {
      const pred = new Map(), succ = new Map();
      for (const u of units) { pred.set(u.id, []); succ.set(u.id, []); }
      for (const [a, b] of links) { succ.get(a).push(b); pred.get(b).push(a); }
      return { pred, succ };
    };
    const merge = (groups, kind, label) => {
      const next = [];
      const taken = new Map();
      groups.forEach((g, i) => g.forEach((u) => taken.set(u.id, i)));
      const made = new Map();
      for (const u of units) {
        const i = taken.get(u.id);
        if (i === undefined) { next.push(u); continue; }
        if (made.has(i)) continue;
        const g = groups[i];
        const members = [].concat(...g.map((x) => x.members));
        const unit = { id: `${kind}:${g[0].id}`, kind, members, label: label(g, members) };
        const ranks = g.reduce((n, x) => n + (x.ranks || 0), 0);
        if (ranks) unit.ranks = ranks;
        made.set(i, unit);
        next.push(unit);
      }
      for (const u of units) {
        const i = taken.get(u.id);
        if (i !== undefined) for (const m of u.members) unitOf.set(m, made.get(i).id);
      }
      units = next;
      rebuild();
    };

    // 1. Siblings: the same predecessors and successors (plain steps only: loops and subworkflows
    //    carry their own counts and links).
    {
      const { pred, succ } = neighbours();
      const buckets = new Map();
      for (const u of units) {
        if (u.kind !== "step") continue;
        const key = pred.get(u.id).slice().sort().join(",") + "\u2192" + succ.get(u.id).slice().sort().join(",");
        if (!buckets.has(key)) buckets.set(key, []);
        buckets.get(key).push(u);
      }
      const groups = [...buckets.values()].filter((g) => g.length >= GROUP_MIN);
      if (groups.length) merge(groups, "group", (g, m) => `${fmt(m.length)} parallel steps`);
    }
    // 2. Chains: runs of units with one predecessor and one successor, each the other's only one.
    const chains = () => {
      const { pred, succ } = neighbours();
      const unitById = new Map(units.map((u) => [u.id, u]));
      const inChain = (id) => unitById.get(id).kind === "step" || unitById.get(id).kind === "chain";
      const linked = (a, b) => succ.get(a).length === 1 && pred.get(b).length === 1 && inChain(a) && inChain(b);
      const groups = [], done = new Set();
      for (const u of units) {
        if (done.has(u.id) || !inChain(u.id)) continue;
        const p = pred.get(u.id);
        if (p.length === 1 && linked(p[0], u.id)) continue;  // not a run's head
        const run = [u];
        let cur = u.id;
        while (succ.get(cur).length === 1 && linked(cur, succ.get(cur)[0])) {
          cur = succ.get(cur)[0];
          if (done.has(cur)) break;
          run.push(unitById.get(cur));
        }
        run.forEach((x) => done.add(x.id));
        const steps = run.reduce((n, x) => n + x.members.length, 0);
        if (steps >= CHAIN_MIN && run.length > 1) groups.push(run);
      }
      if (groups.length) merge(groups, "chain", (g, m) => (g.some((x) => x.ranks)
        ? `${fmt(m.length)} steps in ${fmt(g.reduce((n, x) => n + (x.ranks || 1), 0))} ranks`
        : `${fmt(m.length)} steps in a row: ${short(m[0], 14)} \u2192 ${short(m[m.length - 1], 14)}`));
    };
    chains();
    // 3. Still too many: one node per rank (longest path from a source), then chains again.
    if (units.length > MAX_LAYOUT) {
      const { pred } = neighbours();
      const rank = new Map();
      const order = topo(units, links);
      for (const id of order) rank.set(id, Math.max(-1, ...pred.get(id).map((p) => rank.get(p))) + 1);
      const byRank = new Map();
      for (const u of units) {
        const r = rank.get(u.id);
        if (!byRank.has(r)) byRank.set(r, []);
        byRank.get(r).push(u);
      }
      const groups = [...byRank.values()].filter((g) => g.length > 1);
      if (groups.length) merge(groups, "rank", (g, m) => `${fmt(m.length)} steps of one rank`);
      for (const u of units) if (u.kind === "rank") { u.kind = "chain"; u.ranks = 1; }  // a run of ranks may chain on
      chains();
    }
    return { units, links, byId };
  }

  function topo(units, links) {
    const indeg = new Map(units.map((u) => [u.id, 0])), succ = new Map(units.map((u) => [u.id, []]));
    for (const [a, b] of links) { indeg.set(b, indeg.get(b) + 1); succ.get(a).push(b); }
    const queue = units.filter((u) => indeg.get(u.id) === 0).map((u) => u.id), out = [];
    for (let head = 0; head < queue.length; head++) {
      const id = queue[head];
      out.push(id);
      for (const s of succ.get(id)) { indeg.set(s, indeg.get(s) - 1); if (indeg.get(s) === 0) queue.push(s); }
    }
    return out;
  }

  // -- drawing ----------------------------------------------------------------------------------
  function render(container, graph, opts) {
    const t0 = performance.now();
    const nodes = graph.nodes.map((n) => Object.assign({}, n));
    const { units, links, byId } = compress(nodes, graph.edges);
    const unitOf = new Map();
    for (const u of units) for (const m of u.members) unitOf.set(m, u);
    const size = (u) => (u.members.length > 1 || u.kind === "foreach" || u.kind === "while" ? [230, 66] : [190, 50]);

    const g = new dagre.graphlib.Graph();
    g.setGraph({ rankdir: "LR", nodesep: 18, ranksep: 46, marginx: 16, marginy: 16 });
    g.setDefaultEdgeLabel(() => ({}));
    for (const u of units) { const [w, h] = size(u); g.setNode(u.id, { width: w, height: h }); }
    const conds = new Map(graph.edges.filter((e) => e[2]).map((e) => [e[0] + "\u0000" + e[1], e[2]]));
    for (const [a, b] of links) g.setEdge(a, b);
    dagre.layout(g);
    const tLayout = performance.now();

    container.textContent = "";
    const W = Math.ceil(g.graph().width), H = Math.ceil(g.graph().height);
    const svg = el("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "group",
      "aria-label": `The DAG: ${fmt(nodes.length)} steps drawn as ${fmt(units.length)} nodes; arrow keys move between them, Enter opens one` });
    const defs = el("defs", {}, svg);
    const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z", fill: "var(--edge)" }, marker);
    const edgeLayer = el("g", {}, svg), nodeLayer = el("g", {}, svg);
    for (const e of g.edges()) {
      const pts = g.edge(e).points;
      const d = "M" + pts.map((p) => `${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" L");
      el("path", { class: "edge", d, "marker-end": "url(#arrow)" }, edgeLayer);
      const cond = conds.get(e.v + "\u0000" + e.w);
      if (cond) {
        const mid = pts[Math.floor(pts.length / 2)];
        const t = el("text", { class: "edge-label", x: mid.x, y: mid.y - 4, "text-anchor": "middle" }, edgeLayer);
        t.textContent = short(cond, 28);
      }
    }

    const views = new Map();
    const dirty = new Set();
    const ordered = [];
    for (const u of units) {
      const p = g.node(u.id);
      const [w, h] = size(u);
      const group = el("g", { class: "node", transform: `translate(${(p.x - w / 2).toFixed(1)},${(p.y - h / 2).toFixed(1)})`,
        tabindex: 0, role: "link", "data-unit": u.id }, nodeLayer);
      if (u.members.length === 1) group.setAttribute("data-step", u.members[0]);
      el("rect", { class: "box", width: w, height: h }, group);
      const gl = el("text", { class: "gl", x: 10, y: 21 }, group);
      const title = el("text", { x: 28, y: 21 }, group);
      const sub = el("text", { class: "sub", x: 28, y: 38 }, group);
      const bar = u.members.length > 1 || u.kind === "foreach" || u.kind === "while" ? el("g", { class: "bar", transform: `translate(10,${h - 14})` }, group) : null;
      const view = { unit: u, group, gl, title, sub, bar, w, p };
      views.set(u.id, view);
      ordered.push(view);
      paint(view);
      group.addEventListener("click", () => opts.open(u, byId));
      group.addEventListener("keydown", (ev) => key(ev, view));
    }
    ordered.sort((a, b) => a.p.x - b.p.x || a.p.y - b.p.y);
    ordered.forEach((v, i) => (v.index = i));
    container.appendChild(svg);

    function paint(view) {
      const u = view.unit;
      if (u.members.length === 1) {
        const n = byId.get(u.members[0]);
        const c = category(n.status);
        view.group.setAttribute("class", `node s-${c}`);
        view.gl.textContent = GLYPH[c];
        view.title.textContent = short(n.id, 22);
        let sub = n.status + (n.attempt > 1 ? ` \u00B7 attempt ${n.attempt}` : "");
        if (n.kind === "foreach" || n.kind === "while") {
          const its = n.iterations || {};
          const ended = Object.entries(its).filter(([s]) => TERMINAL.has(s)).reduce((a, [, k]) => a + k, 0);
          sub = `${n.kind} ${fmt(ended)}/${n.total != null ? fmt(n.total) : "?"} \u00B7 ${n.status}`;
          drawBar(view, its, n.total);
        } else if (n.counts && Object.keys(n.counts).length) {  // a loop body's step, over its iterations
          const total = Object.values(n.counts).reduce((a, b) => a + b, 0);
          sub = Object.entries(n.counts).map(([st, k]) => `${fmt(k)} ${st}`).join(" \u00B7 ") + ` of ${fmt(total)}`;
        } else if (n.kind === "subworkflow") {
          sub = `subworkflow \u00B7 ${n.status}` + (n.child ? " \u2197" : "");
        }
        view.sub.textContent = short(sub, 30);
        view.group.setAttribute("aria-label", `${n.id}: ${n.kind === "step" ? n.type : n.kind}, ${sub}`);
      } else {
        const counts = {};
        for (const m of u.members) { const s = byId.get(m).status; counts[s] = (counts[s] || 0) + 1; }
        const cats = {};
        for (const [s, k] of Object.entries(counts)) cats[category(s)] = (cats[category(s)] || 0) + k;
        const worst = ORDER.find((c) => cats[c]) || "idle";
        view.group.setAttribute("class", `node group s-${worst}`);
        view.gl.textContent = GLYPH[worst];
        view.title.textContent = short(u.label, 28);
        const text = Object.entries(counts).sort((a, b) => ORDER.indexOf(category(a[0])) - ORDER.indexOf(category(b[0])) || b[1] - a[1])
          .map(([st, k]) => `${fmt(k)} ${st}`).join(" \u00B7 ");
        view.sub.textContent = short(text, 34);
        drawBar(view, counts, u.members.length);
        view.group.setAttribute("aria-label", `${u.label}: ` + Object.entries(counts).map(([s, k]) => `${fmt(k)} ${s}`).join(", "));
      }
    }
    function drawBar(view, counts, total) {
      if (!view.bar) return;
      view.bar.textContent = "";
      const width = view.w - 20;
      const n = Math.max(total || 0, Object.values(counts).reduce((a, b) => a + b, 0)) || 1;
      const cats = {};
      for (const [s, k] of Object.entries(counts)) cats[category(s)] = (cats[category(s)] || 0) + k;
      let x = 0;
      el("rect", { x: 0, y: 0, width, height: 5, class: "s-idle", opacity: 0.35 }, view.bar);
      for (const c of ["ok", "warn", "fail", "run", "wait", "idle"]) {
        if (!cats[c]) continue;
        const w = (cats[c] / n) * width;
        el("rect", { x: x.toFixed(1), y: 0, width: Math.max(1, w).toFixed(1), height: 5, class: `s-${c}` }, view.bar);
        x += w;
      }
    }
    function key(ev, view) {
      let next = null;
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); opts.open(view.unit, byId); return; }
      if (ev.key === "ArrowRight" || ev.key === "ArrowDown") next = ordered[view.index + 1];
      else if (ev.key === "ArrowLeft" || ev.key === "ArrowUp") next = ordered[view.index - 1];
      else if (ev.key === "Home") next = ordered[0];
      else if (ev.key === "End") next = ordered[ordered.length - 1];
      if (next) { ev.preventDefault(); next.group.focus(); next.group.scrollIntoView({ block: "nearest", inline: "nearest" }); }
    }

    const stats = { steps: nodes.length, drawn: units.length, layout_ms: tLayout - t0, total_ms: performance.now() - t0 };
    return {
      stats,
      // A step's new state: repaint only the node that shows it (with ``later``, at the next
      // flush(): a batch of events repaints each node once, however many of its steps changed).
      update(stepId, status, attempt, extra, later) {
        const n = byId.get(stepId);
        if (!n) return false;
        n.status = status;
        if (attempt) n.attempt = attempt;
        if (extra) Object.assign(n, extra);
        const view = views.get(unitOf.get(stepId).id);
        if (later) dirty.add(view); else paint(view);
        return true;
      },
      flush() { for (const view of dirty) paint(view); dirty.clear(); },
      node: (id) => byId.get(id),
    };
  }

  window.LegatoDag = { render, compress, category, GLYPH, TERMINAL, ORDER };
})();
