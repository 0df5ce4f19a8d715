//! `chatforge chat`: an interactive multi-turn chat in the terminal, or driven through stdin.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use chatforge_infer::{ChatSession, Finish, LoadedModel};
use clap::Args;

use super::{ConditionArgs, ModelArgs, SamplingArgs, interrupt_flag};

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub condition: ConditionArgs,
    /// Where the line-editing history is kept [default: ~/.cache/chatforge/chat_history]
    #[arg(long)]
    pub history: Option<PathBuf>,
}

const HELP: &str = "commands: /reset (forget the conversation), /persona [NAME] (respond as NAME, or no one), \
/channel [NAME] (the channel the persona speaks in), \
/save FILE (write the conversation as JSONL), /exit; Ctrl-C stops a reply, Ctrl-D ends the chat";

enum Next {
    Continue,
    Exit,
}

fn handle(session: &mut ChatSession, model: &mut LoadedModel, line: &str, interactive: bool) -> Next {
    let line = line.trim();
    if line.is_empty() {
        return Next::Continue;
    }
    if let Some(cmd) = line.strip_prefix('/') {
        let (name, arg) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
        let arg = arg.trim();
        match name {
            "exit" | "quit" => return Next::Exit,
            "reset" => {
                session.reset();
                say!("(conversation cleared)");
            }
            "persona" => {
                // A persona with its own adapter (adapters/NAME in the run) switches to it;
                // otherwise the persona is the instruction in the system turn.
                let adapter = (!arg.is_empty()).then(|| model.persona_adapter(arg)).flatten();
                let has_adapter = adapter.is_some();
                if has_adapter || model.adapter.is_some() {
                    let target = adapter.as_deref();
                    if let Err(e) = model.use_adapter(target) {
                        eprintln!("error: {e}");
                        return Next::Continue;
                    }
                    match target {
                        Some(a) => say!("(adapter: {a})"),
                        None => say!("(no adapter)"),
                    }
                }
                session.set_persona((!arg.is_empty() && !has_adapter).then_some(arg));
                if arg.is_empty() {
                    say!("(no persona)");
                } else {
                    say!("(persona: {arg})");
                }
            }
            "channel" => {
                session.set_channel((!arg.is_empty()).then_some(arg));
                if arg.is_empty() {
                    say!("(no channel)");
                } else {
                    say!("(channel: {arg})");
                }
            }
            "save" if !arg.is_empty() => match session.save(std::path::Path::new(arg)) {
                Ok(()) => say!("(conversation saved to {arg})"),
                Err(e) => eprintln!("error: {e}"),
            },
            "help" => say!("{HELP}"),
            _ => eprintln!("unknown command /{name}: {HELP}"),
        }
        return Next::Continue;
    }
    let flag = interrupt_flag();
    flag.store(false, Ordering::SeqCst);
    if interactive {
        print!("assistant> ");
    } else {
        print!("assistant: ");
    }
    let _ = std::io::stdout().flush();
    let result = session.send(model, line, Some(flag), |piece| {
        // Replies are one line in piped mode, so scripts can read them line by line.
        let piece = if interactive {
            piece.to_string()
        } else {
            piece.replace('\n', " ")
        };
        print!("{piece}");
        let _ = std::io::stdout().flush();
    });
    say!("");
    match result {
        Ok(out) if out.finish == Finish::Cancelled => say!("(interrupted)"),
        Ok(out) if out.finish == Finish::Context => say!("(the context is full: /reset to start over)"),
        Ok(_) => {}
        Err(e) => eprintln!("error: {e}"),
    }
    flag.store(false, Ordering::SeqCst);
    Next::Continue
}

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let mut m = args.model.load()?;
    let mut session = ChatSession::new(
        args.condition.options(),
        args.sampling.sampling(&m)?,
        args.sampling.max_new_tokens(&m),
    );
    session.set_domain(args.condition.domain.as_deref());
    session.stop_strings = args.sampling.stop.clone();
    // Installed before the first reply, so Ctrl-C during one stops it rather than the program.
    interrupt_flag();
    if !std::io::stdin().is_terminal() {
        for line in std::io::stdin().lock().lines() {
            if let Next::Exit = handle(&mut session, &mut m, &line?, false) {
                break;
            }
        }
        return Ok(());
    }
    say!("{HELP}");
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = args
        .history
        .clone()
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/chatforge/chat_history")));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    loop {
        match editor.readline("you> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if let Next::Exit = handle(&mut session, &mut m, &line, true) {
                    break;
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.save_history(h);
    }
    Ok(())
}
