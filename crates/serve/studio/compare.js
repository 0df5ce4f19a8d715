// Compare runs: their curves overlaid, and their metrics side by side with the best per column marked.

import { get, h, fmt, stateBadge } from "./api.js";
import { lineChart } from "./chart.js";
import { Curves } from "./runs.js";

/** Metric columns: label, how to read it from a run's row, and whether lower is better; each
 * multiple-choice task adds two. */
const COLUMNS = [
  ["best val loss", (r) => r.best_val, true],
  ["eval loss", (r) => r.metrics && r.metrics.loss, true],
  ["perplexity", (r) => r.metrics && r.metrics.perplexity, true],
  ["bits/byte", (r) => r.metrics && r.metrics.bits_per_byte, true],
  ["BLEU", (r) => r.metrics && r.metrics.bleu && r.metrics.bleu.score, false],
  ["ROUGE-1 F", (r) => r.metrics && r.metrics.rouge && r.metrics.rouge.rouge1.f, false],
  ["ROUGE-L F", (r) => r.metrics && r.metrics.rouge && r.metrics.rouge.rougeL.f, false],
  ["tokens/s", (r) => r.progress && r.progress.tokens_per_s, false],
];

export function comparePage(main, signal, params) {
  const chosen = new Set((params.get("runs") || "").split(",").filter(Boolean));
  const picker = h("div", { class: "row", id: "compare-picker" });
  const val = lineChart({ title: "Validation loss", id: "compare-val" });
  const train = lineChart({ title: "Training loss", id: "compare-train" });
  const table = h("div", { class: "table-wrap", id: "compare-table" });
  main.append(h("h1", {}, "Compare runs"),
    h("div", { class: "panel" }, h("h2", {}, "Runs"), picker),
    h("div", { class: "panel" }, table),
    h("div", { class: "grid" }, h("div", { class: "panel" }, val), h("div", { class: "panel" }, train)));

  async function loadRun(id) {
    const [run, logs, ev] = await Promise.all([
      get(`/runs/${id}`, { signal }),
      get(`/runs/${id}/logs?tail=10000`, { signal }).catch(() => ({ events: [] })),
      get(`/runs/${id}/eval`, { signal }).catch(() => null)]);
    const c = new Curves();
    logs.events.forEach((e) => c.add(e));
    const best = c.val.length ? Math.min(...c.val.map((p) => p[1])) : null;
    return { id, run, curves: c, metrics: ev && ev.metrics, tasks: (ev && ev.tasks) || [], best_val: best, progress: run.progress };
  }
  async function draw() {
    history.replaceState(null, "", `#/compare?runs=${[...chosen].join(",")}`);
    const rows = await Promise.all([...chosen].map(loadRun));
    val.update(rows.map((r) => ({ name: r.id, points: r.curves.val, dots: true })));
    train.update(rows.map((r) => ({ name: r.id, points: r.curves.loss })));
    if (!rows.length) {
      table.replaceChildren(h("p", { class: "empty" }, "Pick runs above to compare them."));
      return;
    }
    // Each multiple-choice task any run has adds its acc_norm and centred accuracy (higher is better).
    const taskNames = [...new Set(rows.flatMap((r) => r.tasks.map((t) => t.task)))].sort();
    const columns = [...COLUMNS, ...taskNames.flatMap((name) => [
      [`${name} acc_norm`, (r) => (r.tasks.find((t) => t.task === name) || {}).acc_norm, false],
      [`${name} centered`, (r) => (r.tasks.find((t) => t.task === name) || {}).centered, false]])];
    const best = columns.map(([, read, lower]) => {
      const xs = rows.map(read).filter((x) => typeof x === "number" && Number.isFinite(x));
      // A best is marked only where at least two runs have the metric.
      return xs.length > 1 ? (lower ? Math.min(...xs) : Math.max(...xs)) : null;
    });
    table.replaceChildren(h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Run"), h("th", {}, "Mode"), h("th", {}, "State"),
        columns.map(([label]) => h("th", { class: "num" }, label)))),
      h("tbody", {}, rows.map((r) => h("tr", { "data-run": r.id },
        h("td", { class: "id" }, h("a", { href: `#/runs/${r.id}` }, r.id)), h("td", {}, r.run.mode || "–"),
        h("td", {}, stateBadge(r.run.state)),
        columns.map(([label, read], i) => {
          const x = read(r);
          const isBest = best[i] !== null && x === best[i];
          return h("td", { class: `num${isBest ? " best" : ""}`, "data-col": label }, fmt.num(x));
        }))))));
  }
  async function loadPicker() {
    const { runs } = await get("/runs?limit=200", { signal });
    picker.replaceChildren(...runs.map((r) => h("label", { class: "check" },
      h("input", {
        type: "checkbox", value: r.run_id, checked: chosen.has(r.run_id),
        onchange: (e) => { e.target.checked ? chosen.add(r.run_id) : chosen.delete(r.run_id); draw(); },
      }), h("span", { class: "id" }, r.run_id), h("span", { class: "muted" }, r.mode || ""))));
    if (!runs.length) picker.append(h("p", { class: "muted" }, "No runs yet."));
  }
  loadPicker();
  draw();
}
