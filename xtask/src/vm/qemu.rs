//! Booting a kernel under QEMU TCG and watching its console for the guest
//! kernel breaking down.

use anyhow::{Context, Result, anyhow, bail};
use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";

/// Start of the error `run_qemu` returns when the guest kernel itself broke
/// down, so callers can tell an emulator fault from a failed scenario.
pub const GUEST_FAULT: &str = "guest kernel fault";

/// Boots after a guest kernel fault before a run counts as failed.
pub const MAX_RETRIES: usize = 2;

/// Console lines that mean the guest kernel is gone or wedged. Under TCG
/// these come from emulation faults (a corrupted cmpxchg16b, lost IPIs), not
/// from the code under test, which cannot run once they appear.
const GUEST_FAULTS: [&str; 5] = [
    "BUG: soft lockup",
    "Oops: int3",
    "Kernel panic",
    "traps: PANIC: double fault",
    "BUG: unable to handle",
];

/// The guest fault a console shows, unless the scenario had already
/// reported its result (a fault while tearing down changes no result).
fn unreported_fault(console: &str) -> Option<&'static str> {
    if console.contains("GUARD-RESULT ") {
        return None;
    }
    shown_fault(console)
}

/// The first of [`GUEST_FAULTS`] the console shows.
fn shown_fault(console: &str) -> Option<&'static str> {
    GUEST_FAULTS.iter().find(|f| console.contains(*f)).copied()
}

/// How long a guest may stay silent after the firmware hands over before
/// the boot counts as wedged. A healthy guest prints its first line within
/// seconds even under TCG; an emulator that hangs in early boot prints
/// nothing until the scenario's timeout, minutes later.
const BOOT_SILENCE: Duration = Duration::from_secs(120);

/// The firmware's last line before the kernel runs, without its trailing
/// dots: the console does not always show all three ("Booting from ROM.."
/// followed at once by the kernel's terminal reset).
const FIRMWARE_DONE: &str = "Booting from ROM";

/// Whether the guest printed anything of its own after the firmware (the
/// firmware's dots and the terminal resets the kernel sends do not count).
fn guest_spoke(console: &str) -> bool {
    let Some(at) = console.find(FIRMWARE_DONE) else {
        return false;
    };
    let mut rest = &console[at + FIRMWARE_DONE.len()..];
    // Escape sequences: ESC, then either a CSI sequence ending in a letter,
    // or one more character.
    let mut text = String::new();
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        if c != '\u{1b}' {
            text.push(c);
            continue;
        }
        if let Some(stripped) = rest.strip_prefix('[') {
            let end = stripped
                .find(|ch: char| ch.is_ascii_alphabetic())
                .map_or(stripped.len(), |i| i + 1);
            rest = &stripped[end..];
        } else if let Some(c) = rest.chars().next() {
            rest = &rest[c.len_utf8()..];
        }
    }
    text.trim_start_matches('.')
        .chars()
        .any(|c| !c.is_whitespace())
}

/// Boots `vmlinuz` with `initrd` under QEMU TCG and returns the serial
/// console output, which is also written to `log`.
///
/// The guest is expected to power itself off (`poweroff -f`); a kernel panic
/// also ends the run because of `panic=-1` with `-no-reboot`. If QEMU is
/// still running after `timeout` it is killed and an error is returned.
pub fn run_qemu(
    vmlinuz: &Path,
    initrd: &Path,
    mem_mib: u32,
    extra_append: &str,
    timeout: Duration,
    log: &Path,
) -> Result<String> {
    run_qemu_with_disk(vmlinuz, initrd, mem_mib, extra_append, timeout, log, None)
}

/// [`run_qemu`], with `disk` (a raw image) attached as an NVMe drive, which
/// the guest sees as `/dev/nvme0n1`, with extra `-drive` options (such as
/// `throttling.bps-total=N`, comma-separated; empty for none).
pub fn run_qemu_with_disk(
    vmlinuz: &Path,
    initrd: &Path,
    mem_mib: u32,
    extra_append: &str,
    timeout: Duration,
    log: &Path,
    disk: Option<(&Path, &str)>,
) -> Result<String> {
    let mut append = String::from("console=ttyS0 quiet panic=-1");
    if !extra_append.trim().is_empty() {
        append.push(' ');
        append.push_str(extra_append.trim());
    }
    let mut args: Vec<OsString> = vec!["-initrd".into(), initrd.into()];
    if let Some((d, options)) = disk {
        let mut file = OsString::from("file=");
        file.push(d);
        file.push(",if=none,id=d1,format=raw");
        if !options.is_empty() {
            file.push(",");
            file.push(options);
        }
        args.extend([
            "-drive".into(),
            file,
            "-device".into(),
            "nvme,serial=scratch,drive=d1".into(),
        ]);
    }
    boot(vmlinuz, mem_mib, &args, &append, timeout, log)
}

