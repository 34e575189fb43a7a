//! The Debian guest with systemd as PID 1, for the scenarios of kind
//! `systemd` and for `cargo xtask bench`.
//!
//! A Debian bookworm system is built once with `debootstrap` (from the
//! mirror this machine's apt already uses) and kept, as an ext4 image, in
//! `$XDG_CACHE_HOME/guard/systemd-rootfs` (or `~/.cache/guard/...`). Each
//! run copies that image once (sparsely), writes its payload into the copy
//! with `debugfs` (no mount, no root needed), and boots every kernel from
//! the copy with `snapshot=on`, so the guest's writes never reach it. The
//! root disk is the only disk: a second one would race the first for the
//! name `nvme0n1`.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::Kernel;

/// The guest's Debian release: systemd 252.
const SUITE: &str = "bookworm";
/// Packages on top of `minbase`: systemd as PID 1, D-Bus (systemd expects
/// it), and the peers `cargo xtask bench` measures the guard against
/// (masked for the scenarios, started one at a time by the bench).
const INCLUDE: [&str; 6] = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "systemd-oomd",
    "earlyoom",
    "oomd",
];
const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const DEBOOTSTRAP: &str = "debootstrap";
/// Size of the sparse ext4 image; the system takes under a fifth of it.
const IMAGE_BYTES: u64 = 1 << 30;

/// Units no test wants: timers that would start apt in the middle of a
/// measurement, gettys waiting for devices that no udev announces, and the
/// other OOM daemons in the image (they are the bench's peers).
pub(crate) const MASKED: [&str; 9] = [
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "getty.target",
    "serial-getty@ttyS0.service",
    "systemd-timesyncd.service",
    "earlyoom.service",
    "oomd.service",
    "systemd-oomd.service",
    "systemd-oomd.socket",
];

// ---------------------------------------------------------------------------
// The cached base image
// ---------------------------------------------------------------------------

pub(crate) fn cache_dir() -> Result<PathBuf> {
    super::cache_dir("systemd-rootfs")
}

/// What the cached rootfs was built from; a change rebuilds it.
fn recipe() -> String {
    format!(
        "debootstrap --variant=minbase --include={} {SUITE}\n",
        INCLUDE.join(",")
    )
}

/// Returns the cached `base.img`, building what is missing: the rootfs
/// directory with debootstrap (minutes, root only), then the image from it
/// (a second). `rootfs.recipe` says what both were built from.
pub(crate) fn ensure_base_image(cache: &Path) -> Result<PathBuf> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let _lock = lock(&cache.join("lock"))?;
    let rootfs = cache.join("rootfs");
    let stamp = cache.join("rootfs.recipe");
    let image = cache.join("base.img");
    let recipe = recipe();
    let current = fs::read_to_string(&stamp).is_ok_and(|s| s == recipe);
    if current && image.is_file() {
        eprintln!(
            "xtask: using the cached Debian {SUITE} systemd image {}",
            image.display()
        );
        return Ok(image);
    }
    if !current || !rootfs.join("usr/lib/systemd/systemd").is_file() {
        let started = Instant::now();
        let _ = fs::remove_file(&stamp);
        let _ = fs::remove_file(&image);
        build_rootfs(cache, &rootfs)?;
        fs::write(&stamp, &recipe).with_context(|| format!("writing {}", stamp.display()))?;
        eprintln!(
            "xtask: Debian {SUITE} rootfs built in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    let started = Instant::now();
    eprintln!("xtask: making the ext4 image {} ...", image.display());
    let tmp = cache.join("base.img.tmp");
    let _ = fs::remove_file(&tmp);
    fs::File::create(&tmp)
        .and_then(|f| f.set_len(IMAGE_BYTES))
        .with_context(|| format!("creating {}", tmp.display()))?;
    run_quiet(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "guard-root", "-d"])
            .arg(&rootfs)
            .arg(&tmp),
        "mkfs.ext4 (install e2fsprogs)",
    )?;
    fs::rename(&tmp, &image).with_context(|| format!("renaming {}", tmp.display()))?;
    eprintln!(
        "xtask: image made in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(image)
}

