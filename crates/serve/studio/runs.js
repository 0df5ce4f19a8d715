// The runs table, and one run's page: live loss and learning-rate curves from the log stream,
// the log tail, state and controls, evaluation, files and exports.

import { get, post, h, fmt, stateBadge, followSse, download, toast, ApiError } from "./api.js";
import { lineChart } from "./chart.js";

const FINAL = ["succeeded", "failed", "cancelled"];

function progressCell(p) {
  if (!p || !p.total) return h("td", { class: "num" }, "–");
  const pct = Math.min(100, (100 * (p.step || 0)) / p.total);
  const fill = h("span");
  fill.style.width = `${pct.toFixed(1)}%`;
  return h("td", { class: "num" }, h("span", { class: "bar" }, fill), `${p.step || 0} / ${p.total}`);
}

export function runsPage(main, signal) {
  const selected = new Set();
  const tbody = h("tbody");
  const compare = h("button", {
    class: "primary", disabled: true, id: "compare-selected",
    onclick: () => { location.hash = `#/compare?runs=${[...selected].join(",")}`; },
  }, "Compare selected");
  const status = h("span", { class: "muted" });
  main.append(
    h("div", { class: "row" }, h("h1", {}, "Runs"), h("span", { class: "spacer" }), status, compare,
      h("a", { class: "button", href: "#/new" }, "New run")),
    h("div", { class: "table-wrap panel" }, h("table", { id: "runs-table" },
      h("thead", {}, h("tr", {},
        h("th", {}, h("span", { class: "muted" }, "✓")), h("th", {}, "Run"), h("th", {}, "Mode"), h("th", {}, "State"),
        h("th", { class: "num" }, "Progress"), h("th", { class: "num" }, "Loss"), h("th", { class: "num" }, "Val loss"),
        h("th", { class: "num" }, "Tokens/s"), h("th", { class: "num" }, "ETA"), h("th", { class: "num hide-narrow" }, "Heartbeat"),
        h("th", { class: "hide-narrow" }, "Created"))),
      tbody)));
  // Rows are kept and their cells rewritten in place, so focus and selection survive the polling.
  const rows = new Map();
  function row(r) {
    let tr = rows.get(r.run_id);
    if (!tr) {
      const box = h("input", {
        type: "checkbox", "aria-label": `select ${r.run_id}`,
        onchange: (e) => {
          e.target.checked ? selected.add(r.run_id) : selected.delete(r.run_id);
          compare.disabled = selected.size < 1;
        },
      });
      tr = h("tr", { "data-run": r.run_id }, h("td", {}, box),
        h("td", { class: "id" }, h("a", { href: `#/runs/${r.run_id}` }, r.run_id)));
      rows.set(r.run_id, tr);
    }
    const p = r.progress || {};
    const cells = [
      h("td", {}, r.mode || "–"), h("td", {}, stateBadge(r.state)), progressCell(p),
      h("td", { class: "num" }, fmt.num(p.loss)), h("td", { class: "num" }, fmt.num(p.val_loss)),
      h("td", { class: "num" }, fmt.num(p.tokens_per_s, 3)),
      h("td", { class: "num" }, r.state === "running" ? fmt.secs(p.eta_s) : "–"),
      h("td", { class: "num hide-narrow" }, r.heartbeat_age_s === null ? "–" : fmt.secs(r.heartbeat_age_s)),
      h("td", { class: "hide-narrow" }, fmt.time(r.created_at))];
    while (tr.children.length > 2) tr.lastChild.remove();
    tr.append(...cells);
    return tr;
  }
  async function refresh() {
    try {
      const { runs } = await get("/runs?limit=200", { signal });
      status.textContent = "";
      const want = runs.map(row);
      const have = [...tbody.children];
      if (want.length !== have.length || want.some((tr, i) => tr !== have[i])) tbody.replaceChildren(...want);
      if (!runs.length) tbody.replaceChildren(h("tr", {}, h("td", { colspan: 11, class: "empty" }, "No runs yet: start one from New run.")));
      compare.disabled = selected.size < 1;
    } catch (e) {
      if (!signal.aborted) status.textContent = `could not load runs: ${e.message}`;
    }
  }
  refresh();
  const timer = setInterval(refresh, 2000);
  signal.addEventListener("abort", () => clearInterval(timer));
}

