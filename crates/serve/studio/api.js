// The public API, as every page uses it: JSON requests with the bearer token (asked for once,
// kept for the tab), Server-Sent Events read over fetch (so the token goes along) with
// reconnection from the last event id, and small DOM helpers.

const TOKEN_KEY = "chatforge.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  const t = sessionStorage.getItem(TOKEN_KEY);
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

let asking = null;

/** Shows the token dialog; resolves once a token is entered. */
function askToken(message) {
  if (asking) return asking;
  const dlg = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  document.getElementById("token-error").textContent = message || "";
  asking = new Promise((resolve) => {
    dlg.addEventListener("close", function done() {
      dlg.removeEventListener("close", done);
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      input.value = "";
      asking = null;
      resolve();
    });
  });
  dlg.showModal();
  input.focus();
  return asking;
}

/** fetch with the token; a 401 asks for the token and tries again. */
export async function call(method, path, { body, raw, headers: extra, signal } = {}) {
  for (let attempt = 0; ; attempt++) {
    const init = { method, headers: headers(extra), signal };
    if (body !== undefined) {
      if (raw) {
        init.body = body;
      } else {
        init.body = JSON.stringify(body);
        init.headers["Content-Type"] = "application/json";
      }
    }
    const r = await fetch(path, init);
    if (r.status === 401 && attempt < 5) {
      await askToken(attempt ? "That token was refused." : "");
      continue;
    }
    return r;
  }
}

/** A JSON request: the parsed answer, or an ApiError carrying the server's message. */
export async function api(method, path, body, opts = {}) {
  const r = await call(method, path, { ...opts, body });
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch { v = null; }
  if (!r.ok) {
    const e = v && v.error;
    const msg = typeof e === "string" ? e : (e && e.message) || text || r.statusText;
    throw new ApiError(r.status, msg);
  }
  return v;
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body) => api("POST", path, body);

/** The Server-Sent Events of a fetch response, as {event, data, id}, as they arrive. */
export async function* sseEvents(response) {
  const reader = response.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const ev = { event: "message", data: "", id: null };
      for (const line of block.split("\n")) {
        const i = line.indexOf(":");
        if (i <= 0) continue;
        const k = line.slice(0, i), v = line.slice(i + 1).replace(/^ /, "");
        if (k === "event") ev.event = v;
        else if (k === "data") ev.data += (ev.data ? "\n" : "") + v;
        else if (k === "id") ev.id = v;
      }
      yield ev;
    }
  }
}

/**
 * Follows an SSE route: calls onEvent(name, data, id) per event. Reconnects after a network
 * error with Last-Event-ID, so nothing is missed or repeated; ends at an `end` event or abort.
 */
export async function followSse(path, { onEvent, onState, signal, lastId = null }) {
  let backoff = 500;
  while (!signal.aborted) {
    try {
      const extra = lastId ? { "Last-Event-ID": lastId } : {};
      const r = await call("GET", path, { headers: extra, signal });
      if (!r.ok) throw new ApiError(r.status, (await r.text()) || r.statusText);
      onState && onState("live");
      backoff = 500;
      for await (const ev of sseEvents(r)) {
        if (ev.id) lastId = ev.id;
        let data = ev.data;
        try { data = JSON.parse(ev.data); } catch { /* plain text */ }
        if (onEvent(ev.event, data, ev.id) === false || ev.event === "end") {
          onState && onState("ended");
          return lastId;
        }
      }
    } catch (e) {
      if (signal.aborted) break;
      if (e instanceof ApiError && e.status >= 400 && e.status < 500) {
        onState && onState("error");
        throw e;
      }
    }
    onState && onState("reconnecting");
    await new Promise((res) => setTimeout(res, backoff));
    backoff = Math.min(backoff * 2, 8000);
  }
  return lastId;
}

/** Downloads a file of the API through fetch (the token goes along) and saves it. */
export async function download(path, name) {
  const r = await call("GET", path);
  if (!r.ok) throw new ApiError(r.status, await r.text());
  const url = URL.createObjectURL(await r.blob());
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** Builds an element: h("a", {href: "#"}, "text", child…). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 3500);
}

export async function copy(text, what) {
  try {
    await navigator.clipboard.writeText(text);
    toast(`${what} copied`);
  } catch {
    toast(`could not reach the clipboard: select the text below`);
  }
}

export const fmt = {
  num(x, digits = 4) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    if (Math.abs(x) >= 1000) return Math.round(x).toLocaleString("en");
    return Number(x).toPrecision(digits).replace(/\.?0+$/, "");
  },
  secs(s) {
    if (s === null || s === undefined) return "–";
    s = Math.max(0, Math.round(s));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  },
  bytes(b) {
    const u = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return `${i ? b.toFixed(1) : b} ${u[i]}`;
  },
  time(t) {
    if (!t) return "–";
    const d = new Date(t * 1000), p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
  },
};

export function stateBadge(state) {
  return h("span", { class: `state ${state || ""}`, "data-state": state || "" }, state || "–");
}
