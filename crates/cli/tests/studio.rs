//! The studio in a real browser (headless Chromium over WebDriver) against `chatforge serve` on
//! loopback with an API token: the token asked for once, a run submitted from the form with a
//! tokenizer trained for it, its loss curve growing live, cancel and resume from the buttons,
//! a second run, the compare view, evaluation and a GGUF export from the run page, a streamed
//! reply in the chat playground (two models side by side), the persona registry, an upload, a
//! refused setting marked on its field, and the pages at a phone's width. Each step asserts on
//! what the page shows; the API routes the studio added are tested over HTTP in studio_api.rs.
//! With `CHATFORGE_SCREENSHOTS=DIR` the main pages are saved there as PNGs (docs/studio/ holds
//! the ones the README links).

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use chatforge_testkit::browser::Browser;
use chatforge_testkit::{fixture, zip_dir};
use common::service::*;
use serde_json::{Value, json};

const TOKEN: &str = "studio-secret";

/// Points of a chart's series as the page draws them.
fn points(b: &Browser, chart: &str, series: &str) -> u64 {
    b.js(
        "const p = document.querySelector(`#${arguments[0]} path[data-series=\"${arguments[1]}\"]`); return p ? Number(p.dataset.points) : 0;",
        &[json!(chart), json!(series)],
    )
    .as_u64()
    .unwrap()
}

fn run_state(b: &Browser) -> String {
    b.text("main .row .state")
}

/// Sets a select's value as a person choosing an option would (change event included).
fn choose(b: &Browser, css: &str, value: &str) {
    let ok = b.js(
        "const s = document.querySelector(arguments[0]); if (!s || ![...s.options].some(o => o.value === arguments[1])) return false; s.value = arguments[1]; s.dispatchEvent(new Event('change', {bubbles: true})); return true;",
        &[json!(css), json!(value)],
    );
    assert_eq!(ok, json!(true), "{css} has no option {value:?}: {}", b.text(css));
}

fn shot(b: &Browser, name: &str) {
    if let Ok(dir) = std::env::var("CHATFORGE_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        b.js(
            "window.scrollTo(0, 0); document.getElementById('toast').classList.remove('show');",
            &[],
        );
        std::thread::sleep(Duration::from_millis(400));
        b.screenshot(&Path::new(&dir).join(format!("{name}.png")));
    }
}

/// Fills the New run form for a small model and submits it: the new run's id, from the page it
/// opens, and the form's "copy as curl" and "copy as CLI" texts for the same run.
fn submit_run(b: &Browser, url: &str, steps: u64) -> (String, String, String) {
    b.goto(&format!("{url}/#/new"));
    b.wait_for(
        "document.querySelector('#f-data') && document.querySelector('#f-data').options.length > 0",
        20,
        "the data files listed",
    );
    choose(b, "#f-data", "data/train.jsonl");
    choose(b, "#f-val", "data/train.val.jsonl");
    b.fill("#f-n_layer", "2", 5);
    b.fill("#f-n_embd", "32", 5);
    b.fill("#f-n_ctx", "64", 5);
    b.fill("#f-max_steps", &steps.to_string(), 5);
    b.fill("#f-eval_every", "10", 5);
    b.fill("#f-checkpoint_every", "10", 5);
    let text = |css: &str| {
        b.js(
            "return document.querySelector(arguments[0]).textContent",
            &[json!(css)],
        )
    };
    let (curl, cli) = (text("#curl-preview"), text("#cli-preview"));
    b.click("#submit-run", 5);
    let id = b.wait_for(
        "location.hash.startsWith('#/runs/') && location.hash.slice(7)",
        120,
        "the run page opened",
    );
    (
        id.as_str().unwrap().to_string(),
        curl.as_str().unwrap().to_string(),
        cli.as_str().unwrap().to_string(),
    )
}

