//! Helpers for booting test VMs: fetch Debian cloud kernels, build a
//! busybox initramfs and boot it under QEMU.
//!
//! The guard's eBPF programs must load on every kernel we claim to support,
//! so integration tests boot three Debian cloud kernels (bookworm, trixie and
//! sid: an old LTS, the current stable and the newest) instead of trusting the
//! host's kernel.
//! Everything here shells out to tools Debian ships (`apt-get`, `apt-cache`,
//! `dpkg`, `busybox-static`, `qemu-system-x86`), so the only network access
//! needed is the package mirror the machine already uses, and only on the
//! first run: the kernels are cached outside the repository.
//!
//! QEMU runs under TCG because nested KVM is not available on the machines
//! this runs on; TCG is slower but boots a cloud kernel in seconds.

use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A kernel image ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// `major.minor`, e.g. `6.1`, used to name test cases.
    pub label: String,
    /// Full `uname -r`, e.g. `6.1.0-41-cloud-amd64`.
    pub release: String,
    /// The bzImage in the cache.
    pub vmlinuz: PathBuf,
}

/// Suites fetched, oldest first. `sid` tracks the newest kernel Debian has.
const SUITES: [&str; 3] = ["bookworm", "trixie", "sid"];

/// Meta package that always depends on the current cloud kernel image. The
/// cloud flavour is small and boots fine under QEMU with BTF and cgroup v2.
const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Keyring used to verify all three suites. Bookworm's
/// `debian-archive-keyring` also carries the trixie keys, which currently sign
/// trixie and sid as well.
const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

const BUSYBOX: &str = "/bin/busybox";
const QEMU: &str = "qemu-system-x86_64";

/// Returns the bookworm, trixie and sid cloud kernels, in that order,
/// downloading any that are not cached yet.
///
/// The cache lives in `$XDG_CACHE_HOME/guard/kernels` (or
/// `~/.cache/guard/kernels`), one subdirectory per suite holding only
/// `vmlinuz` and `release`. A cached suite is used without touching the
/// network; delete its directory to fetch the current kernel again.
pub fn ensure_kernels() -> Result<Vec<Kernel>> {
    let root = kernel_cache_dir()?;
    // The mirror is looked up only when something has to be downloaded, so
    // cached runs work on machines whose apt configuration we cannot parse.
    let mut mirror: Option<String> = None;
    let mut kernels = Vec::with_capacity(SUITES.len());
    for suite in SUITES {
        let dir = root.join(suite);
        if let Some(kernel) = cached_kernel(&dir) {
            eprintln!(
                "xtask: using cached Debian {suite} kernel {}",
                kernel.release
            );
            kernels.push(kernel);
            continue;
        }
        let mirror = match &mirror {
            Some(m) => m.clone(),
            None => mirror.insert(find_mirror()?).clone(),
        };
        eprintln!("xtask: downloading Debian {suite} cloud kernel ...");
        let kernel = fetch_kernel(suite, &mirror, &dir)
            .with_context(|| format!("fetching the Debian {suite} cloud kernel"))?;
        eprintln!(
            "xtask: Debian {suite} kernel {} cached in {}",
            kernel.release,
            dir.display()
        );
        kernels.push(kernel);
    }
    Ok(kernels)
}

/// Writes an uncompressed newc cpio initramfs to `out`.
///
/// The image holds busybox-static as `/bin/busybox` with a symlink in `/bin`
/// for every applet, the directories `/proc /sys /dev /tmp /run /etc`, a
/// `/dev/console` node (so `/init` has a console before it mounts devtmpfs),
/// each `(host_src, dest)` file with mode 0755 (parent directories are
/// created), and `init_script` as `/init` with mode 0755. The script needs a
/// `#!/bin/sh` line. A file whose destination is an applet's name replaces
/// that applet's symlink.
///
/// The archive is written here rather than with the `cpio` tool so that it
/// can hold device nodes and root ownership without running as root, and so
/// that the output is byte-for-byte reproducible.
pub fn build_initramfs(out: &Path, files: &[(PathBuf, String)], init_script: &str) -> Result<()> {
    let busybox =
        fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX} (install busybox-static)"))?;
    if elf_has_interpreter(&busybox) {
        bail!(
            "{BUSYBOX} is dynamically linked and cannot run in the initramfs; \
             install busybox-static instead of busybox"
        );
    }
    let applets = busybox_applets()?;

    let mut tree = Tree::default();
    for dir in ["bin", "proc", "sys", "dev", "tmp", "run", "etc"] {
        tree.add_dir(dir)?;
    }
    tree.insert("dev/console", Node::CharDev { major: 5, minor: 1 })?;
    for applet in &applets {
        if applet != "busybox" {
            tree.insert(
                &format!("bin/{applet}"),
                Node::Symlink("busybox".to_owned()),
            )?;
        }
    }
    tree.insert("bin/busybox", Node::File(busybox))?;
    for (src, dest) in files {
        let dest = normalize_dest(dest)?;
        if dest == "init" {
            bail!("{}: /init is reserved for the init script", src.display());
        }
        let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        tree.insert(&dest, Node::File(data))?;
    }
    tree.insert("init", Node::File(init_script.as_bytes().to_vec()))?;

    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut writer = BufWriter::new(file);
    write_newc(&mut writer, &tree.nodes)
        .and_then(|()| writer.flush())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Start of the error `run_qemu` returns when the guest kernel itself broke
