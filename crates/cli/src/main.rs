//! The `chatforge` command: argument parsing and printing; all work happens in the library crates.

/// `println!` that ends the program quietly when stdout is closed (`chatforge … | head`)
/// instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say_line(format_args!($($arg)*))
    };
}

mod cmd;

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
    /// Run the whole path on the bundled sample data
    Pipeline(cmd::pipeline::PipelineArgs),
    /// Measure throughput, beside the Python reference
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Data(c) => cmd::data::run(c),
        Command::Tokenizer(c) => cmd::tokenizer::run(c),
        Command::Pipeline(a) => cmd::pipeline::run(a),
        Command::Bench(c) => cmd::bench::run(c),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