/// The training losses a run logged, by step.
fn losses(run_dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run_dir.join("logs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "step")
        .map(|e| (e["step"].as_u64().unwrap(), e["loss"].as_f64().unwrap()))
        .collect()
}

/// The form's "copy as CLI" and "copy as curl" texts, run as a person pasting them would: both
/// make the run the form made (the same losses at every step).
fn copied_commands_make_the_same_run(port: u16, root: &Path, run: &str, curl: &str, cli: &str) {
    let want = losses(&root.join("runs").join(run));
    assert!(!want.is_empty());
    let bin = env!("CARGO_BIN_EXE_chatforge");
    let script = format!(
        "chatforge() {{ '{bin}' \"$@\"; }}\n{}",
        cli.replace("cd <data root>", &format!("cd '{}'", root.display()))
    );
    let out = std::process::Command::new("bash")
        .args(["-euc", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cli}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let close = |got: &[(u64, f64)], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}");
        for ((s, a), (t, b)) in got.iter().zip(&want) {
            assert!(
                s == t && (a - b).abs() <= 1e-5 * b.abs(),
                "{what}: step {s}: {a} vs {b}"
            );
        }
    };
    close(&losses(&root.join("my-run")), "copy as CLI");
    let out = std::process::Command::new("bash")
        .args(["-euc", curl])
        .env("TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{curl}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{curl}\n{}", String::from_utf8_lossy(&out.stdout)));
    let copy = answer["run_id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    while authed(port, TOKEN, "GET", &format!("/runs/{copy}"), None).json()["state"] != "succeeded" {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the curl run did not finish"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    close(&losses(&root.join("runs").join(&copy)), "copy as curl");
}

