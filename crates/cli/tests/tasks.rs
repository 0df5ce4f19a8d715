//! Multiple-choice tasks: `chatforge eval --task` on the bundled fixtures (JSONL and lm-eval task
//! YAML), its metrics recomputed from the log-likelihoods it reports, few-shot contexts, bad task
//! files, `--compare`, and `/v1/completions`; and, against lm-evaluation-harness itself, the same
//! `acc`/`acc_norm` and log-likelihoods within 1e-4 from its `hf` backend on our HF export and its
//! `local-completions` model against `chatforge serve`.

#![allow(clippy::unwrap_used)] // tests: a failure should panic with its message

mod common;

use std::path::{Path, PathBuf};

use chatforge_testkit::{fixture, python, run_reference};
use common::service::*;
use common::{fails, ok, trained};
use serde_json::{Value, json};

fn result(dir: &Path, task: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{task}.json"))).unwrap()).unwrap()
}

fn lls(r: &Value) -> Vec<Vec<f64>> {
    r["loglikelihoods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn argmax(xs: &[f64]) -> usize {
    (0..xs.len()).fold(0, |b, i| if xs[i] > xs[b] { i } else { b })
}

/// The task files as lm-eval needs them: its `data_files` are read from the working directory,
/// so the copies name the fixtures by absolute path.
fn task_dir(d: &Path, extra: &[(&str, &str)]) -> PathBuf {
    let dir = d.join("tasks");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["sums", "colours", "capitals"] {
        let text = std::fs::read_to_string(fixture(&format!("tasks/{name}.yaml"))).unwrap();
        let abs = fixture("tasks");
        let text = text
            .lines()
            .map(|l| match l.split_once(": ") {
                Some((k, v)) if v.ends_with(".jsonl") => format!("{k}: {}", abs.join(v).display()),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
    }
    for (name, text) in extra {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

#[test]
fn eval_task_scores_fixtures_and_reports_lm_eval_metrics() {
    let (_keep, run) = trained();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("eval");
    let o = out.to_str().unwrap();
    let model = run.to_str().unwrap();
    let tasks: Vec<String> = ["capitals.jsonl", "sums.yaml", "colours.yaml"]
        .iter()
        .map(|t| fixture(&format!("tasks/{t}")).display().to_string())
        .collect();
    let printed = ok(
        &[
            "eval", "--model", model, "--task", &tasks[0], "--task", &tasks[1], "--task", &tasks[2], "-o", o,
        ],
        d.path(),
        None,
    );
    assert!(
        printed.contains("acc_norm") && printed.contains("centered"),
        "{printed}"
    );
    let lines = |f: &str| {
        std::fs::read_to_string(fixture(&format!("tasks/{f}")))
            .unwrap()
            .lines()
            .count()
    };
    for (task, docs, file) in [
        ("capitals", lines("capitals.jsonl"), "capitals.jsonl"),
        ("chatforge_sums", lines("sums.test.jsonl"), "sums.test.jsonl"),
        ("chatforge_colours", lines("colours.jsonl"), "colours.jsonl"),
    ] {
        let r = result(&out.join("tasks"), task);
        assert_eq!(r["docs"], docs, "{task}");
        let ll = lls(&r);
        let golds: Vec<usize> = r["golds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_u64().unwrap() as usize)
            .collect();
        // The metrics are what the log-likelihoods say, as lm-eval computes them.
        let records: Vec<Value> = std::fs::read_to_string(fixture(&format!("tasks/{file}")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let choices = |i: usize| -> Vec<String> {
            let c = &records[i]["choices"];
            let list = if c.is_array() { c } else { &c["text"] };
            match task {
                "chatforge_sums" => vec!["no".into(), "yes".into()],
                _ => list
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect(),
            }
        };
        let n = ll.len() as f64;
        let acc: Vec<f64> = (0..ll.len())
            .map(|i| f64::from(u8::from(argmax(&ll[i]) == golds[i])))
            .collect();
        let norm: Vec<f64> = (0..ll.len())
            .map(|i| {
                let per: Vec<f64> = ll[i]
                    .iter()
                    .zip(choices(i))
                    .map(|(l, c)| l / c.chars().count() as f64)
                    .collect();
                f64::from(u8::from(argmax(&per) == golds[i]))
            })
            .collect();
        let mean = |x: &[f64]| x.iter().sum::<f64>() / n;
        let stderr = |x: &[f64]| {
            let m = mean(x);
            (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt()
        };
        assert!((r["acc"].as_f64().unwrap() - mean(&acc)).abs() < 1e-12, "{task}");
        assert!(
            (r["acc_norm"].as_f64().unwrap() - mean(&norm)).abs() < 1e-12,
            "{task}"
        );
        assert!(
            (r["acc_stderr"].as_f64().unwrap() - stderr(&acc)).abs() < 1e-12,
            "{task}"
        );
        let base: f64 = (0..ll.len()).map(|i| 1.0 / ll[i].len() as f64).sum::<f64>() / n;
        assert!((r["random_baseline"].as_f64().unwrap() - base).abs() < 1e-12);
        let centered = (mean(&acc) - base) / (1.0 - base);
        assert!((r["centered"].as_f64().unwrap() - centered).abs() < 1e-12);
        assert!(ll.iter().flatten().all(|x| x.is_finite() && *x < 0.0), "{task}");
    }

    // Few-shot: the first examples of the few-shot split go before each document, and change
    // what is scored.
    let few = d.path().join("few");
    ok(
        &[
            "eval",
            "--model",
            model,
            "--task",
            &tasks[1],
            "--num-fewshot",
            "2",
            "-o",
            few.to_str().unwrap(),
        ],
        d.path(),
        None,
    );
    let r0 = result(&out.join("tasks"), "chatforge_sums");
    let r2 = result(&few.join("tasks"), "chatforge_sums");
    assert_eq!(r2["num_fewshot"], 2);
    assert_ne!(lls(&r0), lls(&r2));
    let e = fails(
        &[
            "eval",
            "--model",
            model,
            "--task",
            &tasks[1],
            "--num-fewshot",
            "9",
        ],
        d.path(),
    );
    assert!(e.contains("9 few-shot examples asked for, 4 available"), "{e}");

    // --compare shows the task rows of two evaluations side by side.
    let cmp = ok(&["eval", "--compare", o, few.to_str().unwrap()], d.path(), None);
    assert!(
        cmp.contains("chatforge_sums acc_norm") && cmp.contains("capitals acc"),
        "{cmp}"
    );

    // Bad task files say what and where.
    let bad = |name: &str, text: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        fails(
            &["eval", "--model", model, "--task", p.to_str().unwrap()],
            d.path(),
        )
    };
    let e = bad(
        "a.jsonl",
        "{\"query\": \"x\", \"choices\": [\"a\", \"b\"], \"gold\": 0}\n{\"query\": \"y\", \"gold\": 1}\n",
    );
    assert!(e.contains("a.jsonl:line 2") && e.contains("choices"), "{e}");
    let e = bad(
        "b.jsonl",
        "{\"query\": \"x\", \"choices\": [\"a\", \"b\"], \"gold\": 5}\n",
    );
    assert!(e.contains("gold index 5 for 2 choices"), "{e}");
    let e = bad("c.yaml", "task: t\noutput_type: generate_until\n");
    assert!(e.contains("only multiple_choice"), "{e}");
    let e = bad(
        "d.yaml",
        "task: t\noutput_type: multiple_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: x.jsonl\ntest_split: test\ndoc_to_text: !function utils.doc_to_text\ndoc_to_choice: c\ndoc_to_target: g\n",
    );
    assert!(e.contains("!function"), "{e}");
    let e = bad(
        "e.yaml",
        "task: t\noutput_type: multiple_choice\ndataset_path: hellaswag\n",
    );
    assert!(e.contains("local documents"), "{e}");
}

/// Long documents: lm-eval cuts context + continuation to the model's window from the left; so
/// does chatforge (choice by choice, without the shared cache).
fn long_task(d: &Path) -> (String, String) {
    let docs: String = (0..4)
        .map(|i| {
            let q = "The sky is blue and the grass is green. ".repeat(12 + i);
            format!(
                "{}\n",
                json!({"query": format!("{q}What colour is the sky?"), "choices": ["blue.", "green.", "red."], "gold": 0})
            )
        })
        .collect();
    let file = d.join("long.jsonl");
    std::fs::write(&file, docs).unwrap();
    let yaml = format!(
        "task: chatforge_long\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\noutput_type: multiple_choice\ntest_split: test\ndoc_to_text: query\ndoc_to_choice: choices\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        file.display()
    );
    ("long.yaml".into(), yaml)
}

fn same_as_lm_eval(ours: &Path, theirs: &Value, tasks: &[&str], what: &str) {
    for task in tasks {
        let r = result(ours, task);
        let t = &theirs[*task];
        assert_eq!(r["acc"].as_f64(), t["acc"].as_f64(), "{what} {task} acc");
        assert_eq!(
            r["acc_norm"].as_f64(),
            t["acc_norm"].as_f64(),
            "{what} {task} acc_norm"
        );
        let (a, b) = (lls(&r), lls(&json!({"loglikelihoods": t["lls"]})));
        assert_eq!(a.len(), b.len(), "{what} {task}");
        let worst = a
            .iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(worst <= 1e-4, "{what} {task}: log-likelihoods differ by {worst}");
        eprintln!(
            "{what} {task}: acc {} acc_norm {}, log-likelihoods within {worst:.1e}",
            r["acc"], r["acc_norm"]
        );
    }
}

#[test]
fn lm_eval_scores_our_export_and_our_server_as_chatforge_does() {
    let Some(py) = python() else { return };
    let (_keep, run) = trained();
    let d = tempfile::tempdir().unwrap();
    let hf = d.path().join("hf");
    ok(
        &[
            "export",
            "--model",
            run.to_str().unwrap(),
            "--format",
            "hf",
            "-o",
            hf.to_str().unwrap(),
        ],
        d.path(),
        None,
    );
    let long = long_task(d.path());
    // The capitals again, as a parquet table (dataset_path: parquet).
    let parquet = d.path().join("capitals.parquet");
    let jsonl = fixture("tasks/capitals.jsonl");
    run_reference(
        &py,
        "lm_eval_tasks.py",
        &["parquet", jsonl.to_str().unwrap(), parquet.to_str().unwrap()],
    );
    let parquet_yaml = std::fs::read_to_string(fixture("tasks/capitals.yaml"))
        .unwrap()
        .replace("task: chatforge_capitals", "task: chatforge_capitals_parquet")
        .replace("dataset_path: json", "dataset_path: parquet")
        .replace("test: capitals.jsonl", &format!("test: {}", parquet.display()));
    let dir = task_dir(
        d.path(),
        &[(&long.0, &long.1), ("capitals_parquet.yaml", &parquet_yaml)],
    );
    let names = ["chatforge_sums", "chatforge_colours", "chatforge_capitals"];
    // chatforge on the export, every task; the long one only against the hf backend, which cuts
    // to the model's window (local-completions sends up to 2,048 tokens).
    let ours = d.path().join("ours");
    let mut args = vec![
        "eval",
        "--model",
        hf.to_str().unwrap(),
        "-o",
        ours.to_str().unwrap(),
    ];
    let files: Vec<String> = ["sums", "colours", "capitals", "long", "capitals_parquet"]
        .iter()
        .map(|t| dir.join(format!("{t}.yaml")).display().to_string())
        .collect();
    for f in &files {
        args.extend(["--task", f.as_str()]);
    }
    ok(&args, d.path(), None);
    let all: Vec<&str> = names
        .iter()
        .copied()
        .chain(["chatforge_long", "chatforge_capitals_parquet"])
        .collect();
    let hf_out = run_reference(
        &py,
        "lm_eval_tasks.py",
        &["hf", hf.to_str().unwrap(), dir.to_str().unwrap(), &all.join(",")],
    );
    let theirs: Value = serde_json::from_str(hf_out.lines().last().unwrap()).unwrap();
    same_as_lm_eval(&ours.join("tasks"), &theirs, &all, "lm-eval hf");
    let (a, b) = (
        result(&ours.join("tasks"), "chatforge_capitals"),
        result(&ours.join("tasks"), "chatforge_capitals_parquet"),
    );
    assert_eq!(
        a["loglikelihoods"], b["loglikelihoods"],
        "the parquet documents score as the JSONL ones"
    );

    // The server: the export under the data root, scored through /v1/completions.
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("exports")).unwrap();
    copy_tree(&hf, &root.join("exports/hfexp"));
    let port = free_port();
    let _server = serve(&root, port, 0, &[], &[]);
    let url = format!("http://127.0.0.1:{port}/v1/completions");
    let out = run_reference(
        &py,
        "lm_eval_tasks.py",
        &[
            "completions",
            &url,
            "hfexp",
            hf.to_str().unwrap(),
            dir.to_str().unwrap(),
            &names.join(","),
        ],
    );
    let theirs: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    same_as_lm_eval(&ours.join("tasks"), &theirs, &names, "lm-eval local-completions");
}

/// `/v1/completions` as OpenAI's legacy API: text or token prompts, batches, echo with
/// log-probabilities that add up to the prompt's, stop text, and clear refusals.
#[test]
fn completions_route_scores_and_generates() {
    let (_keep, run) = trained();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("runs")).unwrap();
    copy_tree(run, &root.join("runs/r1"));
    let port = free_port();
    let _server = serve(&root, port, 0, &[], &[]);
    let call = |body: Value| post(port, "/v1/completions", &body);
    let r = call(json!({"model": "r1", "prompt": "The capital of", "max_tokens": 5, "temperature": 0}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 5);
    let greedy = v["choices"][0]["text"].as_str().unwrap().to_string();
    // Scoring: echo + logprobs gives every prompt token's log-probability (none for the first),
    // and the generated token's; the top alternative is at least as likely as the token.
    let r = call(
        json!({"model": "r1", "prompt": [[5, 6, 7, 8], [9, 10]], "max_tokens": 1,
                        "temperature": 0, "logprobs": 1, "echo": true}),
    )
    .json();
    assert_eq!(r["choices"].as_array().unwrap().len(), 2);
    let lp = &r["choices"][0]["logprobs"];
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 5);
    assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());
    for i in 1..5 {
        let tok = lp["token_logprobs"][i].as_f64().unwrap();
        let top = lp["top_logprobs"][i]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_f64()
            .unwrap();
        assert!(tok < 0.0 && top >= tok - 1e-9, "{lp}");
    }
    // The generated (greedy) token is the top one.
    assert_eq!(
        lp["token_logprobs"][4].as_f64(),
        lp["top_logprobs"][4]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_f64()
    );
    // A stop text ends the completion before it.
    let cut = greedy.chars().skip(1).take(2).collect::<String>();
    if !cut.trim().is_empty() {
        let r = call(json!({"model": "r1", "prompt": "The capital of", "max_tokens": 5, "temperature": 0, "stop": cut}))
            .json();
        let text = r["choices"][0]["text"].as_str().unwrap();
        assert!(
            !text.contains(&cut) && greedy.starts_with(text),
            "{text:?} vs {greedy:?}"
        );
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
    }
    for (body, status, needle) in [
        (
            json!({"model": "r1", "prompt": "x", "stream": true}),
            422,
            "stream",
        ),
        (
            json!({"model": "r1", "prompt": "x", "logprobs": 6}),
            422,
            "at most 5",
        ),
        (json!({"model": "r1", "prompt": "x", "n": 2}), 422, "n:"),
        (
            json!({"model": "r1", "prompt": [[1, 2]], "max_tokens": 100000}),
            422,
            "context",
        ),
        (json!({"model": "r1", "prompt": [[999999]]}), 422, "vocabulary"),
        (json!({"model": "nope", "prompt": "x"}), 404, "no trained run"),
        (json!({"model": "r1", "prompt": []}), 422, "prompt"),
    ] {
        let r = call(body.clone());
        assert_eq!(r.status, status, "{body}: {}", String::from_utf8_lossy(&r.body));
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_tree(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}
