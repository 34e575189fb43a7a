//! Installs what building and testing guard needs, idempotently: Debian's
//! rustc-web toolchain with the precompiled BPF `core`, LLVM 22 and
//! bpf-linker built against it, and qemu/busybox for the VM tests.

use std::{
    env,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// Packages for building the eBPF half, with the reason each is needed.
pub const BUILD_PACKAGES: [(&str, &str); 4] = [
    (
        "rustc-web",
        "a rustc whose sysroot has a precompiled core for bpfel-unknown-none",
    ),
    ("cargo-web", "the cargo that goes with rustc-web"),
    (
        "libstd-rust-web-dev-bpf",
        "the precompiled core for bpfel-unknown-none",
    ),
    ("llvm-22-dev", "the LLVM that bpf-linker links against"),
];

/// Packages for the VM tests.
pub const VM_PACKAGES: [(&str, &str); 3] = [
    ("qemu-system-x86", "boots the test kernels"),
    (
        "tmux",
        "runs `guard trace` in a real terminal for the host test of the live view",
    ),
    (
        "busybox-static",
        "the shell and tools inside the test initramfs",
    ),
];

/// The rustup name under which Debian's toolchain in /usr is linked;
/// guard-user/build.rs asks aya-build for it.
pub const TOOLCHAIN: &str = "debian-web";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).ends_with("install ok installed"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn ensure_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&(&str, &str)> = wanted.iter().filter(|(p, _)| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
    let can_apt = std::path::Path::new("/etc/debian_version").exists()
        && Command::new("apt-get").arg("--version").output().is_ok();
    if !can_apt || !is_root() {
        let mut msg = format!(
            "missing packages: {}\n{}",
            names.join(" "),
            if can_apt {
                format!("install them as root: apt-get install {}", names.join(" "))
            } else {
                "this is not a Debian machine with apt: install the equivalents of these Debian 12 \
                 packages by hand"
                    .to_owned()
            }
        );
        for (p, why) in &missing {
            msg.push_str(&format!("\n  {p}: {why}"));
        }
        bail!(msg);
    }
    for (p, why) in &missing {
        eprintln!("xtask: installing {p} ({why})");
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&names)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn ensure_toolchain_link() -> Result<()> {
    let list = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running rustup: guard's build needs rustup (https://rustup.rs) to pick the toolchain for the eBPF half")?;
    if String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(TOOLCHAIN))
    {
        return Ok(());
    }
    eprintln!("xtask: linking Debian's toolchain in /usr as rustup toolchain {TOOLCHAIN}");
    run(Command::new("rustup").args(["toolchain", "link", TOOLCHAIN, "/usr"]))
}

fn ensure_bpf_linker() -> Result<()> {
    let linker = cargo_bin_dir().join("bpf-linker");
    let version = Command::new(&linker).arg("--version").output();
    if version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {LLVM_PREFIX} (about a minute)"
    );
    let path = format!("{LLVM_PREFIX}/bin:{}", env::var("PATH").unwrap_or_default());
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", path)
        .env("LLVM_PREFIX", LLVM_PREFIX))
}

/// Everything `cargo xtask build` and `run` need.
pub fn build_deps() -> Result<()> {
    ensure_packages(&BUILD_PACKAGES)?;
    ensure_toolchain_link()?;
    ensure_bpf_linker()
}

/// Everything the tests need besides the build (the VMs, and tmux for the
/// live view's terminal test).
pub fn vm_deps() -> Result<()> {
    ensure_packages(&VM_PACKAGES)
}
