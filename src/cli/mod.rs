//! Command-line edge: argument parsing, logging, the runtime, and one-line errors.
//!
//! Each subcommand lives in its own file and returns `anyhow::Result`; any error (a bad
//! flag, a taken port, an unreachable Redis) is printed as one line and exits non-zero.

mod bench;
mod cluster;
mod ctl;
mod demo;
mod server;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// FreeIM-compatible instant-messaging gateway.
#[derive(Debug, Parser)]
#[command(name = "freeim", version, about, long_about = None, args_conflicts_with_subcommands = true)]
#[command(after_help = "Without a command: a gateway and the demo chat in one process, no Redis needed.")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    quick: demo::QuickArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a gateway node (the ImServer): WebSocket clients in, messages from Redis out.
    Server(Box<server::ServerArgs>),
    /// Operate a live cluster through Redis: connect URLs, sends, presence, channels.
    Ctl(ctl::CtlArgs),
    /// Load-test gateway nodes (connect, fanout, p2p) against a raw baseline server.
    Bench(bench::BenchArgs),
    /// Serve the demo chat and FreeIM's demo routes against a running cluster.
    Demo(demo::DemoArgs),
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(one_line(&e.render().to_string())),
    };
    init_logging();
    let result = match cli.command {
        Some(Command::Server(args)) => server::run(*args),
        Some(Command::Ctl(args)) => runtime(Some(1)).and_then(|rt| rt.block_on(ctl::run(args))),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Demo(args)) => demo::run(args),
        None => demo::run_all_in_one(cli.quick),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("error: {e:#}")),
    }
}

fn fail(line: String) -> ExitCode {
    eprintln!("{line}");
    ExitCode::from(2)
}

/// Clap's message on one line, without the usage and help hints: "error: the following
/// required arguments were not provided: --redis <URL>".
fn one_line(rendered: &str) -> String {
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if message.is_empty() { "error: invalid arguments".to_owned() } else { message.join(" ") }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// A Tokio runtime with `threads` workers (all cores when `None`; flags refuse 0).
fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    Ok(builder.enable_all().build()?)
}
