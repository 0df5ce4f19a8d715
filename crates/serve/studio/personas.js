// Personas: the data root's registry (rename, enable or disable) and the consent summaries of
// the chat exports imported into data/.

import { get, api, h, fmt, toast } from "./api.js";

export function personasPage(main, signal) {
  const err = h("p", { class: "error" });
  const table = h("div", { class: "table-wrap", id: "personas-table" });
  const imports = h("div", { id: "imports" });
  main.append(h("h1", {}, "Personas"), err,
    h("div", { class: "panel" }, h("h2", {}, "Registry"),
      h("p", { class: "muted" }, "The speakers persona training learns (personas.toml in the data root; `chatforge personas discover` fills it)."),
      table),
    h("div", { class: "panel" }, h("h2", {}, "Imported chat exports: consent"), imports));

  async function update(key, change) {
    err.textContent = "";
    try {
      await api("PATCH", `/personas/${encodeURIComponent(key)}`, change);
      toast("saved");
    } catch (e) { err.textContent = e.message; }
    load();
  }
  async function load() {
    let v;
    try { v = await get("/personas", { signal }); } catch (e) { err.textContent = e.message; return; }
    if (!v.personas.length) {
      table.replaceChildren(h("p", { class: "empty" }, "No personas yet."));
    } else {
      table.replaceChildren(h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "User id"), h("th", {}, "Name"), h("th", {}, "Enabled"), h("th", {}, "Description"))),
        h("tbody", {}, v.personas.map((p) => {
          const name = h("input", { value: p.name, "aria-label": `name of ${p.id}` });
          const save = h("button", { onclick: () => update(p.id, { name: name.value }) }, "Rename");
          name.addEventListener("keydown", (e) => { if (e.key === "Enter") save.click(); });
          return h("tr", { "data-persona": p.id },
            h("td", { class: "id" }, p.id), h("td", {}, h("span", { class: "row" }, name, save)),
            h("td", {}, h("input", {
              type: "checkbox", checked: p.enabled, "aria-label": `train ${p.name}`,
              onchange: (e) => update(p.id, { enabled: e.target.checked }),
            })),
            h("td", { class: "muted" }, p.description || ""));
        }))));
    }
    if (!v.imports.length) {
      imports.replaceChildren(h("p", { class: "muted" }, "No chat export imported into data/ yet (`chatforge data import --format chat-export … -o data/NAME.jsonl`)."));
      return;
    }
    imports.replaceChildren(...v.imports.map((r) => {
      const c = r.chat || {};
      const rules = Object.entries(c.consent || {});
      return h("div", { class: "import", "data-output": r.output },
        h("h3", {}, r.output),
        h("div", { class: "stats" },
          [["messages read", c.messages], ["threads", c.threads], ["training conversations", r.train],
            ["validation conversations", r.val], ["bots dropped", c.bots], ["replies to excluded users", c.replies_to_excluded]]
            .map(([k, x]) => h("div", { class: "stat" }, h("b", {}, fmt.num(x)), h("span", {}, k)))),
        h("table", { class: "consent" }, h("thead", {}, h("tr", {}, h("th", {}, "consent"), h("th", { class: "num" }, "users"), h("th", { class: "num" }, "messages"))),
          h("tbody", {}, rules.map(([rule, n]) => h("tr", { "data-rule": rule }, h("td", {}, rule),
            h("td", { class: "num" }, n.users), h("td", { class: "num" }, n.messages))))));
    }));
  }
  load();
}
