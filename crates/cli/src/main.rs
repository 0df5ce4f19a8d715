//! The `chatforge` command: argument parsing and printing; all work happens in the library crates.

/// `println!` that ends the program quietly when stdout is closed (`chatforge … | head`)
/// instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say_line(format_args!($($arg)*))
    };
}

mod cmd;

// A pooling allocator: glibc's malloc returns large freed buffers to the kernel each time, and
// page faults then dominate a training or decoding profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub(crate) fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chatforge",
    version,
    about = "From conversation data to a chat model you trained yourself"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import, inspect and tokenize conversation data
    #[command(subcommand)]
    Data(cmd::data::DataCommand),
    /// Train or load tokenizers
    #[command(subcommand)]
    Tokenizer(cmd::tokenizer::TokenizerCommand),
    /// Pre-train or fine-tune a GPT on token shards (or on chat conversations as personas)
    Train(cmd::train::TrainArgs),
    /// Export a model for other tools: a Hugging Face folder, ONNX or GGUF; `export info` inspects one
    Export(cmd::export::ExportArgs),
    /// LoRA adapters: merge one into its base
    #[command(subcommand)]
    Lora(cmd::lora::LoraCommand),
    /// Personas from chat exports: discover speakers, keep the registry (personas.toml)
    Personas(cmd::personas::PersonasArgs),
    /// Talk to a model in the terminal (or through stdin)
    Chat(cmd::chat::ChatArgs),
    /// Generate from prompts, one streamed or many batched
    Generate(cmd::generate::GenerateArgs),
    /// Evaluate a model: loss, perplexity, bits per byte, BLEU, ROUGE, sample replies
    Eval(cmd::eval::EvalArgs),
    /// The training service: HTTP API and workers on a durable job queue
    Serve(cmd::serve::ServiceArgs),
    /// A worker on a shared queue and data root (scale out `serve`)
    Worker(cmd::serve::ServiceArgs),
    /// Run the whole path on the bundled sample data
    Pipeline(cmd::pipeline::PipelineArgs),
    /// Measure throughput, beside the Python reference
    #[command(subcommand)]
    Bench(chatforge_bench::BenchCommand),
    /// One job of the service, in its own process (started by a worker; speaks JSON lines)
    #[command(name = "__job", hide = true)]
    Job {
        /// The job, for a job of several processes (through the MPI launcher, which gives
        /// stdin to the first only); otherwise the first line of stdin
        #[arg(long)]
        start: Option<String>,
    },
}

/// mimalloc's `mi_option_purge_delay`: the option just before `mi_option_use_numa_nodes` in
/// mimalloc.h (v2 and v3 alike); the Rust bindings name only its neighbour.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;

/// Reserves one large arena up front (address space only, committed on use), so big tensors are
/// carved from it instead of fresh OS mappings, and keeps freed pages (see [`purge_freed_memory`]).
fn set_up_allocator() {
    #[allow(unsafe_code)]
    // SAFETY: process-wide allocator options; called once at start-up before other threads exist.
    unsafe {
        // If the reservation fails, mimalloc works as before.
        let _ = libmimalloc_sys::mi_reserve_os_memory_ex(8 << 30, false, true, false, std::ptr::null_mut());
    }
    purge_freed_memory(false);
}

/// Whether freed pages go back to the kernel at once (`true`) or stay mapped for the next
/// allocation (`false`, the default). Keeping them pays while a step frees and reallocates the same
/// large buffers (re-faulting zeroed pages cost ~15% of a step), but what a
/// phase frees while they are kept stays resident for good, however much is collected later. So
/// loading and setting up a model (the f32 file, the copies weights pass through) runs with
/// purging on, and the steps with it off.
pub(crate) fn purge_freed_memory(on: bool) {
    set_purge_delay(if on { 0 } else { -1 });
    if on {
        #[allow(unsafe_code)]
        // SAFETY: returns mimalloc's free pages to the kernel; safe to call from any thread.
        unsafe {
            libmimalloc_sys::mi_collect(true);
        }
    }
}

/// For a long-running service: freed pages go back to the kernel once they have stayed unused for
/// a second, so the process does not keep a finished job's high-water mark while it waits for the
/// next, and buffers freed and taken again within a step or a token are not re-faulted.
pub(crate) fn purge_idle_memory() {
    set_purge_delay(1000);
}

/// mimalloc's purge delay in milliseconds: 0 purges at once, -1 never.
fn set_purge_delay(ms: std::ffi::c_long) {
    #[allow(unsafe_code)]
    // SAFETY: sets a process-wide allocator option (an atomic store inside mimalloc).
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms);
    }
}

fn run() -> anyhow::Result<()> {
    set_up_allocator();
    match Cli::parse().command {
        Command::Data(c) => cmd::data::run(c),
        Command::Tokenizer(c) => cmd::tokenizer::run(c),
        Command::Train(a) => cmd::train::run(a),
        Command::Lora(c) => cmd::lora::run(c),
        Command::Export(c) => cmd::export::run(c),
        Command::Serve(c) => cmd::serve::serve(c),
        Command::Worker(c) => cmd::serve::worker(c),
        Command::Personas(a) => cmd::personas::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Pipeline(a) => cmd::pipeline::run(a),
        Command::Bench(c) => chatforge_bench::run(c, purge_freed_memory),
        Command::Job { start } => {
            // The result went to the worker on stdout; the exit status only repeats it.
            if !cmd::job(start.as_deref()) {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once: library errors often print their source in their
/// own message ("file: Is a directory"), and repeating it would read "…: Is a directory: Is a
/// directory".
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag and argument of every command says what it does in `--help`.
    #[test]
    fn every_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                assert!(
                    sub.get_about().is_some(),
                    "{path} {}: no description",
                    sub.get_name()
                );
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "chatforge", &mut missing);
        assert!(missing.is_empty(), "flags without help:\n{}", missing.join("\n"));
    }
}
