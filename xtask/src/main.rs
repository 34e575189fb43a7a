//! `cargo xtask`: the project's own set-up, build, run and test commands.

mod bench;
mod deb;
mod install;
mod scenarios;
mod setup;
mod vm;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run and test guard")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain if needed and build the static `guard` binary;
    /// prints its path as the last line.
    Build,
    /// Build, then run `guard` with the given arguments (default: `run`,
    /// the daemon with its embedded default policy).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Unit tests, host load/attach test, and the VM scenarios on every
    /// kernel of the matrix; ends with a table.
    Test {
        /// Only the VM scenarios whose name contains this (or one of these,
        /// comma-separated: `seed,nested`).
        #[arg(long)]
        scenario: Option<String>,
        /// Only the kernels whose label (6.1, 6.12, 7.2 ...) is this.
        #[arg(long)]
        kernel: Option<String>,
        /// Skip fmt, clippy and `cargo test` (unit and host tests).
        #[arg(long)]
        vm_only: bool,
    },
    /// Benchmarks: the user-space kill path natively, then guard against
    /// earlyoom, oomd and systemd-oomd, and its cost, in the systemd VM on
    /// every kernel; writes BENCHMARKS.md, its chart and README's headline.
    Bench {
        /// Only the kernel whose label (6.1, 6.12, 7.2 ...) is this.
        #[arg(long)]
        kernel: Option<String>,
        /// How long a case may last, seconds: systemd-oomd's defaults (60 %
        /// for 30 s) take about a minute to act under TCG.
        #[arg(long, default_value_t = 90)]
        window_secs: u64,
        /// How long the idle daemon's wake-ups are counted, seconds.
        #[arg(long, default_value_t = 60)]
        idle_secs: u64,
        /// No VM: rewrite the documents from docs/bench/results.json.
        #[arg(long)]
        report_only: bool,
    },
    /// Build, then make the Debian package guard_VERSION_ARCH.deb in
    /// target/deb (dpkg-deb); prints its path as the last line.
    Deb {
        /// The Debian revision (the part after the version's `-`).
        #[arg(long, default_value = "1")]
        revision: String,
    },
    /// Build, then install the binary, the systemd unit, the default policy
    /// (unless one exists), the man page and completions.
    Install {
        /// Install into this directory instead of the system root.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV printed no host line")
}

/// Builds `guard` and the scenario runner as static binaries; returns the
/// release directory holding them.
pub fn build_static() -> Result<PathBuf> {
    setup::build_deps()?;
    let triple = host_triple()?;
    let root = workspace_root();
    let status = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["build", "--release", "--target", &triple])
        .args(["--package", "guard-user", "--package", "guard-tests"])
        // With an explicit --target these flags reach the binaries only,
        // not build scripts or proc macros.
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the static binaries failed: {status}");
    }
    Ok(root.join("target").join(triple).join("release"))
}

/// The Debian package of the static build in `bin`, in `out_dir`.
pub fn build_deb(bin: &Path, revision: &str, out_dir: &Path) -> Result<PathBuf> {
    let version = deb::version(revision);
    let arch = deb::debian_arch(&host_triple()?)?;
    let contents = deb::contents(&bin.join("guard"), &workspace_root().join("deploy"))?;
    let tree = out_dir.join(format!("tree-{version}"));
    let deb = deb::build(&contents, &version, arch, &tree, out_dir)?;
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// `cargo ARGS`, its standard output (its errors go to the terminal).
fn cargo_stdout(args: &[&str]) -> Result<String> {
    let out = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("cargo {} failed: {}", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Formatting, lints, then unit and host tests.
fn host_checks() -> Result<()> {
    eprintln!("xtask: cargo fmt --check");
    cargo(&["fmt", "--all", "--check"])?;
    eprintln!("xtask: cargo clippy");
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    eprintln!("xtask: cargo test (unit tests, host load/attach test)");
    cargo(&["test"])
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<ExitCode> {
    match Cli::parse().command {
        Cmd::Build => {
            let dir = build_static()?;
            println!("{}", dir.join("guard").display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { args } => {
            let guard = build_static()?.join("guard");
            let args = if args.is_empty() {
                vec!["run".to_owned()]
            } else {
                args
            };
            eprintln!("xtask: {} {}", guard.display(), args.join(" "));
            let status = Command::new(&guard)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", guard.display()))?;
            Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
        Cmd::Deb { revision } => {
            let bin = build_static()?;
            let deb = build_deb(&bin, &revision, &workspace_root().join("target/deb"))?;
            println!("{}", deb.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Install { root } => {
            let guard = build_static()?.join("guard");
            install::install(
                &guard,
                &workspace_root().join("deploy/guard.service"),
                &root,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench {
            kernel,
            window_secs,
            idle_secs,
            report_only,
        } => {
            let mut opts = bench::Options {
                native: None,
                kernel,
                window_secs,
                idle_secs,
                report_only,
            };
            if report_only {
                bench::run(None, &opts)?;
                return Ok(ExitCode::SUCCESS);
            }
            setup::build_deps()?;
            eprintln!("xtask: the user-space kill path, natively");
            let native = cargo_stdout(&[
                "run",
                "--quiet",
                "--release",
                "--package",
                "guard-user",
                "--example",
                "kill_path",
            ])?;
            eprintln!("{native}");
            // One line per case (a hog among small ones; all alike).
            let lines: Vec<&str> = native
                .lines()
                .filter(|l| l.starts_with("kill path"))
                .collect();
            opts.native = (!lines.is_empty()).then(|| lines.join("\n"));
            setup::vm_deps()?;
            let bin = build_static()?;
            bench::run(Some(&bin), &opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Test {
            scenario,
            kernel,
            vm_only,
        } => {
            setup::build_deps()?;
            setup::vm_deps()?;
            if !vm_only {
                host_checks()?;
            }
            let bin = build_static()?;
            let ok = scenarios::run_matrix(&bin, scenario.as_deref(), kernel.as_deref())?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
