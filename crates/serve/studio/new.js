// The New run form: data (a file of the data root, or an upload), tokenizer, starting point, mode
// and the main settings, submitted to the same routes as curl, and offered as curl and CLI too.

import { get, post, call, h, toast, copy, ApiError } from "./api.js";

const MODES = [
  ["sft", "SFT: loss on the assistant's turns"], ["pretrain", "Pretrain: loss on every token"],
  ["lora", "LoRA adapter"], ["qlora", "QLoRA (4-bit base)"], ["dpo", "DPO (preference pairs)"], ["orpo", "ORPO (preference pairs)"],
];

function field(label, input, key) {
  input.dataset.key = key;
  input.id = input.id || `f-${key}`;
  return h("label", { for: input.id }, label, input);
}

const num = (key, value, attrs = {}) => h("input", { type: "number", name: key, value, step: "any", ...attrs });

export function newRunPage(main, signal) {
  const f = {
    data: h("select", { name: "data", required: true }),
    upload: h("input", { type: "file", id: "upload-file", "aria-label": "upload a data file" }),
    val: h("select", { name: "val" }),
    tokSource: h("select", { name: "tokenizer-source" },
      h("option", { value: "existing" }, "an existing tokenizer"), h("option", { value: "train" }, "train a new one on the data"),
      h("option", { value: "model" }, "the starting model's own")),
    tokenizer: h("select", { name: "tokenizer" }),
    vocab: num("vocab_size", 400, { min: 64, step: 1 }),
    start: h("select", { name: "start" },
      h("option", { value: "scratch" }, "from scratch"), h("option", { value: "run" }, "an earlier run"),
      h("option", { value: "model" }, "a local model folder or Hub id")),
    initRun: h("select", { name: "init-run" }),
    initModel: h("input", { type: "text", name: "init", placeholder: "models/SmolLM2-135M or HuggingFaceTB/SmolLM2-135M" }),
    mode: h("select", { name: "mode" }, MODES.map(([v, t]) => h("option", { value: v }, t))),
    preset: h("select", { name: "preset" }),
    n_layer: num("n_layer", 2, { min: 1, step: 1 }), n_head: num("n_head", 2, { min: 1, step: 1 }),
    n_embd: num("n_embd", 64, { min: 8, step: 8 }), n_ctx: num("n_ctx", 128, { min: 8, step: 1 }),
    max_steps: num("max_steps", 200, { min: 1, step: 1 }), batch_size: num("batch_size", 8, { min: 1, step: 1 }),
    lr: num("lr", 0.003), eval_every: num("eval_every", 20, { min: 1, step: 1 }),
    checkpoint_every: num("checkpoint_every", 20, { min: 1, step: 1 }), seed: num("seed", 0, { min: 0, step: 1 }),
    beta: num("beta", 0.1), adapter: h("select", { name: "adapter" }, ["none", "lora", "qlora"].map((a) => h("option", { value: a }, a))),
    rank: num("rank", 8, { min: 1, step: 1 }), alpha: num("alpha", 16),
  };
  const err = h("p", { class: "error", id: "form-error", role: "alert" });
  const preview = h("pre", { id: "request-preview" });
  const curlPreview = h("pre", { id: "curl-preview" });
  const cliPreview = h("pre", { id: "cli-preview" });
  const submit = h("button", { type: "submit", class: "primary", id: "submit-run" }, "Start run");
  const scratchBox = h("fieldset", {}, h("legend", {}, "Model (from scratch)"), h("div", { class: "fields" },
    field("preset", f.preset, "preset"), field("layers", f.n_layer, "n_layer"), field("heads", f.n_head, "n_head"),
    field("width", f.n_embd, "n_embd"), field("context", f.n_ctx, "n_ctx")));
  const prefBox = h("div", { class: "fields" }, field("β (DPO) / λ (ORPO)", f.beta, "beta"), field("adapter", f.adapter, "adapter"));
  const loraBox = h("div", { class: "fields" }, field("LoRA rank", f.rank, "rank"), field("LoRA alpha", f.alpha, "alpha"));
  const form = h("form", { class: "panel", id: "new-run", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Data"), h("div", { class: "fields" },
      field("training data", f.data, "data"), field("validation data", f.val, "val"),
      h("label", {}, "or upload a file", h("span", { class: "row" }, f.upload,
        h("button", { type: "button", id: "upload", onclick: () => upload() }, "Upload"))))),
    h("fieldset", {}, h("legend", {}, "Tokenizer"), h("div", { class: "fields" },
      field("use", f.tokSource, "tokenizer-source"), field("tokenizer", f.tokenizer, "tokenizer"),
      field("vocabulary size (new)", f.vocab, "vocab_size"))),
    h("fieldset", {}, h("legend", {}, "Starting point and mode"), h("div", { class: "fields" },
      field("start", f.start, "start"), field("run", f.initRun, "init-run"), field("model", f.initModel, "init"),
      field("mode", f.mode, "mode"))),
    scratchBox,
    h("fieldset", {}, h("legend", {}, "Training"), h("div", { class: "fields" },
      field("steps", f.max_steps, "max_steps"), field("batch size", f.batch_size, "batch_size"),
      field("learning rate", f.lr, "lr"), field("validate every", f.eval_every, "eval_every"),
      field("checkpoint every", f.checkpoint_every, "checkpoint_every"), field("seed", f.seed, "seed")),
    prefBox, loraBox),
    err,
    h("div", { class: "row" }, submit,
      h("button", { type: "button", id: "copy-curl", onclick: () => copy(curl(), "curl command") }, "Copy as curl"),
      h("button", { type: "button", id: "copy-cli", onclick: () => copy(cli(), "CLI command") }, "Copy as CLI")),
    h("details", {}, h("summary", {}, "The request"), preview),
    h("details", {}, h("summary", {}, "As curl"), curlPreview),
    h("details", {}, h("summary", {}, "As CLI"), cliPreview));
  main.append(h("h1", {}, "New run"), form);

  // The chosen preset's other settings (architecture, dropout, schedule…) go along with the fields.
  let presets = [], presetModel = {}, presetTrain = {};
  function applyPreset() {
    const p = presets.find((x) => x.name === f.preset.value);
    presetModel = p ? { ...p.model } : {};
    presetTrain = p ? { ...p.train } : {};
    if (!p) return;
    for (const k of ["n_layer", "n_head", "n_embd", "n_ctx"]) if (p.model[k] !== undefined) f[k].value = p.model[k];
    for (const k of ["max_steps", "batch_size", "lr", "eval_every", "checkpoint_every", "seed"]) {
      if (p.train[k] !== undefined) f[k].value = p.train[k];
    }
    if (p.train.mode) f.mode.value = p.train.mode;
    delete presetTrain.mode;
  }
  f.preset.addEventListener("change", applyPreset);

  const show = (el, on) => { el.closest("label, fieldset, div.fields").hidden = !on; };
  function sync() {
    const mode = f.mode.value, start = f.start.value;
    scratchBox.hidden = start !== "scratch";
    show(f.initRun, start === "run");
    show(f.initModel, start === "model");
    show(f.tokenizer, f.tokSource.value === "existing");
    show(f.vocab, f.tokSource.value === "train");
    prefBox.hidden = !["dpo", "orpo"].includes(mode);
    loraBox.hidden = !(["lora", "qlora"].includes(mode) || (prefBox.hidden === false && f.adapter.value !== "none"));
    preview.textContent = JSON.stringify(request("<new tokenizer id>"), null, 2);
    curlPreview.textContent = curl();
    cliPreview.textContent = cli();
  }
  form.addEventListener("input", sync);
  form.addEventListener("change", sync);

  function request(tokenizerId) {
    const v = (k) => Number(f[k].value);
    const mode = f.mode.value;
    const body = { data: f.data.value, mode };
    if (f.val.value) body.val = f.val.value;
    if (f.tokSource.value === "existing" && f.tokenizer.value) body.tokenizer = f.tokenizer.value;
    if (f.tokSource.value === "train") body.tokenizer = tokenizerId;
    if (f.start.value === "run" && f.initRun.value) body.init = f.initRun.value;
    if (f.start.value === "model" && f.initModel.value.trim()) body.init = f.initModel.value.trim();
    if (f.start.value === "scratch") {
      body.model = { ...presetModel, vocab_size: 0, n_layer: v("n_layer"), n_head: v("n_head"), n_embd: v("n_embd"), n_ctx: v("n_ctx") };
    }
    body.train = { ...(f.start.value === "scratch" ? presetTrain : {}), max_steps: v("max_steps"), batch_size: v("batch_size"), lr: v("lr"),
      eval_every: v("eval_every"), checkpoint_every: v("checkpoint_every"), seed: v("seed") };
    const pref = ["dpo", "orpo"].includes(mode);
    if (pref) {
      body.train.beta = v("beta");
      if (f.adapter.value !== "none") body.train.adapter = f.adapter.value;
    }
    if (["lora", "qlora"].includes(mode) || (pref && f.adapter.value !== "none")) body.lora = { rank: v("rank"), alpha: v("alpha") };
    return body;
  }
  const origin = location.origin;
  const auth = () => (sessionStorage.getItem("chatforge.token") ? ` -H "Authorization: Bearer $TOKEN"` : "");
  function curl() {
    const lines = [];
    let tok = "TOKENIZER_ID";
    if (f.tokSource.value === "train") {
      lines.push(`curl -s${auth()} -H 'Content-Type: application/json' ${origin}/tokenizers/train -d '${JSON.stringify({ input: [f.data.value], vocab_size: Number(f.vocab.value) })}'`,
        `# wait for "succeeded" on ${origin}/tokenizers/<id>, then use its id below`);
      tok = "<tokenizer id>";
    }
    lines.push(`curl -s${auth()} -H 'Content-Type: application/json' ${origin}/runs/train -d '${JSON.stringify(request(tok))}'`);
    return lines.join("\n");
  }
  function cli() {
    // Paths are relative to the data root, as the server resolves them.
    const b = request("runs/tok/tokenizer.json");
    const toml = [];
    const entries = (o, skip = []) => Object.entries(o).filter(([k]) => !skip.includes(k)).map(([k, x]) => `${k} = ${JSON.stringify(x)}`);
    if (b.model) toml.push("[model]", ...entries(b.model));
    toml.push("[train]", ...entries(b.train, ["max_steps", "batch_size", "lr", "seed", "beta", "adapter"]));
    if (b.lora) toml.push("[lora]", ...entries(b.lora));
    const lines = ["cd <data root>"];
    let tok = b.tokenizer ? `tokenizers/${b.tokenizer}/tokenizer.json` : null;
    if (f.tokSource.value === "train") {
      lines.push(`chatforge tokenizer train --input ${b.data} --vocab-size ${f.vocab.value} -o tokenizers/new`);
      tok = "tokenizers/new/tokenizer.json";
    }
    lines.push(`cat > run.toml <<'EOF'`, ...toml, "EOF");
    const args = ["chatforge train --config run.toml", `--data ${b.data}`];
    if (b.val) args.push(`--val ${b.val}`);
    if (tok) args.push(`--tokenizer ${tok}`);
    if (b.init) args.push(`--init ${f.start.value === "run" ? `runs/${b.init}` : b.init}`);
    args.push(`--mode ${b.mode}`, `--max-steps ${b.train.max_steps}`, `--batch-size ${b.train.batch_size}`,
      `--lr ${b.train.lr}`, `--seed ${b.train.seed}`);
    if (b.train.beta !== undefined) args.push(`--beta ${b.train.beta}`);
    if (b.train.adapter) args.push(`--adapter ${b.train.adapter}`);
    args.push("-o my-run");
    lines.push(args.join(" \\\n  "));
    return lines.join("\n");
  }

  async function load(selectData) {
    const [data, toks, runs, pre] = await Promise.all([
      get("/data", { signal }), get("/tokenizers", { signal }), get("/runs?state=succeeded&limit=200", { signal }),
      presets.length ? { presets } : get("/presets", { signal })]);
    if (!presets.length) {
      presets = pre.presets;
      f.preset.replaceChildren(...presets.map((p) => h("option", { value: p.name }, `${p.name} (${p.model.arch || "gpt2"}, ${p.model.n_layer}×${p.model.n_embd})`)),
        h("option", { value: "" }, "custom"));
      applyPreset();
    }
    const files = data.files.map((x) => x.path);
    const keep = selectData || f.data.value;
    f.data.replaceChildren(...files.map((p) => h("option", { value: p, selected: p === keep }, p)));
    const keepVal = f.val.value;
    f.val.replaceChildren(h("option", { value: "" }, "none"),
      ...files.map((p) => h("option", { value: p, selected: p === keepVal || (!keepVal && /\.val\./.test(p)) }, p)));
    const done = toks.tokenizers.filter((t) => t.state === "succeeded");
    f.tokenizer.replaceChildren(...done.map((t) => h("option", { value: t.id }, `${t.id} (${t.kind || "bpe"}, ${t.vocab_size})`)));
    if (!done.length) f.tokSource.value = "train";
    f.initRun.replaceChildren(...runs.runs.map((r) => h("option", { value: r.run_id }, `${r.run_id} (${r.mode})`)));
    sync();
  }
  async function upload() {
    const file = f.upload.files[0];
    if (!file) { err.textContent = "choose a file to upload first"; return; }
    err.textContent = "";
    const name = file.name.replace(/[^A-Za-z0-9._-]/g, "_").replace(/^\.+/, "");
    try {
      const r = await call("PUT", `/data/${encodeURIComponent(name)}?replace=true`, { body: file, raw: true, headers: { "Content-Type": "application/octet-stream" } });
      const v = await r.json();
      if (!r.ok) throw new ApiError(r.status, v.error);
      toast(`uploaded ${v.path}`);
      await load(v.path);
    } catch (e) { err.textContent = `upload: ${e.message}`; }
  }
  async function waitTokenizer(id) {
    for (;;) {
      const t = await get(`/tokenizers/${id}`, { signal });
      if (t.state === "succeeded") return;
      if (["failed", "cancelled"].includes(t.state)) throw new ApiError(422, `tokenizer: ${t.error || t.state}`);
      await new Promise((r) => setTimeout(r, 400));
    }
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    form.querySelectorAll(".invalid").forEach((x) => x.classList.remove("invalid"));
    submit.disabled = true;
    try {
      let tok;
      if (f.tokSource.value === "train") {
        submit.textContent = "Training the tokenizer…";
        const t = await post("/tokenizers/train", { input: [f.data.value], vocab_size: Number(f.vocab.value) });
        await waitTokenizer(t.id);
        tok = t.id;
      }
      const r = await post("/runs/train", request(tok));
      toast(`run ${r.run_id} queued`);
      location.hash = `#/runs/${r.run_id}`;
    } catch (e) {
      err.textContent = e.message;
      // The message names the field (`train.lr …`, `data: …`): mark its input.
      const key = (e.message.match(/\b(?:train|model|lora)\.(\w+)/) || e.message.match(/^(\w+)\s*:/) || [])[1];
      const el = key && form.querySelector(`[data-key="${key}"]`);
      if (el) { el.classList.add("invalid"); el.focus(); }
    } finally {
      submit.disabled = false;
      submit.textContent = "Start run";
    }
  });
  load().catch((e) => { err.textContent = e.message; });
}
