//! The models the OpenAI routes answer with. Each loaded model has one decode thread running
//! continuous batching ([`chatforge_infer::batch`]): a request is queued (bounded: beyond
//! `api.max_queue` waiting, 429), joins the running batch at the next step (at most
//! `api.max_batch` replies), streams its text back over a channel, and leaves the step it ends.
//! LoRA adapters of the model are applied per sequence, so every persona of a run shares one
//! batch. At most `api.max_models` stay loaded, the least recently used leaving first; a request
//! waits `api.load_wait_s` for its model to load, then gets 503.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatforge_infer::batch::{Admission, Batch, Event};
use chatforge_infer::{Adapter, Checkpoint, LoadedModel, Output, Request, WeightType};
use tokio::sync::{mpsc, watch};

use crate::api::ApiError;
use crate::config::ApiConfig;
use crate::metrics::Metrics;

/// What a request hears from the decode thread.
#[derive(Debug)]
pub enum Gen {
    /// Final text of reply `i`.
    Text(usize, String),
    /// Reply `i` is over.
    Done(usize, Output),
    /// The request failed as a whole.
    Failed(String),
}

/// A request for the decode thread.
pub struct Submission {
    pub request: Request,
    /// Replies wanted.
    pub n: usize,
    pub adapter: Option<Arc<Adapter>>,
    /// Set when the client leaves: the replies end at the next step.
    pub cancel: Arc<AtomicBool>,
    pub deadline: Instant,
    pub events: mpsc::UnboundedSender<Gen>,
}

/// A loaded model and its decode thread.
pub struct Served {
    pub id: String,
    pub model: Arc<LoadedModel>,
    tx: Mutex<Sender<(Submission, Instant)>>,
    waiting: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    adapters: Mutex<HashMap<String, Arc<Adapter>>>,
    max_queue: usize,
}

impl Served {
    /// Queues `sub`; 429 when `api.max_queue` requests already wait.
    pub fn submit(&self, sub: Submission) -> Result<(), ApiError> {
        let waiting = self.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= self.max_queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::Busy(format!(
                "{waiting} requests wait for model {:?}, the most it queues: retry shortly",
                self.id
            )));
        }
        let sent = self
            .tx
            .lock()
            .map_err(|_| ApiError::Internal)?
            .send((sub, Instant::now()));
        if sent.is_err() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::Loading(format!(
                "model {:?} is being unloaded: retry shortly",
                self.id
            )));
        }
        Ok(())
    }

    /// Requests waiting for a place in the batch.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Replies being decoded.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// The adapter `name` of this model (a folder in the run's `adapters/`), read once.
    pub fn adapter(&self, name: &str) -> Result<Arc<Adapter>, String> {
        if let Some(a) = self.adapters.lock().ok().and_then(|m| m.get(name).cloned()) {
            return Ok(a);
        }
        let a = Arc::new(self.model.open_adapter(name).map_err(|e| e.to_string())?);
        if let Ok(mut m) = self.adapters.lock() {
            m.insert(name.to_string(), a.clone());
        }
        Ok(a)
    }
}

#[derive(Clone)]
enum LoadState {
    Loading,
    Ready(Arc<Served>),
    Failed(String),
}

/// The loaded models, least recently used first.
pub struct Models {
    entries: Mutex<Vec<(String, watch::Receiver<LoadState>)>>,
    cfg: ApiConfig,
    metrics: Arc<Metrics>,
}

impl Models {
    pub fn new(cfg: &ApiConfig, metrics: Arc<Metrics>) -> Models {
        Models {
            entries: Mutex::new(Vec::new()),
            cfg: cfg.clone(),
            metrics,
        }
    }