/** Loss and learning-rate points from log events; a resumed run's repeated steps replace the old ones. */
export class Curves {
  constructor() { this.loss = []; this.val = []; this.lr = []; }
  add(e) {
    if (e.event === "step") {
      for (const k of ["loss", "val", "lr"]) this[k] = this[k].filter((p) => p[0] < e.step);
      this.loss.push([e.step, e.loss]);
      this.lr.push([e.step, e.lr]);
    } else if (e.event === "eval") {
      this.val = this.val.filter((p) => p[0] < e.step);
      this.val.push([e.step, e.val_loss]);
    }
  }
}

export function runPage(main, signal, id) {
  const curves = new Curves();
  const loss = lineChart({ title: "Loss", id: "loss-chart" });
  const lr = lineChart({ title: "Learning rate", id: "lr-chart" });
  const logLines = [];
  const log = h("pre", { class: "log", id: "log-tail", tabindex: 0 });
  const live = h("span", { class: "muted", id: "stream-state" });
  const badge = h("span", {});
  const stats = h("div", { class: "stats", id: "run-stats" });
  const error = h("p", { class: "error", id: "run-error" });
  const cancel = h("button", { class: "danger", id: "cancel", onclick: () => act("cancel") }, "Cancel");
  const resume = h("button", { id: "resume", onclick: () => act("resume") }, "Resume");
  const evaluate = h("button", { id: "evaluate", onclick: () => act("evaluate") }, "Evaluate");
  const evalBox = h("div", { id: "eval" }, h("p", { class: "muted" }, "Not evaluated yet."));
  const files = h("div", { id: "files" });
  const exportsBox = h("div", { id: "exports" });
  const manifest = h("pre", { id: "manifest" }, "…");
  main.append(
    h("div", { class: "row" }, h("h1", {}, `Run ${id}`), badge, h("span", { class: "spacer" }), cancel, resume, evaluate),
    error,
    h("div", { class: "panel" }, stats),
    h("div", { class: "grid" }, h("div", { class: "panel" }, loss), h("div", { class: "panel" }, lr)),
    h("div", { class: "panel" }, h("div", { class: "row" }, h("h2", {}, "Log"), h("span", { class: "spacer" }), live), log),
    h("div", { class: "panel" }, h("h2", {}, "Evaluation"), evalBox),
    h("div", { class: "grid" },
      h("div", { class: "panel" }, h("h2", {}, "Files"), files),
      h("div", { class: "panel" }, h("h2", {}, "Exports"), exportForm(id, signal, () => refreshExports()), exportsBox)),
    h("div", { class: "panel" }, h("details", {}, h("summary", {}, "Manifest and settings"), manifest)));

  let state = null, lastId = null, following = false;
  let redraw = 0;
  function draw() {
    if (redraw) return;
    redraw = requestAnimationFrame(() => {
      redraw = 0;
      loss.update([{ name: "train", points: curves.loss }, { name: "validation", points: curves.val, dots: true }]);
      lr.update([{ name: "lr", points: curves.lr }]);
      log.textContent = logLines.join("\n");
      log.scrollTop = log.scrollHeight;
    });
  }
  async function follow() {
    if (following || signal.aborted) return;
    following = true;
    try {
      const path = `/runs/${id}/logs/stream${lastId ? "" : "?tail=10000"}`;
      lastId = await followSse(path, {
        signal, lastId,
        onState: (s) => { live.textContent = s === "live" ? "● live" : s; },
        onEvent: (name, data) => {
          if (name !== "log") return;
          curves.add(data);
          logLines.push(JSON.stringify(data));
          if (logLines.length > 200) logLines.splice(0, logLines.length - 200);
          draw();
        },
      });
    } catch (e) {
      live.textContent = e instanceof ApiError && e.status === 404 ? "no log yet" : `stream: ${e.message}`;
    } finally {
      following = false;
    }
  }
  async function act(what) {
    error.textContent = "";
    try {
      await post(`/runs/${id}/${what}`);
      toast(what === "evaluate" ? "evaluation queued" : `${what} requested`);
      refresh();
    } catch (e) { error.textContent = e.message; }
  }
  async function refresh() {
    let r;
    try { r = await get(`/runs/${id}`, { signal }); } catch (e) {
      if (!signal.aborted) error.textContent = e.message;
      return;
    }
    const was = state;
    state = r.state;
    badge.replaceChildren(stateBadge(r.state));
    const p = r.progress || {};
    const stat = (label, value, key) => h("div", { class: "stat", "data-stat": key }, h("b", {}, value), h("span", {}, label));
    stats.replaceChildren(
      stat("step", p.total ? `${p.step || 0} / ${p.total}` : "–", "step"),
      stat("loss", fmt.num(p.loss), "loss"), stat("validation loss", fmt.num(p.val_loss), "val_loss"),
      stat("tokens/s", fmt.num(p.tokens_per_s, 3), "tokens_per_s"),
      stat("ETA", r.state === "running" ? fmt.secs(p.eta_s) : "–", "eta"),
      stat("heartbeat", r.heartbeat_age_s === null ? "–" : `${fmt.secs(r.heartbeat_age_s)} ago`, "heartbeat"),
      stat("mode", r.mode || "–", "mode"), stat("attempts", `${r.attempts} / ${r.max_attempts}`, "attempts"));
    if (r.error) error.textContent = r.error;
    cancel.disabled = FINAL.includes(r.state) || r.cancel_requested;
    resume.disabled = !["failed", "cancelled"].includes(r.state);
    evaluate.disabled = r.state !== "succeeded";
    if (!FINAL.includes(r.state) || was === null) follow();
    if (was !== r.state || manifest.textContent === "…") refreshFiles();
    refreshEval();
    refreshExports();
  }
  async function refreshFiles() {
    try {
      const m = await get(`/artifacts/runs/${id}/download?path=manifest.json`, { signal });
      manifest.textContent = JSON.stringify(m, null, 2);
    } catch { /* not written yet */ }
    try {
      const { files: list } = await get(`/artifacts/runs/${id}`, { signal });
      files.replaceChildren(fileTable("runs", id, list));
    } catch (e) { files.replaceChildren(h("p", { class: "muted" }, e.status === 404 ? "No files yet." : e.message)); }
  }
  let shownEval = "";
  async function refreshEval() {
    try {
      const ev = await get(`/runs/${id}/eval`, { signal });
      // Redrawn only when it changed, so an opened "Sample replies" stays open.
      const key = JSON.stringify(ev);
      if (key !== shownEval) {
        shownEval = key;
        evalBox.replaceChildren(evalView(ev));
      }
    } catch { /* none yet */ }
  }
  const exportEls = new Map();
  async function refreshExports() {
    try {
      const { exports } = await get(`/exports?run=${id}`, { signal });
      // Rows are rebuilt only when an export's state changes, so nothing jumps while polling.
      exportsBox.replaceChildren(...exports.map((x) => {
        const key = `${x.export_id}:${x.state}`;
        if (!exportEls.has(key)) exportEls.set(key, exportRow(x, signal));
        return exportEls.get(key);
      }));
    } catch { /* shown on the next poll */ }
  }
  refresh();
  const timer = setInterval(refresh, 1500);
  signal.addEventListener("abort", () => clearInterval(timer));
}