/// Boots `vmlinuz` under QEMU TCG with `args` (initrd, drives) and the
/// kernel command line `append`; returns the console, also written to `log`.
/// The one boot loop of every VM test: it stops a wedged or crashed guest
/// early (an error starting with [`GUEST_FAULT`]) and kills QEMU at `timeout`.
pub(crate) fn boot(
    vmlinuz: &Path,
    mem_mib: u32,
    args: &[OsString],
    append: &str,
    timeout: Duration,
    log: &Path,
) -> Result<String> {
    let mut child = spawn_qemu(vmlinuz, mem_mib, args, append, log)?;
    let started = Instant::now();
    let status = watch_console(&mut child, started, timeout, log)?;
    let console = read_lossy(log)?;
    // A guest that panicked powers off at once, often before the watch saw
    // the console: look once more, unless the scenario had already reported
    // (a fault while tearing down changes no result).
    if let Some(fault) = unreported_fault(&console) {
        return Err(fault_error(fault, started, log, &console));
    }
    if !status.success() {
        bail!(
            "{QEMU} failed with {status} (console log: {}); last lines:\n{}",
            log.display(),
            tail_lines(&console, 20)
        );
    }
    Ok(console)
}

/// Starts QEMU with the serial console and QEMU's own errors both going to
/// `log`.
fn spawn_qemu(
    vmlinuz: &Path,
    mem_mib: u32,
    args: &[OsString],
    append: &str,
    log: &Path,
) -> Result<Child> {
    let stdout = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let stderr = stdout
        .try_clone()
        .with_context(|| format!("duplicating the handle of {}", log.display()))?;
    Command::new(QEMU)
        // cx16 off: qemu 7.2's multi-threaded TCG corrupts cmpxchg16b.
        .args(["-accel", "tcg,thread=multi", "-cpu", "max,-cx16", "-m"])
        .arg(mem_mib.to_string())
        .args(["-smp", "2", "-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .args(args)
        .arg("-append")
        .arg(append)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {QEMU} (install qemu-system-x86)"))
}

/// Waits for QEMU to exit, reading the console once a second; kills it
/// when the guest faults, stays silent after the firmware, or outlives
/// `timeout`.
fn watch_console(
    child: &mut Child,
    started: Instant,
    timeout: Duration,
    log: &Path,
) -> Result<ExitStatus> {
    let mut checked = Instant::now();
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {QEMU}"))?
        {
            return Ok(status);
        }
        if started.elapsed() >= timeout {
            stop(child);
            let console = read_lossy(log).unwrap_or_default();
            bail!(
                "{QEMU} timed out after {timeout:?} and was killed (console log: {}); \
                 last console lines:\n{}",
                log.display(),
                tail_lines(&console, 20)
            );
        }
        if checked.elapsed() >= Duration::from_secs(1) {
            checked = Instant::now();
            let console = read_lossy(log).unwrap_or_default();
            let silent = started.elapsed() >= BOOT_SILENCE.min(timeout) && !guest_spoke(&console);
            let fault =
                shown_fault(&console).or_else(|| silent.then_some("silent after the firmware"));
            if let Some(fault) = fault {
                stop(child);
                return Err(fault_error(fault, started, log, &console));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills QEMU and reaps it. Kill errors only mean it exited meanwhile; wait
/// reaps it either way.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The error for a guest kernel that broke down: it starts with
/// [`GUEST_FAULT`] and ends with the console's last lines.
fn fault_error(fault: &str, started: Instant, log: &Path, console: &str) -> anyhow::Error {
    anyhow!(
        "{GUEST_FAULT} ({fault:?}) after {:.0?} (console log: {}); last console lines:\n{}",
        started.elapsed(),
        log.display(),
        tail_lines(console, 20)
    )
}

fn read_lossy(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_silent_after_the_firmware_has_not_spoken() {
        let firmware = "\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1.16.2)\r\n\r\n\
                        iPXE (http://ipxe.org) 00:03.0\r\n\r\nBooting from ROM...\r\n";
        assert!(!guest_spoke(""));
        assert!(!guest_spoke(firmware));
        let wedged = format!("{firmware}\u{1b}c\u{1b}[?7l\u{1b}[2J");
        assert!(!guest_spoke(&wedged));
        assert!(guest_spoke(&format!("{wedged}GUARD-KERNEL 7.2.13\r\n")));
        assert!(guest_spoke(&format!(
            "{wedged}[    6.474776] systemd[1]: x\r\n"
        )));
    }

    /// The console of a 6.1 boot that ran well but was stopped at 120 s as
    /// silent: the firmware's line shows two dots, and the kernel's reset
    /// follows on the same line.
    #[test]
    fn a_firmware_line_cut_short_still_finds_the_guest_speaking() {
        let console = "\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n\n\n\
                       iPXE (http://ipxe.org) 00:03.0 CA00 PCI2.10 PnP PMM+3EFCF000+3EF0F000 CA00\r\n\n\n\
                       Booting from ROM..\u{1b}c\u{1b}[?7l\u{1b}[2JGUARD-KERNEL 6.1.0-50-cloud-amd64\r\n";
        assert!(guest_spoke(console));
        let cut = console.split("GUARD-KERNEL").next().unwrap_or_default();
        assert!(
            !guest_spoke(cut),
            "the firmware's dots alone are not the guest"
        );
    }
}