/// down, so callers can tell an emulator fault from a failed scenario.
pub const GUEST_FAULT: &str = "guest kernel fault";

/// Console lines that mean the guest kernel is gone or wedged. Under TCG
/// these come from emulation faults (a corrupted cmpxchg16b, lost IPIs), not
/// from the code under test, which cannot run once they appear.
pub(crate) const GUEST_FAULTS: [&str; 5] = [
    "BUG: soft lockup",
    "Oops: int3",
    "Kernel panic",
    "traps: PANIC: double fault",
    "BUG: unable to handle",
];

/// The guest fault a console shows, unless the scenario had already
/// reported its result (a fault while tearing down changes no result).
pub(crate) fn unreported_fault(console: &str) -> Option<&'static str> {
    if console.contains("GUARD-RESULT ") {
        return None;
    }
    GUEST_FAULTS.iter().find(|f| console.contains(*f)).copied()
}

/// How long a guest may stay silent after the firmware hands over before
/// the boot counts as wedged. A healthy guest prints its first line within
/// seconds even under TCG; an emulator that hangs in early boot prints
/// nothing until the scenario's timeout, minutes later.
const BOOT_SILENCE: Duration = Duration::from_secs(120);

/// The firmware's last line before the kernel runs.
const FIRMWARE_DONE: &str = "Booting from ROM...";

/// Whether the guest printed anything of its own after the firmware (the
/// terminal resets the kernel sends do not count).
pub(crate) fn guest_spoke(console: &str) -> bool {
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
    text.chars().any(|c| !c.is_whitespace())
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
    let stdout = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let stderr = stdout
        .try_clone()
        .with_context(|| format!("duplicating the handle of {}", log.display()))?;
    let mut child = Command::new(QEMU)
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
        .with_context(|| format!("starting {QEMU} (install qemu-system-x86)"))?;

    let started = Instant::now();
    let mut checked = Instant::now();
    let fault_error = |fault: &str, console: &str| {
        anyhow!(
            "{GUEST_FAULT} ({fault:?}) after {:.0?} (console log: {}); last console lines:\n{}",
            started.elapsed(),
            log.display(),
            tail_lines(console, 20)
        )
    };
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {QEMU}"))?
        {
            break status;
        }
        if started.elapsed() >= timeout {
            // Kill errors only mean it exited meanwhile; wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
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
            if let Some(fault) = GUEST_FAULTS.iter().find(|f| console.contains(*f)) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fault_error(fault, &console));
            }
            if started.elapsed() >= BOOT_SILENCE.min(timeout) && !guest_spoke(&console) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fault_error("silent after the firmware", &console));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let console = read_lossy(log)?;
    // A guest that panicked powers off at once, often before the check in
    // the loop above saw the console: look once more, unless the scenario
    // had already reported (a fault while tearing down changes no result).
    if let Some(fault) = unreported_fault(&console) {
        return Err(fault_error(fault, &console));
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

// ---------------------------------------------------------------------------
// Kernel cache and download
// ---------------------------------------------------------------------------

fn kernel_cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .ok_or_else(|| anyhow!("neither XDG_CACHE_HOME nor HOME is set"))?;
            Path::new(&home).join(".cache")
        }
    };
    Ok(base.join("guard").join("kernels"))
}

/// Returns the cached kernel if both files are there and look sane; anything
/// else (including a half-written cache) means "download again".
fn cached_kernel(dir: &Path) -> Option<Kernel> {
    let release = fs::read_to_string(dir.join("release")).ok()?;
    let release = release.trim().to_owned();
    let label = label_from_release(&release)?;
    let vmlinuz = dir.join("vmlinuz");
    let mut head = [0u8; 0x210];
    fs::File::open(&vmlinuz).ok()?.read_exact(&mut head).ok()?;
    if !is_bzimage(&head) {
        return None;
    }
    Some(Kernel {
        label,
        release,
        vmlinuz,
    })
}

