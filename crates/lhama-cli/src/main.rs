//! The `lhama` binary.

mod bench;
mod generate;
mod health;
mod json_log;
mod load;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lhama_model::synth::{self, Preset};

#[derive(Parser)]
#[command(
    name = "lhama",
    version,
    about = "OpenAI-compatible inference server for small Llama models"
)]
struct Cli {
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long, global = true, env = "LHAMA_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the OpenAI-compatible HTTP server.
    Serve(Box<serve::ServeArgs>),
    /// Write a synthetic checkpoint in the real model's exact format.
    Synth {
        /// tiny (fast tests, GQA) or ttl-460m (the real model's shapes).
        #[arg(long, default_value = "tiny")]
        preset: Preset,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Generate text from a prompt, streaming it to the terminal.
    Generate(generate::GenerateArgs),
    /// Measure prefill and decode speed on the CPU backend.
    Bench(bench::BenchArgs),
    /// Ask a server's /health; exit 0 only if it answers 200 (for container health checks).
    Health {
        /// [default: http://127.0.0.1:$LHAMA_PORT/health, port 8000 when LHAMA_PORT is unset]
        #[arg(long, env = "LHAMA_HEALTH_URL")]
        url: Option<String>,
        /// Seconds to connect and to answer.
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
    /// Compare the CPU backend with goldens from the transformers reference.
    Verify {
        #[arg(long, env = "LHAMA_MODEL", default_value = lhama_model::source::DEFAULT_MODEL)]
        model: String,
        /// JSON written by tests/reference/make_goldens.py.
        #[arg(long)]
        golden: PathBuf,
        /// Largest allowed |logit difference|.
        #[arg(long, default_value_t = 1e-3)]
        tolerance: f32,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: load::BackendKind,
        /// CUDA numerics: exact checks --tolerance and every greedy token;
        /// fast (the default) checks its budget (top-5
        /// logprobs within 0.05 nats, 32 greedy tokens identical).
        #[arg(long, value_enum, default_value = "fast")]
        precision: load::PrecisionArg,
    },
}

/// The environment variable a rejected value came from, if it did: clap's
/// message names only the flag.
fn env_source(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let arg = match e.get(ContextKind::InvalidArg)? {
        ContextValue::String(s) => s.clone(),
        _ => return None,
    };
    let value = match e.get(ContextKind::InvalidValue)? {
        ContextValue::String(s) => s.clone(),
        _ => return None,
    };
    let long = arg
        .strip_prefix("--")?
        .split([' ', '='])
        .next()?
        .to_string();
    fn find(cmd: &clap::Command, long: &str) -> Option<String> {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|v| v.to_string_lossy().into_owned())
            .or_else(|| cmd.get_subcommands().find_map(|c| find(c, long)))
    }
    let var = find(&<Cli as clap::CommandFactory>::command(), &long)?;
    (std::env::var(&var).ok()? == value).then_some(var)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let source = env_source(&e);
            let _ = e.print();
            if let Some(var) = source {
                eprintln!("(the value comes from the environment variable {var})");
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    // Serve settings are resolved first: the log format may come from its file.
    let serve_settings = match &cli.command {
        Command::Serve(args) => match args.resolve() {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let json_logs = serve_settings
        .as_ref()
        .is_some_and(|s| s.log_format == serve::LogFormat::Json);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // No colour codes when stderr is a file or a pipe (a container log, journald).
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter);
    if json_logs {
        logs.fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json_log::JsonLines)
            .init();
    } else {
        logs.init();
    }
    if let Some(n) = cli.threads
        && let Err(e) = rayon_threads(n)
    {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Synth { preset, seed, out } => synth::write_model(preset, seed, &out)
            .map(|()| eprintln!("wrote {preset:?} (seed {seed}) to {}", out.display()))
            .map_err(anyhow::Error::from),
        Command::Serve(_) => match serve_settings {
            Some(settings) => serve::run(settings),
            None => unreachable!("serve settings are resolved above for the serve command"),
        },
        Command::Generate(args) => generate::run(args),
        Command::Health { url, timeout_secs } => {
            let url = url.unwrap_or_else(health::default_url);
            health::run(&url, std::time::Duration::from_secs(timeout_secs.max(1)))
        }
        Command::Bench(args) => bench::run(args),
        Command::Verify {
            model,
            golden,
            tolerance,
            backend,
            precision,
        } => load::verify(&model, &golden, tolerance, backend, precision),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn rayon_threads(n: usize) -> anyhow::Result<()> {
    anyhow::ensure!(n > 0, "--threads must be at least 1");
    lhama_cpu::set_threads(n).map_err(|e| anyhow::anyhow!("--threads: {e}"))
}