#[test]
fn the_studio_trains_compares_and_chats_in_a_browser() {
    let Some(b) = Browser::start(1280, 900) else {
        return;
    };
    let d = data_root();
    let root = d.path().join("root");
    let port = free_port();
    let mut server = serve(&root, port, 1, &[], &[("CHATFORGE_API_TOKEN", TOKEN)]);
    let url = format!("http://127.0.0.1:{port}");

    // The page loads without the token, and asks for it once.
    b.goto(&format!("{url}/"));
    b.wait_for(
        "document.getElementById('token-dialog').open",
        20,
        "the token dialog",
    );
    b.fill("#token-input", "wrong", 5);
    b.click("#token-form button", 5);
    b.wait_for(
        "document.getElementById('token-error').innerText.includes('refused')",
        20,
        "a refused token said so",
    );
    b.fill("#token-input", TOKEN, 5);
    b.click("#token-form button", 5);
    b.wait_for(
        "document.body.innerText.includes('No runs yet')",
        20,
        "the empty runs table",
    );

    // A run from the form, with a tokenizer trained on its data first (none exists yet).
    let (a, _, _) = submit_run(&b, &url, 20_000);
    let toks = authed(port, TOKEN, "GET", "/tokenizers", None).json();
    assert_eq!(toks["tokenizers"].as_array().unwrap().len(), 1, "{toks}");
    // Its curve gains points as the stream brings steps.
    b.wait_for(
        "Number(document.querySelector('#loss-chart path[data-series=\"train\"]')?.dataset.points) >= 5",
        120,
        "the loss curve's first points",
    );
    let first = points(&b, "loss-chart", "train");
    b.wait_for(
        &format!(
            "Number(document.querySelector('#loss-chart path[data-series=\"train\"]').dataset.points) > {first} + 20"
        ),
        60,
        "the loss curve growing",
    );
    assert!(points(&b, "lr-chart", "lr") > 0);
    b.wait_for(
        "Number(document.querySelector('#loss-chart path[data-series=\"validation\"]').dataset.points) >= 1",
        60,
        "a validation point",
    );
    assert!(b.text("#log-tail").contains("\"event\":\"step\""));
    assert!(b.text("#run-stats").contains("tokens/s"));
    shot(&b, "run");

    // Cancel from the button: the run stops at a checkpoint; resume continues it.
    b.click("#cancel", 5);
    b.wait_for(
        "document.querySelector('main .row .state').dataset.state === 'cancelled'",
        60,
        "the run cancelled",
    );
    let at_cancel = points(&b, "loss-chart", "train");
    let api = authed(port, TOKEN, "GET", &format!("/runs/{a}"), None).json();
    assert_eq!(api["state"], "cancelled");
    b.click("#resume", 5);
    b.wait_for(
        "['queued', 'running'].includes(document.querySelector('main .row .state').dataset.state)",
        30,
        "the run resumed",
    );
    b.wait_for(
        &format!(
            "Number(document.querySelector('#loss-chart path[data-series=\"train\"]').dataset.points) > {at_cancel} + 10"
        ),
        90,
        "the curve going on after resume",
    );
    // The server is killed and started again: the page's stream reconnects from its last event,
    // and the run resumes from its checkpoint.
    drop(server);
    b.wait_for(
        "document.querySelector('#stream-state').innerText === 'reconnecting'",
        30,
        "the page noticing the server gone",
    );
    let before_restart = points(&b, "loss-chart", "train");
    server = serve(&root, port, 1, &[], &[("CHATFORGE_API_TOKEN", TOKEN)]);
    b.wait_for(
        &format!(
            "document.querySelector('#stream-state').innerText.includes('live') && Number(document.querySelector('#loss-chart path[data-series=\"train\"]').dataset.points) > {before_restart} + 10"
        ),
        90,
        "the curve going on after the server's restart",
    );
    // The curve holds each step once, after the resume and the restart too.
    let steps_shown = b.js(
        "return document.querySelector('#log-tail').innerText.split('\\n').filter(l => l.includes('\"event\":\"step\"')).map(l => JSON.parse(l).step);",
        &[],
    );
    let steps: Vec<u64> = steps_shown
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert!(steps.windows(2).all(|w| w[1] == w[0] + 1), "{steps:?}");
    let curve = b.js(
        "return document.querySelector('#loss-chart path[data-series=\"train\"]').getAttribute('d').split(/[ML]/).filter(Boolean).map(p => Number(p.split(',')[0]));",
        &[],
    );
    let xs: Vec<f64> = curve
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!(xs.windows(2).all(|w| w[1] > w[0]), "the curve goes back: {xs:?}");
    b.click("#cancel", 5);
    b.wait_for(
        "document.querySelector('main .row .state').dataset.state === 'cancelled'",
        60,
        "the run cancelled again",
    );
    assert_eq!(run_state(&b), "cancelled");

    // A second run, with the tokenizer the first one trained, runs to the end.
    let t0 = Instant::now();
    b.goto(&format!("{url}/#/new"));
    b.wait_for(
        "document.querySelector('#f-tokenizer') && document.querySelector('#f-tokenizer').options.length === 1",
        20,
        "the trained tokenizer offered",
    );
    choose(&b, "#f-tokenizer-source", "existing");
    // A refused setting is shown with its field marked, and nothing is queued.
    b.fill("#f-lr", "5", 5);
    b.click("#submit-run", 5);
    b.wait_for(
        "document.querySelector('#form-error').innerText.length > 0",
        20,
        "the error",
    );
    assert!(b.text("#form-error").contains("lr"), "{}", b.text("#form-error"));
    b.wait_for(
        "document.querySelector('#f-lr').classList.contains('invalid')",
        5,
        "lr marked",
    );
    b.fill("#f-lr", "0.003", 5);
    shot(&b, "new-run");
    // A preset fills the model's fields and carries its other settings into the request.
    choose(&b, "#f-preset", "llama-small");
    assert_eq!(
        b.js("return document.querySelector('#f-n_layer').value", &[]),
        json!("4")
    );
    let request: Value = serde_json::from_str(
        b.js(
            "return document.querySelector('#request-preview').textContent",
            &[],
        )
        .as_str()
        .unwrap(),
    )
    .unwrap();
    assert_eq!(request["model"]["arch"], "llama");
    assert_eq!(request["model"]["n_kv_head"], 2);
    choose(&b, "#f-preset", "tiny");
    let (second, curl, cli) = submit_run(&b, &url, 40);
    assert_ne!(second, a);
    b.wait_for(
        "document.querySelector('main .row .state').dataset.state === 'succeeded'",
        120,
        "the second run finishing",
    );
    copied_commands_make_the_same_run(port, &root, &second, &curl, &cli);
    eprintln!("second run: {:.1} s", t0.elapsed().as_secs_f64());

    // Its page evaluates it and exports it to GGUF.
    b.wait_for(
        "!document.querySelector('#evaluate').disabled",
        20,
        "Evaluate enabled",
    );
    b.click("#evaluate", 5);
    b.wait_for(
        "document.querySelector('[data-metric=\"perplexity\"]')",
        120,
        "the evaluation's metrics",
    );
    let ppl: f64 = b.text("[data-metric=\"perplexity\"] td").parse().unwrap();
    assert!(ppl > 1.0, "{ppl}");
    choose(&b, "#export-format", "gguf");
    choose(&b, "#export-quant", "q8_0");
    b.click("#export-start", 5);
    b.wait_for(
        "document.querySelector('#exports .state[data-state=\"succeeded\"]') && document.querySelector('#exports').innerText.includes('model.gguf')",
        120,
        "the GGUF export and its file",
    );
    assert!(b.text("#files").contains("best/"), "{}", b.text("#files"));
    // A file of the export downloads through the page (the token goes along) whole.
    b.click("#exports tr[data-file=\"model.gguf\"] button", 5);
    let export_id = b.js(
        "return document.querySelector('#exports [data-export]').dataset.export",
        &[],
    );
    let want = std::fs::read(
        root.join("exports")
            .join(export_id.as_str().unwrap())
            .join("model.gguf"),
    )
    .unwrap();
    let saved = b.downloads().join("model.gguf");
    let t0 = Instant::now();
    while std::fs::read(&saved).ok().as_ref() != Some(&want) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the download never arrived whole: {:?} {}",
            std::fs::read_dir(b.downloads())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>(),
            b.text("#exports")
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Task results (`chatforge eval --task`) show on the run page and as compare columns.
    let capitals = fixture("tasks/capitals.jsonl");
    let mut acc_norm = Vec::new();
    for run in [&a, &second] {
        let dir = root.join("runs").join(run);
        common::ok(
            &[
                "eval",
                "--model",
                dir.to_str().unwrap(),
                "--task",
                capitals.to_str().unwrap(),
            ],
            &root,
            None,
        );
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("eval/tasks/capitals.json")).unwrap())
                .unwrap();
        acc_norm.push(r["acc_norm"].as_f64().unwrap());
    }
    b.wait_for(
        "document.querySelector('#eval [data-task=\"capitals\"]')",
        20,
        "the task's row on the run page",
    );
    assert!(b.text("#eval [data-task=\"capitals\"]").contains("±"));

    // The runs table, and the compare view of both runs.
    b.goto(&format!("{url}/#/runs"));
    b.wait_for(
        "document.querySelectorAll('#runs-table tbody tr[data-run]').length === 3",
        20,
        "three runs listed (the curl copy's too)",
    );
    shot(&b, "runs");
    b.click(&format!("input[aria-label=\"select {a}\"]"), 5);
    // The table polls every 2 s; the ticked box keeps its tick and the keyboard focus.
    std::thread::sleep(Duration::from_millis(4500));
    let focus = b.js(
        "const e = document.activeElement; return [e.getAttribute('aria-label'), e.checked];",
        &[],
    );
    assert_eq!(focus, json!([format!("select {a}"), true]));
    b.click(&format!("input[aria-label=\"select {second}\"]"), 5);
    b.click("#compare-selected", 5);
    b.wait_for(
        "document.querySelectorAll('#compare-table tbody tr').length === 2",
        20,
        "both runs compared",
    );
    b.wait_for(
        "document.querySelectorAll('#compare-table td.best').length >= 1",
        20,
        "a best mark",
    );
    let best = b.js(
        "return [...document.querySelectorAll('#compare-table tr[data-run]')].filter(r => r.querySelector('td[data-col=\"best val loss\"]').classList.contains('best')).map(r => r.dataset.run);",
        &[],
    );
    // The marked run is the one with the lower best validation loss, as the logs have it.
    let best_val = |run: &str| -> f64 {
        authed(port, TOKEN, "GET", &format!("/runs/{run}/logs?tail=10000"), None).json()["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "eval")
            .map(|e| e["val_loss"].as_f64().unwrap())
            .fold(f64::INFINITY, f64::min)
    };
    let want = if best_val(&a) <= best_val(&second) {
        &a
    } else {
        &second
    };
    assert_eq!(best, json!([want]));
    b.wait_for(
        "document.querySelectorAll('#compare-val path[data-points]:not([data-points=\"0\"])').length === 2",
        20,
        "two validation curves overlaid",
    );
    // The task's column: the higher acc_norm carries the star (both, when equal).
    let starred = b.js(
        "return [...document.querySelectorAll('#compare-table tr[data-run]')].map(r => r.querySelector('td[data-col=\"capitals acc_norm\"]').classList.contains('best'));",
        &[],
    );
    let top = acc_norm[0].max(acc_norm[1]);
    let rows_order = b.js(
        "return [...document.querySelectorAll('#compare-table tr[data-run]')].map(r => r.dataset.run);",
        &[],
    );
    let want: Vec<bool> = rows_order
        .as_array()
        .unwrap()
        .iter()
        .map(|r| acc_norm[usize::from(r.as_str().unwrap() != a)] == top)
        .collect();
    assert_eq!(starred, json!(want), "{acc_norm:?} {rows_order}");
    shot(&b, "compare");

    // The chat playground streams a reply; it is the API's reply to the same request.
    b.goto(&format!("{url}/#/chat"));
    b.find("#model-1", 20);
    choose(&b, "#model-1", &second);
    b.fill("#temperature", "0", 5);
    b.fill("#max-tokens", "12", 5);
    b.fill("#prompt", "How do I make tea?", 5);
    b.click("#send", 5);
    b.wait_for(
        "document.querySelector('#messages-1 .msg.assistant[data-streaming=\"false\"]')",
        60,
        "the streamed reply",
    );
    let shown = b.text("#messages-1 .msg.assistant");
    let api = authed(
        port,
        TOKEN,
        "POST",
        "/v1/chat/completions",
        Some(
            &json!({"model": second, "messages": [{"role": "user", "content": "How do I make tea?"}],
                     "temperature": 0, "max_tokens": 12, "seed": 0, "top_p": 0.95}),
        ),
    )
    .json();
    let want = api["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!want.trim().is_empty());
    assert_eq!(shown.trim(), want.trim());
    // Two models side by side on the same prompt.
    b.click("#side-by-side", 5);
    b.find("#model-2", 5);
    choose(&b, "#model-2", &a);
    b.fill("#prompt", "And coffee?", 5);
    b.click("#send", 5);
    b.wait_for(
        "document.querySelectorAll('.msg.assistant[data-streaming=\"false\"]').length === 3",
        60,
        "replies in both columns",
    );
    assert!(!b.text("#messages-2 .msg.assistant").trim().is_empty());
    assert!(b.js("return document.querySelectorAll('.msg.error').length", &[]) == json!(0));
    shot(&b, "chat");

    personas_and_upload(&b, &url, &root);

    // A phone's width: nothing wider than the screen.
    b.set_window(390, 844);
    for page in ["#/runs", &format!("#/runs/{second}"), "#/new", "#/chat"] {
        b.goto(&format!("{url}/{page}"));
        std::thread::sleep(Duration::from_millis(1200));
        let wide = b.js(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            &[],
        );
        assert!(
            wide.as_i64().unwrap() <= 1,
            "{page} is {wide} px too wide at 390 px"
        );
        assert!(b.text("main").len() > 20, "{page} shows nothing");
    }
    drop(server);
}

/// The persona registry renamed and switched from the page, the import's consent summary
/// shown, and a data file uploaded from the form.
fn personas_and_upload(b: &Browser, url: &str, root: &Path) {
    let work = tempfile::tempdir().unwrap();
    let zip = work.path().join("export.zip");
    zip_dir(&fixture("chat-export/export"), &zip, "Forge Club");
    let consent = fixture("chat-export/consent.json");
    let chat = root.join("data/chat.jsonl");
    common::ok(
        &[
            "data",
            "import",
            zip.to_str().unwrap(),
            "--format",
            "chat-export",
            "--consent",
            consent.to_str().unwrap(),
            "-o",
            chat.to_str().unwrap(),
        ],
        work.path(),
        None,
    );
    let registry = root.join("personas.toml");
    common::ok(
        &[
            "personas",
            "--registry",
            registry.to_str().unwrap(),
            "discover",
            chat.to_str().unwrap(),
            "--min-messages",
            "1",
        ],
        work.path(),
        None,
    );
    b.goto(&format!("{url}/#/personas"));
    let row = b.find("#personas-table tr[data-persona]", 20);
    let id = b.js(
        "return document.querySelector('#personas-table tr[data-persona]').dataset.persona",
        &[],
    );
    let id = id.as_str().unwrap().to_string();
    let _ = row;
    b.fill(
        &format!("tr[data-persona=\"{id}\"] input:not([type])"),
        "Renamed Person",
        5,
    );
    b.click(&format!("tr[data-persona=\"{id}\"] button"), 5);
    wait_file(&registry, "name = \"Renamed Person\"");
    b.click(&format!("tr[data-persona=\"{id}\"] input[type=checkbox]"), 5);
    wait_file(&registry, "enabled = false");
    b.wait_for(
        "document.querySelector('#imports [data-rule]')",
        20,
        "the consent summary",
    );
    assert!(
        b.text("#imports").contains("data/chat.jsonl"),
        "{}",
        b.text("#imports")
    );
    shot(b, "personas");

    // An upload from the form lands in data/ and is offered as training data.
    let file = work.path().join("my notes.jsonl");
    std::fs::copy(root.join("data/train.val.jsonl"), &file).unwrap();
    b.goto(&format!("{url}/#/new"));
    b.wait_for(
        "document.querySelector('#f-data')?.options.length > 0",
        20,
        "the form",
    );
    b.fill("#upload-file", file.to_str().unwrap(), 5);
    b.click("#upload", 5);
    b.wait_for(
        "document.querySelector('#f-data').value === 'data/my_notes.jsonl'",
        30,
        "the upload selected",
    );
    assert_eq!(
        std::fs::read(root.join("data/my_notes.jsonl")).unwrap(),
        std::fs::read(&file).unwrap()
    );
}

fn wait_file(path: &Path, needle: &str) {
    let t0 = Instant::now();
    while !std::fs::read_to_string(path).unwrap_or_default().contains(needle) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{} never got {needle:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
