use std::{io, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use guard::{
    config::{self, Config},
    daemon::{self, RunOptions},
};

/// guard: kills the process that keeps a memory-limited cgroup stalled on
/// memory.high, within milliseconds, from what the kernel itself reports.
#[derive(Parser)]
#[command(name = "guard", version, about)]
struct Cli {
    /// Log format on stderr; `auto` is journald (structured fields) when
    /// started by systemd with its output in the journal, else text.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
    Journald,
}

#[derive(Subcommand)]
enum Command {
    /// Watch the cgroups of the policy and kill the hog of any that stalls
    /// on memory.high without reclaim progress longer than its budget.
    Run {
        /// Policy file [default: /etc/guard/guard.toml if it exists, else
        /// the embedded default policy].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Log every decision but kill nothing (whatever the file says).
        #[arg(long)]
        dry_run: bool,
    },
    /// The policy file: print the default, or check one.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print shell completions.
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the embedded default policy, a commented starting point.
    Default,
    /// Check a policy file: exit 0 if it is valid, else print every error
    /// with its line and column and exit 1.
    Check { path: PathBuf },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            // Printed plainly: the message names the problem and the fix; a
            // backtrace would only bury it.
            eprintln!("guard: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) -> anyhow::Result<()> {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = tracing_subscriber::EnvFilter::try_from_env("GUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let format = match format {
        LogFormat::Auto if under_journal => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Journald => registry
            .with(
                tracing_journald::layer()
                    .context("connecting to journald")?
                    // GUARD_PID, GUARD_COMM, ...: the names the hook gets too.
                    .with_field_prefix(Some("GUARD".to_owned())),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(io::stderr),
            )
            .init(),
        LogFormat::Text | LogFormat::Auto => registry
            .with(tracing_subscriber::fmt::layer().with_writer(io::stderr))
            .init(),
    }
    Ok(())
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, dry_run } => {
            init_logs(cli.log_format)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(daemon::run(RunOptions { config, dry_run }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Default) => {
            print!("{}", config::DEFAULT_POLICY);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { path }) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            match Config::parse(&text, &path.display().to_string()) {
                Ok(_) => {
                    println!("{}: ok", path.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "guard", &mut io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut io::stdout())
                .context("writing the man page")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