fn build_rootfs(cache: &Path, rootfs: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        bail!(
            "the systemd VM test needs a Debian {SUITE} rootfs, built once with debootstrap, \
             which must run as root: run this once as root (the Debian package `{DEBOOTSTRAP}` \
             is installed then if missing)"
        );
    }
    ensure_debootstrap()?;
    if !Path::new(ARCHIVE_KEYRING).is_file() {
        bail!("{ARCHIVE_KEYRING} is missing (install debian-archive-keyring)");
    }
    let mirror = super::find_mirror()?;
    let tmp = cache.join("rootfs.tmp");
    remove_tree(&tmp)?;
    remove_tree(rootfs)?;
    eprintln!(
        "xtask: building a Debian {SUITE} rootfs with systemd for the systemd VM test \
         (debootstrap, a few minutes, once; cached in {}) ...",
        rootfs.display()
    );
    let log_path = cache.join("debootstrap.log");
    let result = debootstrap(&tmp, &mirror, &log_path);
    if let Err(e) = result {
        let _ = remove_tree(&tmp);
        return Err(e);
    }
    // The downloaded packages and indexes are a third of the tree and
    // nothing in the test needs them.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let dir = tmp.join(dir);
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if path.is_file() {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    fs::rename(&tmp, rootfs).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}

fn ensure_debootstrap() -> Result<()> {
    let present = Command::new(DEBOOTSTRAP)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "{DEBOOTSTRAP} is missing and this machine has no apt-get: install the \
             `{DEBOOTSTRAP}` package (it builds the Debian rootfs of the systemd VM test)"
        );
    }
    eprintln!("xtask: installing {DEBOOTSTRAP} (builds the Debian rootfs of the systemd VM test)");
    for args in [
        &["update", "-q"][..],
        &[
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            DEBOOTSTRAP,
        ][..],
    ] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::io::stderr())
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!(
                "apt-get {} failed ({status}): install the `{DEBOOTSTRAP}` package",
                args.join(" ")
            );
        }
    }
    Ok(())
}

/// Runs debootstrap into `target`, keeping its whole output in `log` and
/// printing the first line of each stage (Retrieving, Extracting,
/// Configuring ...) and every warning or error.
fn debootstrap(target: &Path, mirror: &str, log: &Path) -> Result<()> {
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let mut child = Command::new(DEBOOTSTRAP)
        .arg("--variant=minbase")
        .arg(format!("--include={}", INCLUDE.join(",")))
        .arg(format!("--keyring={ARCHIVE_KEYRING}"))
        .arg(SUITE)
        .arg(target)
        .arg(mirror)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().context("duplicating a pipe")?)
        .stderr(writer)
        .spawn()
        .with_context(|| format!("starting {DEBOOTSTRAP}"))?;
    let mut file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut tail: Vec<String> = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    let started = Instant::now();
    for line in BufReader::new(reader).lines() {
        let line = line.context("reading debootstrap's output")?;
        let _ = writeln!(file, "{line}");
        let stage = debootstrap_stage(&line);
        let new_stage = stage.is_some_and(|s| !stages.iter().any(|seen| seen == s));
        if new_stage || line.starts_with("E:") || line.starts_with("W:") {
            eprintln!(
                "xtask:   [{:>3.0} s] debootstrap: {line}",
                started.elapsed().as_secs_f64()
            );
        }
        if let Some(s) = stage.filter(|_| new_stage) {
            stages.push(s.to_owned());
        }
        tail.push(line);
        if tail.len() > 30 {
            tail.remove(0);
        }
    }
    let status = child.wait().context("waiting for debootstrap")?;
    if !status.success() {
        bail!(
            "debootstrap failed with {status} (whole output in {}); last lines:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    Ok(())
}

/// The stage a debootstrap info line belongs to: its first word.
fn debootstrap_stage(line: &str) -> Option<&str> {
    line.strip_prefix("I: ")?.split_whitespace().next()
}

/// Removes a tree that debootstrap may have left file systems mounted in
/// (proc, sys, devpts): those are unmounted first, so nothing outside the
/// tree is ever deleted.
fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut under = mounts_under(&mountinfo, dir);
    // Deepest first.
    under.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for mount in under {
        run_quiet(
            Command::new("umount").arg("-l").arg(&mount),
            "umount (install mount)",
        )?;
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Mount points in `mountinfo` at or below `dir`.
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = bytes
                .get(i + 1..i + 4)
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An exclusive lock on `path`, released when the file is dropped.
fn lock(path: &Path) -> Result<fs::File> {
    use std::os::fd::AsRawFd;
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on a valid, open file descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("locking {}", path.display()));
    }
    Ok(file)
}

