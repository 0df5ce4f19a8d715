// The studio: pages by URL hash, each drawn into <main> and torn down (streams and timers
// stopped) when another opens. Everything goes through the public API (api.js).

import { runsPage, runPage } from "./runs.js";
import { newRunPage } from "./new.js";
import { comparePage } from "./compare.js";
import { chatPage } from "./chat.js";
import { personasPage } from "./personas.js";

let current = null;

function route() {
  const main = document.getElementById("main");
  if (current) current.abort();
  current = new AbortController();
  const signal = current.signal;
  const [path, query] = (location.hash.slice(1) || "/runs").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  main.replaceChildren();
  const page = parts[0] || "runs";
  for (const a of document.querySelectorAll("nav a")) {
    a.toggleAttribute("aria-current", a.dataset.page === page && parts.length === 1);
    if (a.dataset.page === page && parts.length === 1) a.setAttribute("aria-current", "page");
  }
  document.title = `chatforge studio: ${page}`;
  if (page === "runs" && parts[1]) runPage(main, signal, decodeURIComponent(parts[1]));
  else if (page === "runs") runsPage(main, signal);
  else if (page === "new") newRunPage(main, signal);
  else if (page === "compare") comparePage(main, signal, params);
  else if (page === "chat") chatPage(main, signal);
  else if (page === "personas") personasPage(main, signal);
  else main.append(Object.assign(document.createElement("p"), { className: "empty", textContent: "No such page." }));
}

window.addEventListener("hashchange", route);
route();
