//! `chatforge serve` and `chatforge worker`: the training service.

use std::path::PathBuf;

use chatforge_serve::ServeConfig;
use clap::Args;

#[derive(Args)]
pub struct ServiceArgs {
    /// TOML file with [api], [queue] and [worker] sections and data_root
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8000]
    #[arg(long)]
    pub bind: Option<String>,
    /// Where runs, tokenizers and the queue live [default: ./chatforge-data]
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// The job queue: sqlite://PATH [default: sqlite://<data root>/queue.sqlite]
    #[arg(long)]
    pub queue: Option<String>,
    /// Workers in this process (serve: 0 runs the API alone)
    #[arg(long)]
    pub workers: Option<usize>,
    /// The named queues this process's workers serve, comma-separated [default: queue.name, the
    /// queue the API submits to]
    #[arg(long, value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Require `Authorization: Bearer TOKEN` on every route but the health checks
    #[arg(long, env = "CHATFORGE_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Print the effective settings (secrets masked) and exit
    #[arg(long)]
    pub print_config: bool,
    /// Log lines as text, or as one JSON object per line (with worker, job and run ids) for log collectors
    #[arg(long, default_value = "text", value_parser = super::parse::<chatforge_serve::log::LogFormat>)]
    pub log_format: chatforge_serve::log::LogFormat,
}

impl ServiceArgs {
    /// Defaults < config file < CHATFORGE__* environment < flags.
    fn config(&self) -> anyhow::Result<ServeConfig> {
        // A `.env` in the working directory (seed 002's habit), under the real environment.
        let mut env: Vec<(String, String)> = match std::fs::read_to_string(".env") {
            Ok(text) => chatforge_serve::config::dotenv(&text),
            Err(_) => Vec::new(),
        };
        env.retain(|(k, _)| std::env::var_os(k).is_none());
        env.extend(std::env::vars());
        let mut c = ServeConfig::load(self.config.as_deref(), env.into_iter())?;
        if let Some(b) = &self.bind {
            c.api.bind = b.clone();
        }
        if let Some(d) = &self.data_root {
            c.data_root = d.clone();
        }
        if let Some(q) = &self.queue {
            c.queue.url = Some(q.clone());
        }
        if let Some(w) = self.workers {
            c.worker.count = w;
        }
        if !self.queues.is_empty() {
            c.worker.queues = Some(self.queues.clone());
        }
        c.validate()?;
        if self.api_token.is_some() {
            c.api.token = self.api_token.clone();
        }
        c.validate()?;
        c.queue_path()?;
        Ok(c)
    }
}

pub fn serve(args: ServiceArgs) -> anyhow::Result<()> {
    start(&args, chatforge_serve::serve)
}

pub fn worker(args: ServiceArgs) -> anyhow::Result<()> {
    start(&args, chatforge_serve::work)
}

/// Runs `run` with the effective settings, or prints them with `--print-config`.
///
/// A service outlives its jobs, so what they free goes back to the kernel once it has lain unused
/// for a second ([`crate::purge_idle_memory`]); with purging off, as for one `train`, the process
/// would keep each job's high-water mark resident while it waits for the next.
fn start(args: &ServiceArgs, run: fn(ServeConfig) -> chatforge_serve::Result<()>) -> anyhow::Result<()> {
    chatforge_serve::log::set_format(args.log_format);
    let cfg = args.config()?;
    if let Some(dir) = &cfg.log_dir
        && !args.print_config
    {
        chatforge_serve::log::also_to(dir).map_err(|e| anyhow::anyhow!("log_dir {}: {e}", dir.display()))?;
    }
    if args.print_config {
        say!("{}", cfg.to_masked_toml());
        return Ok(());
    }
    crate::purge_idle_memory();
    Ok(run(cfg)?)
}
