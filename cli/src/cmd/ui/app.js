// zkr ui: renders the view model pushed by the server (server-sent events on /events).
// Everything here is read-only; config change history is kept by this page since it opened.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const time = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "");
  const ago = (ms) => {
    if (!ms) return "";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    return s < 60 ? s + "s ago" : s < 3600 ? Math.round(s / 60) + "m ago" : Math.round(s / 3600) + "h ago";
  };
  const who = (c) => (c.data ? c.data : c.node);
  const history = {}; // config path -> [{at, version, value}]
  const lastConfig = {}; // config path -> mzxid
  let model = null;

  function badge(el, text, cls) {
    el.textContent = text;
    el.className = "badge " + (cls || "");
  }

  function renderLocks(locks) {
    if (!locks.length) return '<div class="empty">no locks</div>';
    let h = "<table><tr><th>lock</th><th>holder</th><th>session</th><th>token</th><th>held since</th><th>waiters (in order)</th></tr>";
    for (const l of locks) {
      const hd = l.holder;
      h += `<tr class="lock" data-lock="${esc(l.path)}"><td class="mono">${esc(l.path)}</td>` +
        (hd
          ? `<td><span class="holder">${esc(who(hd))}</span><div class="node">${esc(hd.node)}</div></td><td class="mono">${esc(hd.session)}</td>` +
            `<td class="mono token">${esc(l.token)}</td><td>${esc(time(l.heldSince))} <span class="dim">${esc(ago(l.heldSince))}</span></td>`
          : '<td class="free">free</td><td></td><td></td><td></td>') +
        `<td class="waiters">${l.waiters.map((w) => esc(who(w))).join(" → ") || "—"}</td></tr>`;
    }
    return h + "</table>";
  }

  function renderElections(els) {
    if (!els.length) return '<div class="empty">no elections</div>';
    let h = "<table><tr><th>election</th><th>leader</th><th>fence</th><th>participants</th></tr>";
    for (const e of els) {
      h += `<tr class="election" data-election="${esc(e.path)}"><td class="mono">${esc(e.path)}</td>` +
        `<td><span class="leader">${esc(e.leader || "—")}</span><div class="node">${esc(e.participants.length ? e.participants[0].node : "")}</div></td><td class="mono">${esc(e.fence)}</td>` +
        `<td>${e.participants.map((p) => esc(who(p))).join(", ")}</td></tr>`;
    }
    return h + "</table>";
  }

  function renderQueues(qs) {
    if (!qs.length) return '<div class="empty">no work queues</div>';
    let h = "";
    for (const q of qs) {
      const count = {};
      for (const t of q.tasks) count[t.state] = (count[t.state] || 0) + 1;
      h += `<div class="card" data-queue="${esc(q.path)}"><h3>${esc(q.path)}</h3><div class="dim">` +
        Object.keys(count).map((k) => `${count[k]} ${k}`).join(" · ") + "</div><table>";
      for (const t of q.tasks.slice(-50)) {
        const pct = Math.max(0, Math.min(100, t.percent || 0));
        h += `<tr data-task="${esc(t.name)}"><td class="mono">${esc(t.name)}</td>` +
          `<td class="state-${esc(t.state)}">${esc(t.state)}</td><td>${esc(t.worker || "")}</td>` +
          `<td><div class="bar ${esc(t.state)}"><span style="width:${pct}%"></span><em>${pct.toFixed(0)}%</em></div></td>` +
          `<td class="dim">${esc(t.message || "")}</td></tr>`;
      }
      h += "</table></div>";
    }
    return h;
  }

  function renderConfigs(cs) {
    if (!cs.length) return '<div class="empty">no JSON config nodes</div>';
    let h = "";
    for (const c of cs) {
      const hist = history[c.path] || [];
      h += `<div class="card" data-config="${esc(c.path)}"><h3>${esc(c.path)}</h3>` +
        `<div class="dim">version <span class="version">${esc(c.version)}</span> · changed ${esc(time(c.mtime))}` +
        ` · <span class="changes">${hist.length}</span> change(s) since this page opened</div>` +
        `<pre class="value">${esc(JSON.stringify(c.value, null, 2))}</pre>` +
        (hist.length
          ? '<ul class="history">' + hist.slice(-5).reverse().map((x) =>
              `<li>${esc(time(x.at))}: v${esc(x.version)} <code>${esc(JSON.stringify(x.value)).slice(0, 160)}</code></li>`).join("") + "</ul>"
          : "") + "</div>";
    }
    return h;
  }

  function renderServices(ss) {
    if (!ss.length) return '<div class="empty">no services</div>';
    let h = "<table><tr><th>service</th><th>instance</th><th>address</th><th>payload</th></tr>";
    for (const s of ss) {
      for (const i of s.instances) {
        const addr = (i.address || "") + (i.port ? ":" + i.port : i.sslPort ? ":" + i.sslPort : "");
        h += `<tr data-service="${esc(s.path)}"><td class="mono">${esc(s.name)}</td><td class="mono">${esc(i.id)}</td>` +
          `<td class="mono">${esc(addr)}</td><td><code>${esc(JSON.stringify(i.payload == null ? null : i.payload))}</code></td></tr>`;
      }
    }
    return h + "</table>";
  }

  function renderTree(nodes, total) {
    const f = $("tree-filter").value.trim();
    $("tree-count").textContent = `(${total} nodes${nodes.length < total ? ", first " + nodes.length + " listed" : ""})`;
    let h = "";
    for (const n of nodes) {
      if (f && !n.path.includes(f)) continue;
      const name = n.path === "/" ? "/" : n.path.slice(n.path.lastIndexOf("/") + 1);
      h += `<div class="tree-row" style="padding-left:${n.depth * 14}px" title="${esc(n.path)}">` +
        `${esc(name)}${n.owner ? ' <span class="dim">(ephemeral ' + esc(n.owner) + ")</span>" : ""}` +
        `<span class="preview">${esc(n.preview)}</span></div>`;
    }
    return h || '<div class="empty">nothing here</div>';
  }

  function render(m) {
    model = m;
    for (const c of m.configs) {
      const prev = lastConfig[c.path];
      if (prev !== undefined && prev !== c.mzxid) {
        (history[c.path] = history[c.path] || []).push({ at: c.mtime || Date.now(), version: c.version, value: c.value });
      }
      lastConfig[c.path] = c.mzxid;
    }
    const st = m.session.state || "?";
    badge($("session"), "session " + st + (m.session.session ? " " + m.session.session : ""),
      /Connected|Reconnected/.test(st) ? "ok" : /Suspended|Connecting|ReadOnly/.test(st) ? "warn" : "bad");
    badge($("cache"), "cache " + m.cache, m.cache === "Live" ? "ok" : m.cache === "Loading" || m.cache === "Stale" ? "warn" : "bad");
    $("meta").textContent = `${m.root} · ${m.session.server || ""} · seq ${m.seq} · ${time(m.generatedAt)}`;
    $("locks").innerHTML = renderLocks(m.locks);
    $("elections").innerHTML = renderElections(m.elections);
    $("queues").innerHTML = renderQueues(m.queues);
    $("configs").innerHTML = renderConfigs(m.configs);
    $("services").innerHTML = renderServices(m.services);
    $("tree").innerHTML = renderTree(m.tree, m.treeTotal);
    window.zkrSeq = m.seq;
    window.zkrRendered = Date.now();
  }

  $("tree-filter").addEventListener("input", () => model && ($("tree").innerHTML = renderTree(model.tree, model.treeTotal)));
  const es = new EventSource("/events");
  es.onmessage = (e) => { try { render(JSON.parse(e.data)); } catch (err) { console.error(err); } };
  es.onerror = () => badge($("session"), "zkr ui unreachable (retrying)", "bad");
})();