    /// The loaded models (those still loading are left out).
    pub fn loaded(&self) -> Vec<Arc<Served>> {
        let Ok(e) = self.entries.lock() else {
            return Vec::new();
        };
        e.iter()
            .filter_map(|(_, rx)| match &*rx.borrow() {
                LoadState::Ready(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// Model `id` (found at `path`), loading it if needed. Waits `api.load_wait_s` for a load,
    /// then answers 503; a model that fails to load is forgotten, so the next request tries again.
    pub async fn get(self: &Arc<Self>, id: &str, path: &Path, root: &Path) -> Result<Arc<Served>, ApiError> {
        let mut rx = self.entry(id, path, root)?;
        let wait = Duration::from_secs_f64(self.cfg.load_wait_s);
        let state = tokio::time::timeout(wait, rx.wait_for(|s| !matches!(s, LoadState::Loading)))
            .await
            .map(|r| r.map(|s| s.clone()));
        match state {
            Ok(Ok(LoadState::Ready(s))) => Ok(s),
            Ok(Ok(LoadState::Failed(msg))) => Err(ApiError::Invalid(msg)),
            Ok(_) => Err(ApiError::Internal),
            Err(_) => Err(ApiError::Loading(format!(
                "model {id:?} is loading: retry shortly"
            ))),
        }
    }

    /// The entry of `id`, made most recent; a new one starts loading, and the least recently
    /// used loaded models beyond `api.max_models` are let go (their decode threads finish what
    /// they run, then end).
    fn entry(
        self: &Arc<Self>,
        id: &str,
        path: &Path,
        root: &Path,
    ) -> Result<watch::Receiver<LoadState>, ApiError> {
        let mut e = self.entries.lock().map_err(|_| ApiError::Internal)?;
        if let Some(i) = e.iter().position(|(k, _)| k == id) {
            let entry = e.remove(i);
            let rx = entry.1.clone();
            e.push(entry);
            return Ok(rx);
        }
        let (tx, rx) = watch::channel(LoadState::Loading);
        e.push((id.to_string(), rx.clone()));
        while e.len() > self.cfg.max_models {
            match e
                .iter()
                .position(|(_, r)| !matches!(*r.borrow(), LoadState::Loading))
            {
                Some(i) if i + 1 < e.len() => {
                    e.remove(i);
                }
                _ => break,
            }
        }
        drop(e);
        let (me, id, path, root) = (
            self.clone(),
            id.to_string(),
            path.to_path_buf(),
            root.to_path_buf(),
        );
        tokio::task::spawn_blocking(move || {
            let state = match me.load(&id, &path, &root) {
                Ok(s) => LoadState::Ready(s),
                Err(msg) => {
                    if let Ok(mut e) = me.entries.lock() {
                        e.retain(|(k, _)| *k != id);
                    }
                    LoadState::Failed(msg)
                }
            };
            let _ = tx.send(state);
        });
        Ok(rx)
    }

    fn load(&self, id: &str, path: &Path, root: &Path) -> Result<Arc<Served>, String> {
        let t0 = Instant::now();
        let model = LoadedModel::open(path, &Checkpoint::Best, None, WeightType::F32)
            .map_err(|e| crate::paths::scrub(&format!("model: {e}"), root))?;
        let model = Arc::new(model);
        let (tx, rx) = std::sync::mpsc::channel();
        let served = Arc::new(Served {
            id: id.to_string(),
            model: model.clone(),
            tx: Mutex::new(tx),
            waiting: Arc::new(AtomicUsize::new(0)),
            running: Arc::new(AtomicUsize::new(0)),
            adapters: Mutex::new(HashMap::new()),
            max_queue: self.cfg.max_queue,
        });
        let decoder = Decoder {
            model,
            id: id.to_string(),
            waiting: served.waiting.clone(),
            running: served.running.clone(),
            max_batch: self.cfg.max_batch,
            prefill: self.cfg.prefill_tokens,
            metrics: self.metrics.clone(),
        };
        std::thread::Builder::new()
            .name(format!("decode-{id}"))
            .spawn(move || decoder.run(rx))
            .map_err(|e| format!("starting the decode thread: {e}"))?;
        crate::log::info(
            "model loaded",
            &[
                ("model", &id),
                ("seconds", &format!("{:.2}", t0.elapsed().as_secs_f64())),
            ],
        );
        Ok(served)
    }
}

/// One model's decode loop.
struct Decoder {
    model: Arc<LoadedModel>,
    id: String,
    waiting: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    max_batch: usize,
    prefill: usize,
    metrics: Arc<Metrics>,
}

/// A request in the batch: where its events go, replies still running, when it came and whether
/// its first text has gone out.
struct Live {
    events: mpsc::UnboundedSender<Gen>,
    left: usize,
    submitted: Instant,
    first: bool,
}

impl Decoder {
    /// Admits queued requests while there is room, steps the batch, and ends when the model is
    /// let go and its last reply is done.
    fn run(self, rx: Receiver<(Submission, Instant)>) {
        let mut batch: Batch<(u64, usize)> = Batch::new(self.prefill);
        let mut live: HashMap<u64, Live> = HashMap::new();
        let mut next_id = 0u64;
        let mut open = true;
        loop {
            while open && batch.len() < self.max_batch {
                let got = if batch.is_empty() {
                    rx.recv().map_err(|_| TryRecvError::Disconnected)
                } else {
                    rx.try_recv()
                };
                let (sub, submitted) = match got {
                    Ok(s) => s,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                };
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                next_id += 1;
                self.admit(&mut batch, &mut live, next_id, sub, submitted);
            }
            if batch.is_empty() {
                if open {
                    continue;
                }
                return;
            }
            self.running.store(batch.len(), Ordering::Relaxed);
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                batch.step(
                    &self.model.engine,
                    Some(&self.model.tokenizer),
                    false,
                    |&(r, i), e| self.event(&mut live, r, i, e),
                )
            }));
            let failure = match step {
                Ok(Ok(stats)) => {
                    self.metrics.batch(stats.sequences);
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("the decoder failed (a panic, logged)".to_string()),
            };
            if let Some(msg) = failure {
                crate::log::error("decoding failed", &[("model", &self.id), ("error", &msg)]);
                for l in live.values() {
                    let _ = l.events.send(Gen::Failed(msg.clone()));
                }
                live.clear();
                batch = Batch::new(self.prefill);
            }
            self.running.store(batch.len(), Ordering::Relaxed);
        }
    }

    fn admit(
        &self,
        batch: &mut Batch<(u64, usize)>,
        live: &mut HashMap<u64, Live>,
        id: u64,
        sub: Submission,
        submitted: Instant,
    ) {
        if sub.cancel.load(Ordering::Relaxed) {
            return; // its client left while it waited
        }
        if Instant::now() >= sub.deadline {
            let _ = sub
                .events
                .send(Gen::Failed("the request timed out waiting for its turn".into()));
            return;
        }
        self.metrics.prompt_tokens(&self.id, sub.request.prompt.len());
        let a = Admission {
            keys: (0..sub.n).map(|i| (id, i)).collect(),
            request: sub.request,
            adapter: sub.adapter,
            cancel: Some(sub.cancel),
            deadline: Some(sub.deadline),
        };
        match batch.admit(&self.model.engine, a) {
            Ok(()) => {
                live.insert(
                    id,
                    Live {
                        events: sub.events,
                        left: sub.n,
                        submitted,
                        first: true,
                    },
                );
            }
            Err(e) => {
                let _ = sub.events.send(Gen::Failed(e.to_string()));
            }
        }
    }

    fn event(&self, live: &mut HashMap<u64, Live>, r: u64, i: usize, e: Event) {
        let Some(l) = live.get_mut(&r) else { return };
        if l.first {
            l.first = false;
            self.metrics.first_token(l.submitted.elapsed().as_secs_f64());
        }
        match e {
            Event::Text(t) => {
                let _ = l.events.send(Gen::Text(i, t.to_string()));
            }
            Event::Done(out) => {
                self.metrics.completion(&self.id, out.ids.len(), out.tokens_per_s);
                let _ = l.events.send(Gen::Done(i, out));
                l.left -= 1;
                if l.left == 0 {
                    live.remove(&r);
                }
            }
        }
    }
}
