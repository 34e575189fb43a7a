use std::{io, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use guard::{
    config::{self, Config},
    daemon::{self, RunOptions},
    events::{Event, Record},
    report, source, stream,
};
use tokio::sync::mpsc;

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
        /// Serve the event stream on this Unix socket (root and group
        /// `guard` may read it).
        #[arg(long, value_name = "PATH", default_value = stream::SOCKET_PATH)]
        socket: PathBuf,
        /// Serve no event stream.
        #[arg(long)]
        no_socket: bool,
        /// Keep the daemon's own rotating event log in this directory.
        #[arg(long, value_name = "DIR", default_value = stream::LOG_DIR)]
        event_log: PathBuf,
        /// Keep no event log on disk.
        #[arg(long)]
        no_event_log: bool,
        /// Size of one event log file before it rotates (3 old parts kept).
        #[arg(long, value_name = "MIB", default_value_t = stream::LOG_MAX_BYTES >> 20)]
        event_log_mib: u64,
        /// Serve Prometheus metrics at http://ADDR/metrics (off by default).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Attach every tracepoint the classic way (perf_event_open through
        /// tracefs) instead of as BTF-typed tracepoints: for a kernel whose
        /// tp_btf misbehaves. Needs CAP_SYS_ADMIN where
        /// kernel.perf_event_paranoid is 3.
        #[arg(long)]
        classic_tracepoints: bool,
    },
    /// Watch memory stalls live: a table of cgroups and the events as they
    /// happen. Attaches to the daemon's socket, or loads its own probes
    /// (which never kill) when no daemon runs.
    Trace {
        /// One event per line, for people (grep, less).
        #[arg(long, conflicts_with = "json")]
        lines: bool,
        /// One JSON record per line (the socket's schema), for jq.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Write the event stream to a file (JSON lines) for `guard report`.
    Record {
        /// The file to write (appended to if it exists).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Reconstruct incidents from a recorded stream or the daemon's log:
    /// when the stall began, how long, which tasks, what was killed, how
    /// much memory came back.
    Report {
        /// Recorded files (`guard record`, /var/lib/guard/events.jsonl*).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Also draw the incident: memory against high and max, stall per
        /// second, kill markers.
        #[arg(long, value_name = "OUT")]
        svg: Option<PathBuf>,
    },
    /// Why guard would or would not kill a process, or what it would do
    /// about a cgroup: the scope and budget that apply, whether the process
    /// is protected and by which rule, its footprint and place in the victim
    /// order, and what a verdict there would do now. Kills nothing.
    Explain {
        /// A process id, or a cgroup path ("/user.slice/user-1000.slice").
        #[arg(value_name = "PID|CGROUP")]
        target: String,
        /// Policy file [default: as guard run reads it].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// What an admin checks after installing: the daemon and its hooks,
    /// every cgroup with a memory.high and the scope that applies, kills
    /// so far, other memory killers running, and risky settings. Asks the
    /// running daemon, or reads the machine alone when none runs.
    Status {
        /// The daemon's event socket.
        #[arg(long, value_name = "PATH", default_value = stream::SOCKET_PATH)]
        socket: PathBuf,
        /// Policy file [default: as guard run reads it].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// The daemon's event log directory.
        #[arg(long, value_name = "DIR", default_value = stream::LOG_DIR)]
        event_log: PathBuf,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
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

#[derive(clap::Args)]
struct SourceArgs {
    /// The daemon's event socket.
    #[arg(long, value_name = "PATH", default_value = stream::SOCKET_PATH)]
    socket: PathBuf,
    /// Load own probes even if a daemon runs (needs root; never kills).
    #[arg(long)]
    standalone: bool,
    /// Stop after this many seconds (default: until interrupted).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the embedded default policy, a commented starting point.
    Default,
    /// Check a policy file as `guard run` reads it: every mistake in it with
    /// its line and column, and whether anyone but root could change it
    /// (guard run refuses such a file). Exit 0 if guard run would accept
    /// it, else 1. Without PATH: the file guard run reads by default.
    Check { path: Option<PathBuf> },
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Ends the stream after `secs`, or at SIGINT/SIGTERM, so every sink
/// finishes its file or terminal cleanly.
fn until(mut rx: mpsc::Receiver<Record>, secs: Option<f64>) -> mpsc::Receiver<Record> {
    let (tx, out) = mpsc::channel(1024);
    tokio::spawn(async move {
        let deadline = async {
            match secs {
                Some(s) => tokio::time::sleep(std::time::Duration::from_secs_f64(s.max(0.0))).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(terminated);
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => if tx.send(r).await.is_err() { break },
                    None => break,
                },
                _ = &mut deadline => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = &mut terminated => break,
            }
        }
    });
    out
}

/// `guard trace --lines/--json`. Samples are rows, not events: `--lines`
/// leaves them out.
async fn print_records(mut rx: mpsc::Receiver<Record>, json: bool) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut stdout = io::stdout().lock();
    while let Some(r) = rx.recv().await {
        let line = if json {
            r.to_line()
        } else if matches!(r.event, Event::Sample { .. }) {
            continue;
        } else {
            r.to_text_line()
        };
        if let Err(e) = writeln!(stdout, "{line}") {
            // A closed pipe (`| head`) ends the trace quietly.
            if e.kind() == io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e).context("writing to stdout");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `guard record`: every record, one JSON line each, written through at
/// once so a crash loses nothing already seen; progress on stderr.
async fn record(
    mut rx: mpsc::Receiver<Record>,
    output: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output)
        .with_context(|| format!("opening {}", output.display()))?;
    let mut file = io::LineWriter::new(file);
    let (mut total, mut verdicts, mut kills) = (0u64, 0u64, 0u64);
    let mut last_progress = std::time::Instant::now();
    eprintln!("guard: recording to {} (Ctrl-C to stop)", output.display());
    while let Some(r) = rx.recv().await {
        match &r.event {
            Event::Verdict { .. } => verdicts += 1,
            Event::Kill { .. } | Event::OomKill { .. } => kills += 1,
            _ => {}
        }
        writeln!(file, "{}", r.to_line())
            .with_context(|| format!("writing {}", output.display()))?;
        total += 1;
        if last_progress.elapsed() >= std::time::Duration::from_secs(5) {
            eprintln!("guard: {total} records ({verdicts} verdicts, {kills} kills) so far");
            last_progress = std::time::Instant::now();
        }
    }
    file.flush()
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "guard: recorded {total} records ({verdicts} verdicts, {kills} kills) to {}",
        output.display()
    );
    Ok(ExitCode::SUCCESS)
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

/// `guard report`: the incidents of event logs, and their chart.
fn report_cmd(files: Vec<PathBuf>, svg: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    // A log part rotated a moment ago is empty; with other parts beside it,
    // it says nothing and is left out.
    let files: Vec<PathBuf> = if files.len() > 1 {
        files
            .into_iter()
            .filter(|f| std::fs::metadata(f).map_or(true, |m| m.len() > 0))
            .collect()
    } else {
        files
    };
    let loaded = report::load(&files)?;
    let mut rep = report::analyze(&loaded.records);
    rep.skipped = loaded.skipped;
    print!("{rep}");
    if let Some(out) = svg {
        match report::svg(&loaded.records, &rep, &out) {
            Ok(()) => eprintln!("guard: drew {}", out.display()),
            Err(report::ReportError::NoIncident) => {
                eprintln!("guard: no incident in these records: nothing to draw")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `guard config check`: the same reading as `guard run` (and a reload),
/// with every mistake printed, the file's own and its ownership's.
/// `guard explain`: a process id or a cgroup path, against the policy
/// `guard run` would read.
fn explain_cmd(target: &str, config: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let (policy, _) = daemon::read_policy(&RunOptions::new(config, true))?;
    let hierarchy = guard::cgroup::Hierarchy::new(guard::cgroup::DEFAULT_ROOT);
    let mut responder = guard::decision::Responder::new(
        policy,
        hierarchy,
        "/proc",
        std::collections::HashMap::new(),
    );
    let explained = match target.parse::<u32>() {
        Ok(pid) => responder.explain(Some(pid), None),
        Err(_) if target.starts_with('/') => {
            let dir = std::path::Path::new(guard::cgroup::DEFAULT_ROOT)
                .join(target.trim_start_matches('/'));
            responder.explain(None, Some(&dir))
        }
        Err(_) => Err(format!(
            "{target:?} is neither a process id nor a cgroup path (one starting with /)"
        )),
    };
    let e = explained.map_err(|e| anyhow::anyhow!("guard explain: {e}"))?;
    if json {
        println!("{}", serde_json::to_string(&e)?);
    } else {
        for line in e.to_string().lines() {
            println!("{}", guard::terminal::printable(line));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check_config(path: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let default = std::path::Path::new(config::DEFAULT_PATH);
    let path = match path {
        Some(p) => p,
        None if default.exists() => default,
        None => {
            println!(
                "{}: absent; guard run uses the embedded default policy (guard config default)",
                default.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = Config::parse(&text, &path.display().to_string());
    let secure = config::check_secure(path);
    // What this process could not do (under the unit's ExecReload=, the
    // daemon's own capabilities).
    let startable = match &parsed {
        Ok(cfg) => cfg
            .hook
            .as_ref()
            .map_or(Ok(()), config::hook_startable_here),
        Err(_) => Ok(()),
    };
    if let Err(e) = &parsed {
        eprintln!("{e}");
    }
    if let Err(why) = &startable {
        eprintln!("{}: {why}", path.display());
    }
    if let Err(e) = &secure {
        eprintln!("{e}\nguard run and a reload refuse this file until that is fixed");
    }
    if parsed.is_ok() && secure.is_ok() && startable.is_ok() {
        println!("{}: ok", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    Ok(ExitCode::FAILURE)
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            dry_run,
            socket,
            no_socket,
            event_log,
            no_event_log,
            event_log_mib,
            metrics_addr,
            classic_tracepoints,
        } => {
            init_logs(cli.log_format)?;
            let opts = RunOptions {
                socket: (!no_socket).then_some(socket),
                event_log: (!no_event_log).then_some(event_log),
                event_log_max_bytes: event_log_mib.saturating_mul(1 << 20),
                metrics_addr,
                classic_tracepoints,
                ..RunOptions::new(config, dry_run)
            };
            runtime()?.block_on(daemon::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Trace {
            lines,
            json,
            source,
        } => {
            // The live view owns the terminal: log lines would tear it.
            if lines || json {
                init_logs(cli.log_format)?;
            }
            runtime()?.block_on(async {
                let (rx, _) = source::open(&source.socket, source.standalone).await?;
                let rx = until(rx, source.duration);
                if lines || json {
                    print_records(rx, json).await
                } else {
                    guard::live::run(rx).await.map(|()| ExitCode::SUCCESS)
                }
            })
        }
        Command::Record { output, source } => {
            init_logs(cli.log_format)?;
            runtime()?.block_on(async {
                let (rx, _) = source::open(&source.socket, source.standalone).await?;
                record(until(rx, source.duration), &output).await
            })
        }
        Command::Report { files, svg } => report_cmd(files, svg),
        Command::Explain {
            target,
            config,
            json,
        } => explain_cmd(&target, config, json),
        Command::Status {
            socket,
            config,
            event_log,
            json,
        } => {
            guard::status::run(&guard::status::Options {
                socket,
                config,
                event_log,
                json,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Default) => {
            print!("{}", config::DEFAULT_POLICY);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { path }) => check_config(path.as_deref()),
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