// ---------------------------------------------------------------------------
// The per-run image
// ---------------------------------------------------------------------------

/// A host file and where it goes in the guest.
pub(crate) struct Payload {
    pub files: Vec<(PathBuf, String)>,
    pub dirs: Vec<String>,
    pub symlinks: Vec<(String, String)>,
}

/// Writes into `dir` what every run puts in the image and lists where each
/// goes: the static `guard` and `guard-scenario`, the guard's unit file
/// `unit` (deploy/guard.service), the host name, the masked units, and the
/// run's own oneshot unit `runner` (name, text), enabled, which does the
/// run's work and powers the guest off.
pub(crate) fn stage_payload(
    dir: &Path,
    guard: &Path,
    scenario: &Path,
    unit: &str,
    runner: (&str, &str),
) -> Result<Payload> {
    for bin in [guard, scenario] {
        if !bin.is_file() {
            bail!("{} does not exist: build it first", bin.display());
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let system = "/etc/systemd/system";
    let (runner_name, runner_text) = runner;
    let mut files = vec![
        (guard.to_owned(), "/usr/local/sbin/guard".to_owned()),
        (
            scenario.to_owned(),
            "/usr/local/bin/guard-scenario".to_owned(),
        ),
    ];
    for (name, dest, text) in [
        ("guard.service", format!("{system}/guard.service"), unit),
        (runner_name, format!("{system}/{runner_name}"), runner_text),
        ("hostname", "/etc/hostname".to_owned(), "guard-vm\n"),
    ] {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        files.push((path, dest));
    }
    let mut symlinks = vec![(
        format!("{system}/multi-user.target.wants/{runner_name}"),
        format!("{system}/{runner_name}"),
    )];
    for unit in MASKED {
        symlinks.push((format!("{system}/{unit}"), "/dev/null".to_owned()));
    }
    Ok(Payload {
        files,
        dirs: vec![
            format!("{system}/guard.service.d"),
            format!("{system}/multi-user.target.wants"),
        ],
        symlinks,
    })
}

/// Copies `base` to `out` (sparse) and writes the payload into the copy.
pub(crate) fn make_run_image(base: &Path, out: &Path, payload: &Payload) -> Result<()> {
    run_quiet(
        Command::new("cp").arg("--sparse=always").arg(base).arg(out),
        "cp (install coreutils)",
    )?;
    // debugfs splits its command lines at white space.
    let word = |path: &str| {
        if path.is_empty() || path.contains(char::is_whitespace) {
            bail!("debugfs cannot take the path {path:?}: it contains white space");
        }
        Ok(path.to_owned())
    };
    let mut script = String::new();
    for dir in &payload.dirs {
        script.push_str(&format!("mkdir {}\n", word(dir)?));
    }
    for (src, dest) in &payload.files {
        let (src, dest) = (word(&src.to_string_lossy())?, word(dest)?);
        // `write` refuses to replace a file.
        script.push_str(&format!("rm {dest}\nwrite {src} {dest}\n"));
    }
    for (link, target) in &payload.symlinks {
        let (link, target) = (word(link)?, word(target)?);
        script.push_str(&format!("rm {link}\nsymlink {link} {target}\n"));
    }
    let commands = out.with_extension("debugfs");
    fs::write(&commands, &script).with_context(|| format!("writing {}", commands.display()))?;
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let mut child = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&commands)
        .arg(out)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().context("duplicating a pipe")?)
        .stderr(writer)
        .spawn()
        .context("starting debugfs (install e2fsprogs)")?;
    let mut output = String::new();
    let mut reader = reader;
    reader
        .read_to_string(&mut output)
        .context("reading debugfs's output")?;
    let status = child.wait().context("waiting for debugfs")?;
    let errors = debugfs_errors(&output);
    if !status.success() || !errors.is_empty() {
        bail!(
            "debugfs could not write the payload into {} ({status}):\n{}",
            out.display(),
            errors.join("\n")
        );
    }
    Ok(())
}