export function fileTable(kind, id, list) {
  if (!list.length) return h("p", { class: "muted" }, "No files.");
  return h("div", { class: "table-wrap" }, h("table", { class: "files" }, h("tbody", {}, list.map((f) =>
    h("tr", { "data-file": f.path }, h("td", { class: "id" }, f.path), h("td", { class: "num" }, fmt.bytes(f.bytes)),
      h("td", {}, h("button", {
        onclick: () => download(`/artifacts/${kind}/${id}/download?path=${encodeURIComponent(f.path)}`,
          f.path.split("/").pop()).catch((e) => toast(e.message)),
      }, "Download")))))));
}

function tasksView(tasks) {
  if (!tasks || !tasks.length) return null;
  const pm = (x, e) => `${fmt.num(x)} ± ${fmt.num(e, 2)}`;
  return h("div", { class: "table-wrap" }, h("table", { class: "tasks" },
    h("thead", {}, h("tr", {}, h("th", {}, "task"), h("th", { class: "num" }, "documents"), h("th", { class: "num" }, "acc"),
      h("th", { class: "num" }, "acc_norm"), h("th", { class: "num" }, "centered"))),
    h("tbody", {}, tasks.map((t) => h("tr", { "data-task": t.task }, h("td", {}, `${t.task}${t.num_fewshot ? ` (${t.num_fewshot}-shot)` : ""}`),
      h("td", { class: "num" }, t.docs), h("td", { class: "num" }, pm(t.acc, t.acc_stderr)),
      h("td", { class: "num" }, pm(t.acc_norm, t.acc_norm_stderr)), h("td", { class: "num" }, fmt.num(t.centered)))))));
}

