//! Model and tokenizer arguments that name a Hub repository (`distilgpt2`,
//! `HuggingFaceTB/SmolLM2-135M-Instruct@main`, `hf://org/name`): fetched into the Hugging Face
//! cache, with a progress bar, before the command reads them as a local folder.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chatforge_hub::Progress;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

/// A `--model`, `--init` or `--base` argument as a local path.
pub fn model(arg: &Path) -> anyhow::Result<PathBuf> {
    Ok(chatforge_hub::model_path(arg, &Bar::default())?)
}

/// A `--tokenizer` argument as a local path (only a repository's tokenizer files are fetched).
pub fn tokenizer(arg: &Path) -> anyhow::Result<PathBuf> {
    Ok(chatforge_hub::tokenizer_path(arg, &Bar::default())?)
}

/// A download bar per file on a terminal; a line per file otherwise.
#[derive(Default)]
pub struct Bar(Mutex<Option<ProgressBar>>);

impl Progress for Bar {
    fn start(&self, file: &str, total: Option<u64>, done: u64) {
        let resumed = if done > 0 {
            format!(", resuming at {}", HumanBytes(done))
        } else {
            String::new()
        };
        let size = total.map_or("size unknown".into(), |t| HumanBytes(t).to_string());
        if !std::io::stderr().is_terminal() {
            eprintln!("downloading {file} ({size}{resumed})");
            return;
        }
        let bar = ProgressBar::new(total.unwrap_or(0)).with_position(done);
        bar.set_style(
            ProgressStyle::with_template("{msg:30!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} [{eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(file.to_string());
        if let Ok(mut b) = self.0.lock() {
            *b = Some(bar);
        }
    }

    fn advance(&self, bytes: u64) {
        if let Ok(b) = self.0.lock()
            && let Some(b) = b.as_ref()
        {
            b.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Ok(mut b) = self.0.lock()
            && let Some(b) = b.take()
        {
            b.finish();
        }
    }

    fn note(&self, msg: &str) {
        eprintln!("warning: {msg}");
    }
}