/// Errors in the merged output of `debugfs -f`, which exits 0 whatever
/// happens. Each command is echoed as `debugfs: CMD`; what follows it up to
/// the next echo is its output. Expected complaints are not errors: `mkdir`
/// of a directory that exists, `rm` of a file that does not.
fn debugfs_errors(output: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let mut command = "";
    for line in output.lines() {
        if let Some(c) = line.strip_prefix("debugfs: ") {
            command = c;
            continue;
        }
        let verb = command.split(' ').next().unwrap_or("");
        let expected = line.trim().is_empty()
            || line.starts_with("debugfs ") // the version banner
            || line.starts_with("Allocated inode:")
            || (verb == "mkdir" && line.contains("already exists"))
            || (verb == "rm" && line.contains("File not found"));
        if !expected {
            errors.push(format!("{command}: {line}"));
        }
    }
    errors
}

/// The per-call directory in the cache: the staged payload and the image
/// copy. Removed on drop; ones left by killed runs are removed next time.
pub(crate) struct RunDir(pub PathBuf);

impl RunDir {
    pub(crate) fn create(path: PathBuf) -> Result<Self> {
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn remove_stale_runs(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("run-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

// ---------------------------------------------------------------------------
// QEMU
// ---------------------------------------------------------------------------

/// Boots `kernel` with `image` as the NVMe root disk and `mem_mib` of RAM (copy-on-write, so the
/// image is never changed) and `extra_append` on the kernel command line;
/// returns the console, also written to `log`.
/// A guest kernel fault ends the run early with an error starting with
/// [`super::GUEST_FAULT`]; the timeout kills QEMU and fails the run.
pub(crate) fn boot(
    kernel: &Kernel,
    image: &Path,
    mem_mib: u32,
    extra_append: &str,
    log: &Path,
    timeout: Duration,
) -> Result<String> {
    let mut drive = std::ffi::OsString::from("file=");
    drive.push(image);
    drive.push(",if=none,id=d0,format=raw,snapshot=on");
    super::boot(
        &kernel.vmlinuz,
        mem_mib,
        &[
            "-drive".into(),
            drive,
            "-device".into(),
            "nvme,serial=x,drive=d0".into(),
        ],
        &format!("console=ttyS0 root=/dev/nvme0n1 rw quiet panic=-1 {extra_append}"),
        timeout,
        log,
    )
}

/// Runs a command, failing with its stderr if it fails.
fn run_quiet(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debugfs_output_is_checked_per_command() {
        let output = "\
debugfs 1.47.0 (5-Feb-2023)
debugfs: mkdir /etc/systemd/system/multi-user.target.wants
ext2fs_mkdir: Ext2 directory already exists while creating directory \"multi-user.target.wants\"
mkdir: Ext2 directory already exists 
debugfs: rm /usr/local/sbin/guard
rm: File not found by ext2_lookup while trying to resolve filename
debugfs: write /tmp/guard /usr/local/sbin/guard
Allocated inode: 17
debugfs: symlink /etc/systemd/system/getty.target /dev/null
";
        assert!(
            debugfs_errors(output).is_empty(),
            "{:?}",
            debugfs_errors(output)
        );
        let bad = "\
debugfs: write /tmp/guard /usr/local/sbin/guard
write: Could not allocate block in ext2 filesystem while writing file \"guard\"
debugfs: mkdir /nope/x
mkdir: File not found by ext2_lookup 
";
        let errors = debugfs_errors(bad);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("write /tmp/guard /usr/local/sbin/guard: write: Could not"));
        assert!(errors[1].starts_with("mkdir /nope/x: "));
    }

    #[test]
    fn debootstrap_stages_are_first_words() {
        assert_eq!(
            debootstrap_stage("I: Retrieving Packages "),
            Some("Retrieving")
        );
        assert_eq!(
            debootstrap_stage("I: Configuring systemd..."),
            Some("Configuring")
        );
        assert_eq!(debootstrap_stage("W: something"), None);
        assert_eq!(debootstrap_stage("dpkg: warning"), None);
    }

    #[test]
    fn mounts_under_a_tree_are_found_and_unescaped() {
        let mountinfo = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
60 22 0:5 / /root/.cache/guard/systemd-rootfs/rootfs.tmp/proc rw - proc proc rw
61 22 0:6 / /root/.cache/guard/systemd-rootfs/rootfs.tmp/dev/pts rw - devpts devpts rw
62 22 0:7 / /root/.cache/guard/systemd-rootfs/rootfs.tmp2/sys rw - sysfs sys rw
63 22 0:8 / /tmp/a\\040b/proc rw - proc proc rw
";
        let dir = Path::new("/root/.cache/guard/systemd-rootfs/rootfs.tmp");
        assert_eq!(
            mounts_under(mountinfo, dir),
            [dir.join("proc"), dir.join("dev/pts")]
        );
        assert_eq!(
            mounts_under(mountinfo, Path::new("/tmp/a b")),
            [PathBuf::from("/tmp/a b/proc")]
        );
        assert_eq!(unescape_mountinfo("a\\011b\\134"), "a\tb\\");
    }

    #[test]
    fn the_payload_carries_the_binaries_the_unit_and_the_runner_enabled() {
        let stage = std::env::temp_dir().join(format!("guard-rootfs-{}", std::process::id()));
        let bin = stage.join("bin");
        fs::create_dir_all(&bin).expect("mkdir");
        for name in ["guard", "guard-scenario"] {
            fs::write(bin.join(name), b"x").expect("write");
        }
        let runner = ("run-me.service", "[Service]\nExecStart=/bin/true\n");
        let payload = stage_payload(
            &stage.join("s"),
            &bin.join("guard"),
            &bin.join("guard-scenario"),
            "[Unit]\n",
            runner,
        )
        .expect("stage");
        let staged = fs::read_to_string(stage.join("s/run-me.service")).expect("runner");
        let missing = stage_payload(
            &stage.join("t"),
            &bin.join("nope"),
            &bin.join("guard-scenario"),
            "",
            runner,
        );
        let _ = fs::remove_dir_all(&stage);
        assert_eq!(staged, runner.1);
        let dests: Vec<&str> = payload.files.iter().map(|(_, d)| d.as_str()).collect();
        for dest in [
            "/usr/local/sbin/guard",
            "/usr/local/bin/guard-scenario",
            "/etc/systemd/system/guard.service",
            "/etc/systemd/system/run-me.service",
        ] {
            assert!(dests.contains(&dest), "{dest} not in {dests:?}");
        }
        assert!(payload.symlinks.contains(&(
            "/etc/systemd/system/multi-user.target.wants/run-me.service".to_owned(),
            "/etc/systemd/system/run-me.service".to_owned()
        )));
        assert!(
            payload
                .symlinks
                .iter()
                .any(|(l, t)| l.ends_with("/earlyoom.service") && t == "/dev/null")
        );
        let e = format!("{:#}", missing.err().expect("a missing binary fails"));
        assert!(e.ends_with("nope does not exist: build it first"), "{e}");
    }
}