fn fetch_kernel(suite: &str, mirror: &str, dir: &Path) -> Result<Kernel> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    remove_stale_work_dirs(dir);
    let work = WorkDir::create(dir.join(format!(".work-{}", std::process::id())))?;
    let apt = Apt::new(work.path(), suite, mirror)?;
    apt.update()?;

    let meta_depends = apt.depends(META_PACKAGE)?;
    let image = pick_dependency(&meta_depends, "linux-image-", META_PACKAGE).ok_or_else(|| {
        anyhow!("{META_PACKAGE} in {suite} has no linux-image-* dependency: {meta_depends}")
    })?;
    let root = work.path().join("root");
    apt.download_and_extract(&image, &work.path().join("image"), &root)?;

    let (vmlinuz, release) = match find_vmlinuz(&root)? {
        Some(found) => found,
        None => {
            // Newer kernels split the image: linux-image-X only pulls in
            // linux-binary-X, which ships usr/lib/modules/X/vmlinuz.
            let image_depends = apt.depends(&image)?;
            let binary = pick_dependency(&image_depends, "linux-binary-", "").ok_or_else(|| {
                anyhow!(
                    "{image} ships no boot/vmlinuz-* and has no linux-binary-* \
                     dependency: {image_depends}"
                )
            })?;
            apt.download_and_extract(&binary, &work.path().join("binary"), &root)?;
            find_vmlinuz(&root)?
                .ok_or_else(|| anyhow!("neither {image} nor {binary} contains a vmlinuz"))?
        }
    };
    let label = label_from_release(&release)
        .ok_or_else(|| anyhow!("cannot read major.minor from kernel release {release:?}"))?;

    let bytes = fs::read(&vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    if !is_bzimage(&bytes) {
        bail!("{} is not an x86 bzImage", vmlinuz.display());
    }
    // Write to temporary names and rename, so an interrupted run never leaves
    // a cache entry that looks complete.
    let dest = dir.join("vmlinuz");
    let tmp = dir.join("vmlinuz.tmp");
    fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &dest).with_context(|| format!("renaming {}", tmp.display()))?;
    let tmp = dir.join("release.tmp");
    fs::write(&tmp, format!("{release}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dir.join("release")).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(Kernel {
        label,
        release,
        vmlinuz: dest,
    })
}

/// Finds the kernel image in an extracted package tree, either as
/// `boot/vmlinuz-RELEASE` (classic layout) or `usr/lib/modules/RELEASE/vmlinuz`
/// (split layout), and returns it with its release.
fn find_vmlinuz(root: &Path) -> Result<Option<(PathBuf, String)>> {
    for entry in read_dir_names(&root.join("boot"))? {
        if let Some(release) = entry.strip_prefix("vmlinuz-") {
            return Ok(Some((root.join("boot").join(&entry), release.to_owned())));
        }
    }
    for modules in ["usr/lib/modules", "lib/modules"] {
        let modules = root.join(modules);
        for release in read_dir_names(&modules)? {
            let candidate = modules.join(&release).join("vmlinuz");
            if candidate.is_file() {
                return Ok(Some((candidate, release)));
            }
        }
    }
    Ok(None)
}

/// Sorted entry names of `dir`, or nothing if it does not exist.
fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Removes `.work-PID` directories left by killed runs whose process is gone.
fn remove_stale_work_dirs(dir: &Path) {
    let Ok(names) = read_dir_names(dir) else {
        return;
    };
    for name in names {
        let Some(pid) = name.strip_prefix(".work-") else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(dir.join(&name));
        }
    }
}

/// A scratch directory removed on drop, so downloads and extracted packages
/// never pile up in the cache, whether the fetch succeeds or fails.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(path: PathBuf) -> Result<Self> {
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// apt pointed at a private, single-suite package list, so fetching a
/// kernel never touches (or depends on) the host's own apt state.
struct Apt {
    suite: String,
    options: Vec<String>,
}

