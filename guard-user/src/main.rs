use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use guard::policy::Policy;

/// guard: kills the process that keeps a memory-limited cgroup stalled on
/// memory.high, within milliseconds, from what the kernel itself reports.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Watch every cgroup with a finite memory.high and kill the hog of any
    /// that stalls without reclaim progress longer than the budget.
    Run {
        /// Log every decision but kill nothing.
        #[arg(long)]
        dry_run: bool,
        /// No-progress stall (ms) a cgroup may accumulate within a window.
        #[arg(long, default_value_t = 250)]
        budget_ms: u64,
        /// Window (ms) over which the stall is summed.
        #[arg(long, default_value_t = 1000)]
        window_ms: u64,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Printed plainly: the message names the problem and the fix; a
            // backtrace would only bury it.
            eprintln!("guard: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("GUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match cli.command {
        Command::Run {
            dry_run,
            budget_ms,
            window_ms,
        } => {
            anyhow::ensure!(budget_ms > 0, "--budget-ms must be above 0");
            anyhow::ensure!(
                window_ms >= budget_ms,
                "--window-ms ({window_ms}) must be at least --budget-ms ({budget_ms})"
            );
            let policy = Policy {
                budget: Duration::from_millis(budget_ms),
                window: Duration::from_millis(window_ms),
                dry_run,
                ..Policy::default()
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(guard::daemon::run(policy))
        }
    }
}
