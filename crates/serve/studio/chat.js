// The chat playground: any run or export through /v1/chat/completions, streamed, with a system
// prompt, a persona, sampling controls, and a second model side by side on the same prompt.

import { get, call, h, sseEvents, ApiError } from "./api.js";

function column(n, models, signal) {
  const model = h("select", { id: `model-${n}`, "aria-label": `model ${n}` },
    models.map((m) => h("option", { value: m.id }, `${m.id} (${m.kind === "export" ? `${m.format} export` : "run"})`)));
  const persona = h("input", { id: `persona-${n}`, list: `personas-${n}`, placeholder: "none", "aria-label": `persona ${n}` });
  const list = h("datalist", { id: `personas-${n}` });
  const setPersonas = () => {
    const m = models.find((x) => x.id === model.value);
    list.replaceChildren(...((m && m.personas) || []).map((p) => h("option", { value: p })));
  };
  model.addEventListener("change", () => { setPersonas(); col.reset(); });
  setPersonas();
  const messages = h("div", { class: "messages", id: `messages-${n}`, "aria-live": "polite" });
  const col = h("div", { class: "panel chat-col", "data-column": n },
    h("div", { class: "fields" }, h("label", {}, "model", model), h("label", {}, "persona", persona, list)), messages);
  col.history = [];
  col.reset = () => { col.history = []; messages.replaceChildren(); };
  col.send = async (text, settings) => {
    col.history.push({ role: "user", content: text });
    messages.append(h("div", { class: "msg user" }, text));
    const reply = h("div", { class: "msg assistant", "data-streaming": "true" });
    messages.append(reply);
    const msgs = settings.system ? [{ role: "system", content: settings.system }, ...col.history] : [...col.history];
    const body = { model: model.value, messages: msgs, stream: true, temperature: settings.temperature,
      top_p: settings.top_p, max_tokens: settings.max_tokens, seed: settings.seed };
    if (persona.value.trim()) body.persona = persona.value.trim();
    let text_ = "";
    try {
      const r = await call("POST", "/v1/chat/completions", { body, signal });
      if (!r.ok) {
        const v = await r.json().catch(() => ({}));
        throw new ApiError(r.status, (v.error && v.error.message) || r.statusText);
      }
      for await (const ev of sseEvents(r)) {
        if (ev.data === "[DONE]") continue;
        const v = JSON.parse(ev.data);
        if (v.error) throw new ApiError(500, v.error.message);
        const piece = v.choices[0].delta.content;
        if (piece) { text_ += piece; reply.textContent = text_; messages.scrollTop = messages.scrollHeight; }
        if (v.choices[0].finish_reason) reply.dataset.finish = v.choices[0].finish_reason;
      }
      col.history.push({ role: "assistant", content: text_ });
    } catch (e) {
      reply.classList.add("error");
      reply.textContent = e.message;
      col.history.pop();
    } finally {
      reply.dataset.streaming = "false";
    }
  };
  return col;
}

export async function chatPage(main, signal) {
  main.append(h("h1", {}, "Chat"));
  let models;
  try { ({ data: models } = await get("/v1/models", { signal })); } catch (e) {
    main.append(h("p", { class: "error" }, e.message));
    return;
  }
  if (!models.length) {
    main.append(h("p", { class: "empty" }, "No trained model yet: a run answers once it has a best checkpoint."));
    return;
  }
  const system = h("textarea", { id: "system-prompt", rows: 2, placeholder: "optional system prompt" });
  const temperature = h("input", { id: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0.7 });
  const topP = h("input", { id: "top-p", type: "number", min: 0.05, max: 1, step: 0.05, value: 0.95 });
  const maxTokens = h("input", { id: "max-tokens", type: "number", min: 1, step: 1, value: 64 });
  const seed = h("input", { id: "seed", type: "number", min: 0, step: 1, value: 0 });
  const sideBySide = h("input", { type: "checkbox", id: "side-by-side" });
  const cols = h("div", { class: "chat-cols" });
  const first = column(1, models, signal);
  let second = null;
  cols.append(first);
  sideBySide.addEventListener("change", () => {
    if (sideBySide.checked) {
      second = column(2, models, signal);
      cols.append(second);
    } else if (second) {
      second.remove();
      second = null;
    }
  });
  const prompt = h("textarea", { id: "prompt", rows: 2, placeholder: "Say something… (Enter sends, Shift+Enter for a new line)", required: true });
  const send = h("button", { type: "submit", class: "primary", id: "send" }, "Send");
  const form = h("form", { class: "panel", id: "chat-form" },
    h("div", { class: "row" }, h("label", { class: "spacer" }, "message", prompt)),
    h("div", { class: "row" }, send, h("button", { type: "button", id: "reset", onclick: () => [first, second].forEach((c) => c && c.reset()) }, "New conversation")));
  main.append(
    h("div", { class: "panel" }, h("div", { class: "fields" },
      h("label", {}, "system prompt", system), h("label", {}, "temperature", temperature), h("label", {}, "top p", topP),
      h("label", {}, "max tokens", maxTokens), h("label", {}, "seed", seed),
      h("label", { class: "check" }, sideBySide, "two models side by side"))),
    cols, form);
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = prompt.value.trim();
    if (!text) return;
    prompt.value = "";
    send.disabled = true;
    const settings = { system: system.value.trim(), temperature: Number(temperature.value), top_p: Number(topP.value),
      max_tokens: Number(maxTokens.value), seed: Number(seed.value) };
    await Promise.all([first, second].filter(Boolean).map((c) => c.send(text, settings)));
    send.disabled = false;
    prompt.focus();
  });
}
