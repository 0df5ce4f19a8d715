//! `GET /metrics` in Prometheus' text format (version 0.0.4): requests by route and status,
//! tokens in and out by model, queue depth and running replies by model, decode batch sizes,
//! time to first token and time per output token, jobs by state and live workers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Upper bounds of the latency histograms, seconds.
const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds of the batch-size histogram, sequences.
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        for (c, &b) in self.counts.iter_mut().zip(self.bounds) {
            if v <= b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

#[derive(Debug)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    prompt_tokens: BTreeMap<String, u64>,
    completion_tokens: BTreeMap<String, u64>,
    first_token: Histogram,
    per_token: Histogram,
    batch: Histogram,
}

/// The service's counters and histograms; gauges are read when scraped.
#[derive(Debug)]
pub struct Metrics(Mutex<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Metrics(Mutex::new(Inner {
            requests: BTreeMap::new(),
            prompt_tokens: BTreeMap::new(),
            completion_tokens: BTreeMap::new(),
            first_token: Histogram::new(SECONDS),
            per_token: Histogram::new(SECONDS),
            batch: Histogram::new(SIZES),
        }))
    }
}

/// Gauges read at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Per loaded model: (id, requests waiting, replies decoding).
    pub models: Vec<(String, usize, usize)>,
    pub jobs: Vec<(&'static str, usize)>,
    pub workers: Vec<String>,
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        if let Ok(mut m) = self.0.lock() {
            f(&mut m);
        }
    }

    /// A request answered: its route (the matched pattern, not the path) and status.
    pub fn request(&self, route: &str, status: u16) {
        self.with(|m| *m.requests.entry((route.to_string(), status)).or_default() += 1);
    }

    pub fn prompt_tokens(&self, model: &str, n: usize) {
        self.with(|m| *m.prompt_tokens.entry(model.to_string()).or_default() += n as u64);
    }

    /// A reply finished: its tokens, and its decoding speed (for the time per output token).
    pub fn completion(&self, model: &str, tokens: usize, tokens_per_s: f64) {
        self.with(|m| {
            *m.completion_tokens.entry(model.to_string()).or_default() += tokens as u64;
            if tokens_per_s > 0.0 {
                m.per_token.observe(1.0 / tokens_per_s);
            }
        });
    }

    /// Seconds from a request's arrival to its first text.
    pub fn first_token(&self, seconds: f64) {
        self.with(|m| m.first_token.observe(seconds));
    }

    /// Sequences in one decode step.
    pub fn batch(&self, sequences: usize) {
        self.with(|m| m.batch.observe(sequences as f64));
    }

    /// The text exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let Ok(m) = self.0.lock() else {
            return out;
        };
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        counter(
            &mut out,
            "chatforge_http_requests_total",
            "HTTP requests answered, by route and status.",
        );
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "chatforge_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        for (name, help, map) in [
            (
                "chatforge_prompt_tokens_total",
                "Prompt tokens admitted, by model.",
                &m.prompt_tokens,
            ),
            (
                "chatforge_completion_tokens_total",
                "Tokens generated, by model.",
                &m.completion_tokens,
            ),
        ] {
            counter(&mut out, name, help);
            for (model, n) in map {
                let _ = writeln!(out, "{name}{{model=\"{}\"}} {n}", escape(model));
            }
        }
        m.first_token.render(
            &mut out,
            "chatforge_time_to_first_token_seconds",
            "Seconds from a generation request's arrival to its first text.",
        );
        m.per_token.render(
            &mut out,
            "chatforge_time_per_output_token_seconds",
            "Mean seconds between a reply's tokens after the first.",
        );
        m.batch.render(
            &mut out,
            "chatforge_batch_size",
            "Sequences in a decode step (one pass over a model's weights).",
        );
        let gauge = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        };
        gauge(
            &mut out,
            "chatforge_models_loaded",
            "Models loaded for generation.",
        );
        let _ = writeln!(out, "chatforge_models_loaded {}", g.models.len());
        gauge(
            &mut out,
            "chatforge_queue_depth",
            "Generation requests waiting for a place in a batch, by model.",
        );
        for (id, waiting, _) in &g.models {
            let _ = writeln!(out, "chatforge_queue_depth{{model=\"{}\"}} {waiting}", escape(id));
        }
        gauge(
            &mut out,
            "chatforge_running_sequences",
            "Replies being decoded, by model.",
        );
        for (id, _, running) in &g.models {
            let _ = writeln!(
                out,
                "chatforge_running_sequences{{model=\"{}\"}} {running}",
                escape(id)
            );
        }
        gauge(&mut out, "chatforge_jobs", "Jobs in the store, by state.");
        for (state, n) in &g.jobs {
            let _ = writeln!(out, "chatforge_jobs{{state=\"{state}\"}} {n}");
        }
        gauge(
            &mut out,
            "chatforge_worker_up",
            "Workers that heartbeated within a lease.",
        );
        for w in &g.workers {
            let _ = writeln!(out, "chatforge_worker_up{{worker=\"{}\"}} 1", escape(w));
        }
        out
    }
}

/// A label value escaped as the format asks (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