impl Apt {
    fn new(work: &Path, suite: &str, mirror: &str) -> Result<Self> {
        if !Path::new(ARCHIVE_KEYRING).is_file() {
            bail!("{ARCHIVE_KEYRING} is missing (install debian-archive-keyring)");
        }
        let sources = work.join("sources.list");
        // arch= and target= keep `update` to the one index we read.
        fs::write(
            &sources,
            format!(
                "deb [signed-by={ARCHIVE_KEYRING} arch=amd64 target=Packages] \
                 {mirror} {suite} main\n"
            ),
        )
        .with_context(|| format!("writing {}", sources.display()))?;
        let lists = work.join("lists");
        let cache = work.join("cache");
        for dir in [
            lists.join("partial"),
            cache.join("archives").join("partial"),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let path = |p: &Path| p.display().to_string();
        let options = [
            ("Dir::Etc::sourcelist", path(&sources)),
            // A directory that does not exist: ignore the host's sources.list.d.
            ("Dir::Etc::sourceparts", "-".to_owned()),
            // Host pins could hide the candidate we want.
            ("Dir::Etc::preferences", path(&work.join("preferences"))),
            ("Dir::Etc::preferencesparts", "-".to_owned()),
            ("Dir::State::Lists", path(&lists)),
            ("Dir::State::status", "/dev/null".to_owned()),
            // Private so we never overwrite the host's pkgcache.bin.
            ("Dir::Cache", path(&cache)),
            ("Dir::Cache::archives", path(&cache.join("archives"))),
            ("APT::Architecture", "amd64".to_owned()),
            ("APT::Architectures", "amd64".to_owned()),
            // Only the current candidate in `apt-cache show`.
            ("APT::Cache::AllVersions", "false".to_owned()),
            // As root apt drops to the `_apt` user, which cannot write into a
            // private download directory under $HOME; it is our own cache, so
            // downloading as ourselves is fine (apt ignores this for non-root).
            ("APT::Sandbox::User", "root".to_owned()),
        ]
        .into_iter()
        .flat_map(|(key, value)| ["-o".to_owned(), format!("{key}={value}")])
        .collect();
        Ok(Self {
            suite: suite.to_owned(),
            options,
        })
    }

    fn update(&self) -> Result<()> {
        // A suite signed by a key newer than the host's keyring fails here;
        // say which package to upgrade instead of leaving only apt's words.
        let keyring_hint = || {
            format!(
                "{ARCHIVE_KEYRING} lacks the key that signs {}: upgrade \
                 debian-archive-keyring (e.g. from the host's *-updates or backports)",
                self.suite
            )
        };
        let out = self.run("apt-get", &["-q", "update"], None).map_err(|e| {
            if format!("{e:#}").contains("NO_PUBKEY") {
                e.context(keyring_hint())
            } else {
                e
            }
        })?;
        // Failed fetches are only warnings to apt-get, but stale or missing
        // lists would resolve the wrong kernel or none at all.
        let problems: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
            .collect();
        if problems.iter().any(|l| {
            l.starts_with("E:") || l.contains("GPG error") || l.contains("Failed to fetch")
        }) {
            let error = anyhow!(
                "apt-get update for {} reported:\n{}",
                self.suite,
                problems.join("\n")
            );
            if out.stderr.contains("NO_PUBKEY") {
                return Err(error.context(keyring_hint()));
            }
            return Err(error);
        }
        for warning in problems {
            eprintln!("xtask: apt ({}): {warning}", self.suite);
        }
        Ok(())
    }

    /// The candidate version's `Depends:` value of `package`.
    fn depends(&self, package: &str) -> Result<String> {
        let out = self.run("apt-cache", &["show", package], None)?;
        depends_field(&out.stdout)
            .ok_or_else(|| anyhow!("apt-cache show {package} ({}) has no Depends", self.suite))
    }

    fn download_and_extract(&self, package: &str, download_dir: &Path, root: &Path) -> Result<()> {
        fs::create_dir_all(download_dir)
            .with_context(|| format!("creating {}", download_dir.display()))?;
        self.run("apt-get", &["-q", "download", package], Some(download_dir))?;
        let prefix = format!("{package}_");
        let deb = read_dir_names(download_dir)?
            .into_iter()
            .find(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            .map(|n| download_dir.join(n))
            .ok_or_else(|| {
                anyhow!(
                    "apt-get download {package} left no .deb in {}",
                    download_dir.display()
                )
            })?;
        run_tool(
            Command::new("dpkg").arg("-x").arg(&deb).arg(root),
            "dpkg -x",
            "install dpkg",
        )?;
        fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
        Ok(())
    }

    fn run(&self, program: &str, args: &[&str], cwd: Option<&Path>) -> Result<ToolOutput> {
        let mut cmd = Command::new(program);
        cmd.args(&self.options).args(args);
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        run_tool(
            &mut cmd,
            &format!("{program} {} ({})", args.join(" "), self.suite),
            "install apt",
        )
    }
}

struct ToolOutput {
    stdout: String,
    stderr: String,
}

/// Runs a command to completion, turning spawn failures and non-zero exits
/// into errors that carry the command's own stderr.
fn run_tool(cmd: &mut Command, what: &str, install_hint: &str) -> Result<ToolOutput> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what} ({install_hint})"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{what} failed with {}:\n{}", out.status, stderr.trim_end());
    }
    Ok(ToolOutput { stdout, stderr })
}

