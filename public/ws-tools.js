// Shared helpers of the WebSocket test pages (socket_test.html, group_messaging_test.html):
// building the connect URL, naming close codes, calling the REST API, formatting frames.
// Served from /static/ws-tools.js. Plain browser JavaScript, no dependencies.
"use strict";

const WsTools = (() => {
  const NAME_RE = /^[A-Za-z0-9_.-]{1,64}$/;

  /** Whether a client id or group name follows the server's rule (else it answers 400). */
  function validName(s) {
    return NAME_RE.test(s);
  }

  /** The ws:// (or wss://) URL for an id, a group and a token, all optional. */
  function connectUrl({ id, group, token }, maskToken) {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    let path = "/ws";
    if (id) path += "/" + encodeURIComponent(id);
    if (id && group) path += "/" + encodeURIComponent(group);
    let url = `${proto}//${location.host}${path}`;
    if (token) url += "?token=" + (maskToken ? "•••" : encodeURIComponent(token));
    return url;
  }

  /** What a close code means, in words a person can act on. */
  function closeMeaning(code, wasOpen) {
    switch (code) {
      case 1000: return "closed normally";
      case 1001: return "the server is shutting down (1001)";
      case 1002: return "protocol error (1002)";
      case 1005: return "closed without a status";
      case 1006:
        return wasOpen
          ? "the connection was lost (1006)"
          : "the server refused the connection: an invalid id or group (400), a missing or invalid token when WS_AUTH=required (401), or too many clients (503) — or the server is not running";
      case 1007: return "invalid UTF-8 in a message (1007)";
      case 1008: return "disconnected as a slow consumer: this client did not read fast enough (1008)";
      case 1009: return "message too big: the limit is 64 KiB (1009)";
      case 1011: return "server error (1011)";
      case 4000: return "replaced: another connection took this client id (4000)";
      default: return `closed with code ${code}`;
    }
  }

  async function getJson(path) {
    const r = await fetch(path, { headers: { Accept: "application/json" } });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(describeError(r.status, body));
    return body;
  }

  async function postJson(path, body, token) {
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(describeError(r.status, data));
    return data;
  }

  function describeError(status, body) {
    const d = body && body.detail;
    if (Array.isArray(d)) return `${status}: ` + d.map((i) => `${(i.loc || []).join(".")}: ${i.msg}`).join("; ");
    return `${status}: ${d || "request failed"}`;
  }

  /** HH:MM:SS.mmm of an RFC 3339 timestamp (or of now). */
  function clock(ts) {
    const d = ts ? new Date(ts) : new Date();
    if (isNaN(d)) return ts || "";
    const p = (n, w = 2) => String(n).padStart(w, "0");
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  }

  /** A one-line human summary of a server frame. */
  function summary(f) {
    switch (f.type) {
      case "welcome": return `you are ${f.client_id}` + (f.group ? ` in group ${f.group}` : " (no group)");
      case "join": return `${f.client_id} joined ${f.group}`;
      case "leave": return `${f.client_id} left ${f.group}`;
      case "private": return `${f.from} → ${f.to}: ${f.message}`;
      case "sent": return `delivered to ${f.to}: ${f.message}`;
      case "group": return `[${f.group}] ${f.from}: ${f.message}`;
      case "broadcast": return `${f.from} to everyone: ${f.message}`;
      case "joined": return `you joined ${f.group}`;
      case "left": return `you left ${f.group}`;
      case "groups":
        return f.groups.length
          ? f.groups.map((g) => `${g.name} (${g.member_count})`).join(", ")
          : "no groups";
      case "members": return `${f.group}: ` + (f.members.length ? f.members.join(", ") : "no members");
      case "error": return `${f.error}: ${f.message}`;
      case "alert": return `${f.event}` + (f.message ? `: ${f.message}` : "");
      default: return JSON.stringify(f);
    }
  }

  /** Create an element: el("li", {class: "x", text: "y"}, child...). */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  }

  return { validName, connectUrl, closeMeaning, getJson, postJson, clock, summary, el };
})();