function evalView(ev) {
  const m = ev.metrics;
  if (!m) {
    return h("div", {}, ev.state ? h("p", {}, stateBadge(ev.state), " ", ev.error || "evaluation in progress") : null,
      tasksView(ev.tasks));
  }
  const rows = [["loss", m.loss], ["perplexity", m.perplexity], ["bits per byte", m.bits_per_byte],
    ["BLEU", m.bleu && m.bleu.score], ["ROUGE-1 F", m.rouge && m.rouge.rouge1.f], ["ROUGE-L F", m.rouge && m.rouge.rougeL.f],
    ["tokens", m.tokens], ["conversations", m.conversations]];
  return h("div", {},
    h("table", { class: "metrics" }, h("tbody", {}, rows.map(([k, v]) =>
      h("tr", { "data-metric": k }, h("th", {}, k), h("td", { class: "num" }, fmt.num(v)))))),
    tasksView(ev.tasks),
    (m.samples || []).length ? h("details", {}, h("summary", {}, "Sample replies"),
      h("pre", {}, m.samples.map((x) => JSON.stringify(x)).join("\n"))) : null);
}

function exportForm(id, signal, done) {
  const format = h("select", { id: "export-format", "aria-label": "export format" },
    ["gguf", "hf", "onnx"].map((f) => h("option", { value: f }, f)));
  const quant = h("select", { id: "export-quant", "aria-label": "quantization" });
  const setQuant = () => {
    const opts = format.value === "gguf" ? ["f16", "f32", "q8_0", "q4_0"] : format.value === "onnx" ? ["none", "int8"] : ["none"];
    quant.replaceChildren(...opts.map((q) => h("option", { value: q }, q)));
  };
  format.addEventListener("change", setQuant);
  setQuant();
  const err = h("p", { class: "error" });
  const go = h("button", {
    class: "primary", id: "export-start",
    onclick: async () => {
      err.textContent = "";
      const body = { format: format.value };
      if (format.value === "gguf") body.quant = quant.value;
      if (format.value === "onnx" && quant.value === "int8") body.quantize = "int8";
      try { await post(`/runs/${id}/export`, body); toast("export queued"); done(); } catch (e) { err.textContent = e.message; }
    },
  }, "Export");
  return h("div", {}, h("div", { class: "row" }, format, quant, go), err);
}

function exportRow(x, signal) {
  const files = h("div");
  if (x.state === "succeeded") {
    get(`/artifacts/exports/${x.export_id}`, { signal })
      .then(({ files: list }) => files.replaceChildren(fileTable("exports", x.export_id, list)))
      .catch(() => {});
  }
  return h("div", { class: "export", "data-export": x.export_id },
    h("div", { class: "row" }, stateBadge(x.state), h("b", {}, `${x.format}${x.quant ? ` ${x.quant}` : ""}`),
      h("span", { class: "id muted" }, x.export_id)),
    x.error ? h("p", { class: "error" }, x.error) : null, files);
}