// ---------------------------------------------------------------------------
// Mirror discovery
// ---------------------------------------------------------------------------

/// One `deb`/`deb-src` source, from either file format.
#[derive(Debug, Default, PartialEq, Eq)]
struct SourceEntry {
    types: Vec<String>,
    uris: Vec<String>,
    suites: Vec<String>,
    components: Vec<String>,
    signed_by: String,
    enabled: bool,
}

/// Release names (and aliases) whose presence marks a source as Debian's.
const DEBIAN_SUITES: [&str; 12] = [
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "sid",
    "stable",
    "oldstable",
    "oldoldstable",
    "testing",
    "unstable",
    "experimental",
];

/// Finds the Debian mirror this machine's apt uses, so downloads go wherever
/// the machine is allowed to reach (a local mirror, a proxy, ...).
pub(crate) fn find_mirror() -> Result<String> {
    let etc = Path::new("/etc/apt");
    let parts = etc.join("sources.list.d");
    let part_names = read_dir_names(&parts)?;
    let mut entries = Vec::new();
    let mut read = |path: &Path, parse: fn(&str) -> Vec<SourceEntry>| -> Result<()> {
        match fs::read_to_string(path) {
            Ok(text) => entries.extend(parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        Ok(())
    };
    for name in part_names.iter().filter(|n| n.ends_with(".sources")) {
        read(&parts.join(name), parse_deb822)?;
    }
    read(&etc.join("sources.list"), parse_one_line)?;
    for name in part_names.iter().filter(|n| n.ends_with(".list")) {
        read(&parts.join(name), parse_one_line)?;
    }
    choose_mirror(&entries).ok_or_else(|| {
        anyhow!(
            "no Debian mirror found in /etc/apt/sources.list.d/*.sources or \
             /etc/apt/sources.list: need an enabled `deb` source with component \
             `main` for a Debian suite (e.g. bookworm)"
        )
    })
}

/// Picks the mirror URI: the stanza listing `bookworm` if there is one,
/// otherwise the first Debian `deb` source. Security mirrors are skipped,
/// as they only carry `*-security` suites.
fn choose_mirror(entries: &[SourceEntry]) -> Option<String> {
    let candidates: Vec<(&SourceEntry, &String)> = entries
        .iter()
        .filter(|e| {
            e.enabled
                && e.types.iter().any(|t| t == "deb")
                && e.components.iter().any(|c| c == "main")
                && (e.signed_by.contains("debian-archive")
                    || e.suites.iter().any(|s| {
                        let base = s.split(['-', '/']).next().unwrap_or(s);
                        DEBIAN_SUITES.contains(&base)
                    }))
        })
        .flat_map(|e| e.uris.iter().map(move |u| (e, u)))
        .filter(|(_, uri)| !uri.contains("security") && !uri.starts_with("cdrom:"))
        .collect();
    candidates
        .iter()
        .find(|(e, _)| e.suites.iter().any(|s| s == "bookworm"))
        .or_else(|| candidates.first())
        .map(|(_, uri)| uri.trim_end_matches('/').to_owned())
}

/// Parses deb822 `.sources` text: stanzas separated by blank lines, `#`
/// comment lines, and continuation lines starting with whitespace.
fn parse_deb822(text: &str) -> Vec<SourceEntry> {
    let mut stanzas: Vec<Vec<(String, String)>> = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            current.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    if !current.is_empty() {
        stanzas.push(current);
    }
    stanzas
        .into_iter()
        .map(|fields| {
            let get = |key: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("")
            };
            let words = |key: &str| get(key).split_whitespace().map(str::to_owned).collect();
            SourceEntry {
                types: words("types"),
                uris: words("uris"),
                suites: words("suites"),
                components: words("components"),
                signed_by: get("signed-by").to_owned(),
                enabled: !get("enabled").eq_ignore_ascii_case("no"),
            }
        })
        .collect()
}

/// Parses one-line `sources.list` text: `TYPE [OPTIONS] URI SUITE COMPONENT...`.
fn parse_one_line(text: &str) -> Vec<SourceEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or("").trim();
            let (kind, rest) = line.split_once(char::is_whitespace)?;
            let mut rest = rest.trim_start();
            let mut signed_by = String::new();
            if let Some(after) = rest.strip_prefix('[') {
                let (options, after) = after.split_once(']')?;
                for option in options.split_whitespace() {
                    if let Some(value) = option.strip_prefix("signed-by=") {
                        signed_by = value.to_owned();
                    }
                }
                rest = after;
            }
            let mut words = rest.split_whitespace();
            let uri = words.next()?.to_owned();
            let suite = words.next()?.to_owned();
            Some(SourceEntry {
                types: vec![kind.to_owned()],
                uris: vec![uri],
                suites: vec![suite],
                components: words.map(str::to_owned).collect(),
                signed_by,
                enabled: true,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Package metadata
// ---------------------------------------------------------------------------

/// The `Depends:` value of the first stanza of `apt-cache show` output.
fn depends_field(show: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in show.lines() {
        if line.trim().is_empty() {
            break;
        }
        match &mut value {
            Some(v) if line.starts_with([' ', '\t']) => {
                v.push(' ');
                v.push_str(line.trim());
            }
            Some(_) => break,
            None => {
                if let Some(rest) = line.strip_prefix("Depends:") {
                    value = Some(rest.trim().to_owned());
                }
            }
        }
    }
    value
}

/// The first package named in a `Depends:` value (alternatives included)
/// that starts with `prefix` and is not `exclude`, without version or
/// architecture qualifiers.
fn pick_dependency(depends: &str, prefix: &str, exclude: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .filter_map(|alternative| {
            alternative
                .trim()
                .split(|c: char| c.is_whitespace() || c == '(' || c == ':')
                .next()
        })
        .find(|name| name.starts_with(prefix) && *name != exclude)
        .map(str::to_owned)
}

/// `major.minor` of a kernel release such as `6.12.48+deb13-cloud-amd64`.
fn label_from_release(release: &str) -> Option<String> {
    let mut parts = release.split('.');
    let major = parts.next()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if major.is_empty() || !major.chars().all(|c| c.is_ascii_digit()) || minor.is_empty() {
        return None;
    }
    Some(format!("{major}.{minor}"))
}

/// Whether `image` starts with an x86 boot header (`HdrS` at 0x202), the
/// only format `qemu -kernel` boots directly.
fn is_bzimage(image: &[u8]) -> bool {
    image.get(0x202..0x206) == Some(b"HdrS".as_slice())
}

// ---------------------------------------------------------------------------
// Initramfs
// ---------------------------------------------------------------------------

fn busybox_applets() -> Result<Vec<String>> {
    let out = run_tool(
        Command::new(BUSYBOX).arg("--list"),
        &format!("{BUSYBOX} --list"),
        "install busybox-static",
    )?;
    let applets: Vec<String> = out
        .stdout
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .map(str::to_owned)
        .collect();
    if applets.is_empty() {
        bail!("{BUSYBOX} --list printed no applets");
    }
    Ok(applets)
}

/// Whether an ELF64 file asks for a dynamic loader (has `PT_INTERP`).
/// Non-ELF or truncated input counts as "no".
fn elf_has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).any(|i| {
        let at = phoff + i * usize::from(phentsize);
        elf.get(at..at + 4)
            .is_some_and(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == PT_INTERP)
    })
}

enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// Image contents keyed by path without the leading `/`. A `BTreeMap` keeps
/// each directory before its contents, as the kernel's unpacker needs.
#[derive(Default)]
struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    fn add_dir(&mut self, path: &str) -> Result<()> {
        match self.nodes.get(path) {
            Some(Node::Dir) => Ok(()),
            Some(_) => bail!("initramfs path /{path} is both a directory and a file"),
            None => {
                self.nodes.insert(path.to_owned(), Node::Dir);
                Ok(())
            }
        }
    }

    /// Inserts `node`, creating missing parents; replaces a non-directory.
    fn insert(&mut self, path: &str, node: Node) -> Result<()> {
        let mut parent = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for component in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            self.add_dir(&parent)?;
        }
        if matches!(self.nodes.get(path), Some(Node::Dir)) {
            bail!("initramfs path /{path} is already a directory");
        }
        self.nodes.insert(path.to_owned(), node);
        Ok(())
    }
}

