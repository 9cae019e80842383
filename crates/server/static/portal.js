// standby portal: live fragments over server-sent events, and the action
// buttons. Our own code, no dependencies.
//
// - Every element with data-fragment="URL" is re-fetched (HTML) when an
//   event of a kind in KINDS arrives on /api/v1/events/stream, at most
//   once a second.
// - While the page shows something running (an element with data-poll),
//   or for two minutes after an action, fragments are also polled.
// - <button data-post="URL" data-body="JSON"> calls the JSON API with the
//   session's CSRF token. data-confirm="WORD": the user must type WORD
//   first. data-site-from="SELECTOR": params.site from that <select>.
//   data-then="job": go to the job it started; data-then="/path": go
//   there; data-done="TEXT": say TEXT. data-method="PUT"|"DELETE": that
//   method instead of POST. data-form="SELECTOR": the body is that
//   form's fields (a name seen on several checked boxes: a list; a
//   number input: a number; data-json: its value parsed as JSON; "a.b":
//   nested, "a.0.b": a list of objects (empty rows dropped); empty: left
//   out), and
//   data-append-name="SELECTOR" adds that input's value to the URL.
"use strict";
(function () {
  const csrf = () => {
    const m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.content : "";
  };
  const flash = (text, bad) => {
    const f = document.getElementById("flash");
    if (!f) return;
    f.textContent = text;
    f.className = bad ? "error" : "notice";
    f.hidden = false;
  };
  const liveState = (text) => {
    const s = document.getElementById("live-state");
    if (s) s.textContent = text;
  };

  // ------------------------------------------------------------ fragments
  let refreshing = false;
  let again = false;
  let lastRefresh = 0;
  let timer = null;
  let watchUntil = 0;

  async function refresh() {
    if (refreshing) {
      again = true;
      return;
    }
    refreshing = true;
    lastRefresh = Date.now();
    try {
      for (const el of document.querySelectorAll("[data-fragment]")) {
        // A form being filled in is not replaced under the user.
        if (el.querySelector("form[data-dirty]")) continue;
        const r = await fetch(el.dataset.fragment, {
          headers: { Accept: "text/html" },
          credentials: "same-origin",
        });
        if (r.status === 401) {
          location.href = "/login?next=" + encodeURIComponent(location.pathname);
          return;
        }
        if (!r.ok) continue;
        const html = await r.text();
        if (html !== el.innerHTML) el.innerHTML = html;
      }
    } catch (e) {
      liveState("live updates: refresh failed (" + e.message + ")");
    } finally {
      refreshing = false;
      if (again) {
        again = false;
        schedule();
      }
      poll();
    }
  }

  // At most one refresh a second, however many events arrive.
  function schedule() {
    if (timer) return;
    const wait = Math.max(0, 1000 - (Date.now() - lastRefresh));
    timer = setTimeout(() => {
      timer = null;
      refresh();
    }, wait);
  }

  let pollTimer = null;
  function poll() {
    if (pollTimer) return;
    const p = document.querySelector("[data-poll]");
    const active = p || Date.now() < watchUntil;
    if (!active) return;
    const every = p ? Math.max(500, Number(p.dataset.poll) || 1500) : 2000;
    pollTimer = setTimeout(() => {
      pollTimer = null;
      schedule();
    }, every);
  }

  // --------------------------------------------------------------- events
  // The stream names each event by its kind (`event: alert.firing`), so
  // `onmessage` sees none: listen to the kinds that change what pages
  // show. Probe results (every probe, every interval) are left out; the
  // alerts they raise are not.
  const KINDS = [
    "alert.firing", "alert.acknowledged", "alert.resolved", "alert.silenced", "alert.inhibited",
    "incident.opened", "incident.new", "incident.active", "incident.resolved", "incident.closed",
    "runbook.started", "runbook.resumed", "runbook.succeeded", "runbook.failed", "runbook.skipped",
    "drill.report", "lagged",
  ];
  let source = null;
  let lastId = null;
  let backoff = 1000;
  const MAX_BACKOFF = 30000;

  function connect() {
    if (!window.EventSource || !document.querySelector("[data-fragment]")) return;
    const url = "/api/v1/events/stream" + (lastId ? "?after=" + encodeURIComponent(lastId) : "");
    source = new EventSource(url, { withCredentials: true });
    source.onopen = () => {
      backoff = 1000;
      liveState("live updates: on");
    };
    const onEvent = (e) => {
      if (e.lastEventId) lastId = e.lastEventId;
      schedule();
    };
    source.onmessage = onEvent;
    for (const k of KINDS) source.addEventListener(k, onEvent);
    source.onerror = () => {
      // Reconnect ourselves, with a bounded backoff, from the last event.
      source.close();
      source = null;
      liveState("live updates: reconnecting in " + Math.round(backoff / 1000) + " s");
      setTimeout(() => {
        connect();
        schedule();
      }, backoff);
      backoff = Math.min(backoff * 2, MAX_BACKOFF);
    };
  }

  // -------------------------------------------------------------- actions
  function confirmTyped(word, text) {
    const d = document.getElementById("confirm");
    if (!d || !d.showModal) return Promise.resolve(window.prompt(text + "\nType " + word) === word);
    const input = document.getElementById("confirm-input");
    const ok = document.getElementById("confirm-ok");
    document.getElementById("confirm-text").textContent = text;
    document.getElementById("confirm-word").textContent = word;
    input.value = "";
    ok.disabled = true;
    input.oninput = () => {
      ok.disabled = input.value.trim() !== word;
    };
    return new Promise((resolve) => {
      d.onclose = () => resolve(d.returnValue === "ok" && input.value.trim() === word);
      d.returnValue = "";
      d.showModal();
      input.focus();
    });
  }

  function formBody(form) {
    const out = {};
    const lists = new Set();
    for (const el of form.querySelectorAll("input[name], select[name]")) {
      if (el.type === "checkbox") lists.add(el.name);
    }
    for (const n of lists) out[n] = [];
    for (const el of form.querySelectorAll("input[name], select[name]")) {
      if (el.type === "checkbox") {
        if (el.checked) out[el.name].push(el.value);
        continue;
      }
      const v = el.value.trim();
      if (v === "" || el.dataset.skip !== undefined) continue;
      const value = el.type === "number" ? Number(v) : el.dataset.json !== undefined ? JSON.parse(v) : v;
      const path = el.name.split(".");
      let at = out;
      path.slice(0, -1).forEach((p, i) => {
        at = at[p] = at[p] || (/^\d+$/.test(path[i + 1]) ? [] : {});
      });
      at[path[path.length - 1]] = value;
    }
    // Rows left empty leave holes in their list.
    const compact = (o) => {
      for (const k of Object.keys(o)) {
        if (Array.isArray(o[k])) o[k] = o[k].filter((x) => x != null);
        if (o[k] && typeof o[k] === "object") compact(o[k]);
      }
    };
    compact(out);
    return out;
  }

  async function act(btn) {
    const ds = btn.dataset;
    let body = {};
    if (ds.body) {
      try {
        body = JSON.parse(ds.body);
      } catch (e) {
        flash("bad button body: " + e.message, true);
        return;
      }
    }
    let url = ds.post;
    if (ds.form) {
      const form = document.querySelector(ds.form);
      if (!form) return;
      if (!form.reportValidity()) return;
      body = formBody(form);
    }
    if (ds.appendName) {
      const input = document.querySelector(ds.appendName);
      url += encodeURIComponent(input ? input.value.trim() : "");
    }
    if (ds.siteFrom) {
      const sel = document.querySelector(ds.siteFrom);
      body.params = Object.assign({}, body.params, { site: sel ? sel.value : "" });
    }
    if (ds.confirm && !(await confirmTyped(ds.confirm, ds.confirmText || btn.textContent))) {
      flash("cancelled");
      return;
    }
    btn.disabled = true;
    try {
      const r = await fetch(url, {
        method: ds.method || "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify(body),
      });
      const text = await r.text();
      let v = null;
      try {
        v = text ? JSON.parse(text) : null;
      } catch (_) {
        v = null;
      }
      if (r.status === 401) {
        location.href = "/login?next=" + encodeURIComponent(location.pathname);
        return;
      }
      if (!r.ok) {
        const msg = v && (v.message || (v.error && v.error.message)) || text || r.statusText;
        flash(btn.textContent.trim() + ": " + msg, true);
        return;
      }
      if (ds.then === "job" && v && v.job) {
        location.href = "/jobs/" + v.job;
        return;
      }
      if (ds.then && ds.then.startsWith("/")) {
        location.href = ds.then;
        return;
      }
      const job = v && v.job ? " (job " + v.job + ")" : "";
      flash((ds.done || "done") + job);
      watchUntil = Date.now() + 120000;
      schedule();
    } catch (e) {
      flash(btn.textContent.trim() + ": " + e.message, true);
    } finally {
      btn.disabled = false;
    }
  }

  document.addEventListener("input", (e) => {
    const f = e.target.closest("form");
    if (f) f.dataset.dirty = "1";
  });

  document.addEventListener("click", (e) => {
    const btn = e.target.closest("button[data-post]");
    if (!btn) return;
    e.preventDefault();
    act(btn);
  });

  document.addEventListener("DOMContentLoaded", () => {
    connect();
    poll();
  });
})();