/// Turns a destination like `/usr/bin/x` into `usr/bin/x`, rejecting paths
/// that could escape the image or name its root.
fn normalize_dest(dest: &str) -> Result<String> {
    let parts: Vec<&str> = dest.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
        bail!("invalid initramfs destination {dest:?}");
    }
    Ok(parts.join("/"))
}

/// Writes `nodes` as a newc ("070701") cpio archive owned by root, with
/// mtime 0 so identical inputs give identical images.
fn write_newc(out: &mut impl Write, nodes: &BTreeMap<String, Node>) -> std::io::Result<()> {
    for (ino, (path, node)) in (1u32..).zip(nodes) {
        let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match node {
            Node::Dir => (0o040_755, &[], (0, 0)),
            Node::File(data) => (0o100_755, data, (0, 0)),
            Node::Symlink(target) => (0o120_777, target.as_bytes(), (0, 0)),
            Node::CharDev { major, minor } => (0o020_600, &[], (*major, *minor)),
        };
        let nlink = if matches!(node, Node::Dir) { 2 } else { 1 };
        newc_entry(out, ino, mode, nlink, rdev, path, data)?;
    }
    newc_entry(out, 0, 0, 1, (0, 0), "TRAILER!!!", &[])
}

fn newc_entry(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let too_big = || std::io::Error::other(format!("{name} is too large for a newc archive"));
    let filesize = u32::try_from(data.len()).map_err(|_| too_big())?;
    let namesize = u32::try_from(name.len() + 1).map_err(|_| too_big())?;
    let fields = [
        ino, mode, 0, 0, nlink, 0, filesize, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    let mut header = String::with_capacity(110);
    header.push_str("070701");
    for field in fields {
        header.push_str(&format!("{field:08X}"));
    }
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    out.write_all(&[0; 3][..pad4(header.len() + name.len() + 1)])?;
    out.write_all(data)?;
    out.write_all(&[0; 3][..pad4(data.len())])
}

/// Bytes needed to round `len` up to a multiple of four.
fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

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

    const DEB822: &str = "\
Types: deb
# a comment inside the stanza
URIs: file:///srv/mirror/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: file:///srv/mirror/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    #[test]
    fn deb822_stanzas_are_parsed() {
        let entries = parse_deb822(DEB822);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].types, ["deb"]);
        assert_eq!(entries[0].uris, ["file:///srv/mirror/debian/"]);
        assert_eq!(entries[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(entries[0].components, ["main"]);
        assert!(entries[0].enabled);
        assert_eq!(entries[1].suites, ["bookworm-security"]);
    }

    #[test]
    fn deb822_mirror_prefers_bookworm_stanza() {
        let entries = parse_deb822(DEB822);
        assert_eq!(
            choose_mirror(&entries).as_deref(),
            Some("file:///srv/mirror/debian")
        );
    }

    #[test]
    fn deb822_mirror_skips_security_disabled_and_foreign_sources() {
        let text = "\
Types: deb
URIs: file:///srv/debian-security
Suites: trixie-security
Components: main

Types: deb
URIs: file:///srv/disabled/debian
Suites: trixie
Components: main
Enabled: no

Types: deb
URIs: file:///srv/vendor/linux/debian
Suites: trixie
Components: stable

Types: deb-src deb
URIs:
 file:///srv/mirror/debian
Suites: trixie trixie-updates
Components: main contrib
";
        let entries = parse_deb822(text);
        assert_eq!(entries.len(), 4);
        assert!(!entries[1].enabled);
        assert_eq!(entries[3].uris, ["file:///srv/mirror/debian"]);
        assert_eq!(
            choose_mirror(&entries).as_deref(),
            Some("file:///srv/mirror/debian")
        );
    }

    #[test]
    fn one_line_sources_are_parsed() {
        let text = "\
# deb file:///srv/commented/debian bookworm main
deb-src file:///srv/src/debian bookworm main
deb [ arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg ] file:///srv/debian-security bookworm-security main
deb [arch=amd64] file:/opt/debian bookworm main contrib # trailing comment
";
        let entries = parse_one_line(text);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].types, ["deb-src"]);
        assert_eq!(
            entries[1].signed_by,
            "/usr/share/keyrings/debian-archive-keyring.gpg"
        );
        assert_eq!(entries[1].uris, ["file:///srv/debian-security"]);
        assert_eq!(entries[2].uris, ["file:/opt/debian"]);
        assert_eq!(entries[2].suites, ["bookworm"]);
        assert_eq!(entries[2].components, ["main", "contrib"]);
        assert_eq!(choose_mirror(&entries).as_deref(), Some("file:/opt/debian"));
    }

    #[test]
    fn no_debian_source_means_no_mirror() {
        let entries = parse_one_line("deb file:///srv/ubuntu jammy main\n");
        assert_eq!(choose_mirror(&entries), None);
        assert_eq!(choose_mirror(&parse_deb822("")), None);
    }

    #[test]
    fn depends_field_reads_first_stanza() {
        let show = "\
Package: linux-image-cloud-amd64
Version: 7.2.13-1
Depends: linux-base-cloud-amd64 (= 7.2.13-1),
 linux-image-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)
Description: Linux for x86-64 cloud

Package: linux-image-cloud-amd64
Version: 7.1.0-1
Depends: linux-image-7.1.0-1-cloud-amd64 (= 7.1.0-1)
";
        let depends = depends_field(show);
        assert_eq!(
            depends.as_deref(),
            Some(
                "linux-base-cloud-amd64 (= 7.2.13-1), \
                 linux-image-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)"
            )
        );
        assert_eq!(depends_field("Package: x\nVersion: 1\n"), None);
    }

    #[test]
    fn meta_package_resolves_to_concrete_image() {
        let bookworm = "linux-image-6.1.0-41-cloud-amd64 (= 6.1.158-1)";
        assert_eq!(
            pick_dependency(bookworm, "linux-image-", META_PACKAGE).as_deref(),
            Some("linux-image-6.1.0-41-cloud-amd64")
        );
        let sid = "linux-base-cloud-amd64 (= 7.2.13-1), \
                   linux-image-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)";
        assert_eq!(
            pick_dependency(sid, "linux-image-", META_PACKAGE).as_deref(),
            Some("linux-image-7.2.13+deb14-cloud-amd64")
        );
        assert_eq!(pick_dependency(sid, "linux-binary-", ""), None);
    }

    #[test]
    fn split_image_resolves_to_binary_package() {
        let depends = "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
                       linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), \
                       linux-binary-7.2.13+deb14-cloud-amd64:amd64 (= 7.2.13-1), \
                       linux-modules-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)";
        assert_eq!(
            pick_dependency(depends, "linux-binary-", "").as_deref(),
            Some("linux-binary-7.2.13+deb14-cloud-amd64")
        );
    }

    #[test]
    fn labels_are_major_minor() {
        assert_eq!(
            label_from_release("6.1.0-41-cloud-amd64").as_deref(),
            Some("6.1")
        );
        assert_eq!(
            label_from_release("6.12.48+deb13-cloud-amd64").as_deref(),
            Some("6.12")
        );
        assert_eq!(
            label_from_release("7.2.13+deb14-cloud-amd64").as_deref(),
            Some("7.2")
        );
        assert_eq!(label_from_release("cloud"), None);
        assert_eq!(label_from_release(""), None);
    }

    #[test]
    fn newc_entries_are_padded_and_well_formed() {
        let mut tree = Tree::default();
        tree.insert("usr/bin/tool", Node::File(b"hello".to_vec()))
            .expect("insert");
        let mut out = Vec::new();
        write_newc(&mut out, &tree.nodes).expect("write");
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        // Parents come first, then the file, then the trailer.
        let usr = text.find("usr\0").expect("usr");
        let bin = text.find("usr/bin\0").expect("usr/bin");
        let tool = text.find("usr/bin/tool\0").expect("tool");
        let trailer = text.find("TRAILER!!!\0").expect("trailer");
        assert!(usr < bin && bin < tool && tool < trailer);
        // The file's header: mode 0100755, size 5, name size 13.
        let header = &text[tool - 110..tool];
        assert!(header.starts_with("070701"));
        assert_eq!(&header[14..22], "000081ED");
        assert_eq!(&header[54..62], "00000005");
        assert_eq!(&header[94..102], "0000000D");
        // Name padded to 4 bytes, then the data.
        assert_eq!(&text[tool + 12..tool + 14], "\0\0");
        assert_eq!(&text[tool + 14..tool + 19], "hello");
    }

    #[test]
    fn bad_destinations_are_rejected() {
        assert_eq!(normalize_dest("/usr//bin/x").expect("valid"), "usr/bin/x");
        assert!(normalize_dest("/").is_err());
        assert!(normalize_dest("/../etc/passwd").is_err());
    }

    #[test]
    fn bzimage_magic_is_checked() {
        let mut image = vec![0u8; 0x300];
        assert!(!is_bzimage(&image));
        image[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(is_bzimage(&image));
        assert!(!is_bzimage(b"short"));
    }
}
