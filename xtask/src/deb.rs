//! `cargo xtask deb`: the Debian package, built with `dpkg-deb`.
//!
//! The package is laid out here as a directory tree and handed to
//! `dpkg-deb --build --root-owner-group`: dpkg is on every Debian machine
//! that could build or install it, the tree is small and fixed, and the
//! binary is static, so nothing that debhelper or cargo-deb computes
//! (shared-library dependencies, a source package) applies. What the
//! maintainer scripts do is written out below, in full, where it can be
//! read and tested.

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// Where the package puts the daemon; the unit's `ExecStart=` is rewritten
/// from the source install's /usr/local/sbin to it.
pub const BIN: &str = "/usr/sbin/guard";
const SOURCE_BIN: &str = "/usr/local/sbin/guard";
/// The policy file, a conffile: an upgrade keeps an admin's changes.
pub const CONFFILE: &str = "/etc/guard/guard.toml";

/// The package's version: the workspace's, with a Debian revision.
pub fn version(revision: &str) -> String {
    format!("{}-{revision}", env!("CARGO_PKG_VERSION"))
}

/// Debian's name for the architecture of a Rust target triple.
pub fn debian_arch(triple: &str) -> Result<&'static str> {
    let arch = triple.split('-').next().unwrap_or_default();
    Ok(match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "riscv64gc" => "riscv64",
        "powerpc64le" => "ppc64el",
        "s390x" => "s390x",
        other => bail!("no Debian architecture known for {other} (target {triple})"),
    })
}

/// What goes in the package besides the binary, already rendered: file
/// contents by their installed path, with their mode.
pub struct Contents {
    pub files: Vec<(String, Vec<u8>, u32)>,
}

/// Everything the package installs, from the built binary `guard` and the
/// repository's deploy/ directory.
pub fn contents(guard: &Path, deploy: &Path) -> Result<Contents> {
    let run = |args: &[&str]| crate::install::output_of(guard, args);
    let read = |name: &str| -> Result<Vec<u8>> {
        let path = deploy.join(name);
        fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let unit = String::from_utf8(read("guard.service")?).context("guard.service is not UTF-8")?;
    let doc = "/usr/share/doc/guard";
    let files = vec![
        (
            BIN.to_owned(),
            fs::read(guard).with_context(|| format!("reading {}", guard.display()))?,
            0o755,
        ),
        (
            "/usr/lib/systemd/system/guard.service".to_owned(),
            packaged_unit(&unit)?.into_bytes(),
            0o644,
        ),
        (CONFFILE.to_owned(), run(&["config", "default"])?, 0o644),
        (
            "/usr/share/man/man8/guard.8.gz".to_owned(),
            gzip(&run(&["man"])?)?,
            0o644,
        ),
        (
            "/usr/share/bash-completion/completions/guard".to_owned(),
            run(&["completions", "bash"])?,
            0o644,
        ),
        (
            "/usr/share/zsh/vendor-completions/_guard".to_owned(),
            run(&["completions", "zsh"])?,
            0o644,
        ),
        (
            "/usr/share/fish/vendor_completions.d/guard.fish".to_owned(),
            run(&["completions", "fish"])?,
            0o644,
        ),
        (
            format!("{doc}/guard-alerts.yml"),
            read("guard-alerts.yml")?,
            0o644,
        ),
        (
            format!("{doc}/README.systemd.md"),
            read("README.md")?,
            0o644,
        ),
        (
            format!("{doc}/copyright"),
            COPYRIGHT.as_bytes().to_vec(),
            0o644,
        ),
    ];
    Ok(Contents { files })
}

/// deploy/guard.service as the package installs it: the binary's path is
/// the package's.
pub fn packaged_unit(unit: &str) -> Result<String> {
    if !unit.contains(&format!("ExecStart={SOURCE_BIN} ")) {
        bail!("deploy/guard.service has no `ExecStart={SOURCE_BIN} ...` line to point at {BIN}");
    }
    // The source install's header says where to copy the file; the
    // package's says how to change it.
    let body = unit
        .split_once("\n\n")
        .filter(|(head, _)| head.lines().all(|l| l.starts_with('#')))
        .map_or(unit, |(_, body)| body);
    Ok(format!(
        "# guard: kills the process that keeps a memory-limited cgroup stalled on\n\
         # memory.high. Installed by the guard Debian package: change it with a\n\
         # drop-in (systemctl edit guard), not by editing this file.\n\n{}",
        body.replace(SOURCE_BIN, BIN)
    ))
}

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: guard

Files: *
License: MIT or Apache-2.0
 On Debian systems the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
";

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    // -n: no name or time stamp, so the same page gives the same bytes.
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting gzip (install gzip)")?;
    let mut stdin = child.stdin.take().context("gzip's stdin")?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().context("waiting for gzip")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the thread feeding gzip panicked"))?
        .context("writing to gzip")?;
    if !out.status.success() {
        bail!("gzip failed: {}", out.status);
    }
    Ok(out.stdout)
}

/// The control file. The binary is static; the scripts need `groupadd` and
/// `groupdel` (passwd, not essential) besides what every Debian system has
/// (sh, getent, and systemctl when systemd runs).
pub fn control(version: &str, arch: &str, installed_kib: u64) -> String {
    format!(
        "Package: guard\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: guard developers <root@localhost>\n\
         Installed-Size: {installed_kib}\n\
         Depends: passwd\n\
         Section: admin\n\
         Priority: optional\n\
         Description: kills the process that keeps a cgroup stalled on memory.high\n \
         guard watches the kernel's memory-cgroup reclaim through eBPF. When a\n \
         cgroup sits between memory.high and memory.max and its tasks are\n \
         throttled without reclaim progress (a livelock no PSI- or free-RAM-based\n \
         killer sees), guard confirms the stall and kills the process driving it\n \
         within milliseconds, sparing protected programs.\n \
         .\n \
         The package installs the daemon as guard.service, enabled and started,\n \
         with its policy in /etc/guard/guard.toml.\n"
    )
}

/// postinst: group `guard` (readers of the event socket), then the unit:
/// enabled and started on a first install, restarted on an upgrade when it
/// runs or is enabled. A daemon that cannot start (no cgroup v2, no BTF)
/// leaves the package installed and says where to look.
pub const POSTINST: &str = r#"#!/bin/sh
set -e

if [ "$1" = configure ]; then
    if ! getent group guard >/dev/null; then
        groupadd --system guard
    fi
    if [ -e /etc/systemd/system/guard.service ] && [ ! -L /etc/systemd/system/guard.service ]; then
        echo "guard: /etc/systemd/system/guard.service (a source install) overrides this" \
            "package's unit and runs its own binary; remove it and /usr/local/sbin/guard," \
            "then: systemctl daemon-reload && systemctl restart guard" >&2
    fi
    wants=/etc/systemd/system/multi-user.target.wants/guard.service
    # A first install, or one after `apt-get remove` (which leaves the
    # enablement link): enable. An upgrade keeps the admin's choice.
    if [ -z "$2" ] || [ -L "$wants" ]; then
        systemctl enable guard.service >/dev/null 2>&1 ||
            echo "guard: could not enable guard.service" >&2
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
        # Enabled, or running though disabled: (re)started on this binary.
        if systemctl is-enabled --quiet guard.service ||
            systemctl is-active --quiet guard.service; then
            if ! systemctl restart guard.service; then
                echo "guard: guard.service did not start; read why with" \
                    "journalctl -u guard and check the machine with guard status" >&2
            fi
        fi
    fi
fi
exit 0
"#;

/// prerm: the daemon stops before its files go (not on an upgrade, whose
/// postinst restarts it on the new binary).
pub const PRERM: &str = r#"#!/bin/sh
set -e

if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop guard.service || true
fi
exit 0
"#;

/// postrm: after a purge nothing of guard is left: its enablement links,
/// its state (the event log), its runtime directory, its policy directory
/// and its group.
pub const POSTRM: &str = r#"#!/bin/sh
set -e

if [ "$1" = purge ]; then
    rm -f /etc/systemd/system/multi-user.target.wants/guard.service
    # The admin's drop-ins (systemctl edit guard) and a mask go too.
    rm -rf /etc/systemd/system/guard.service.d /run/systemd/system/guard.service.d
    if [ "$(readlink /etc/systemd/system/guard.service 2>/dev/null)" = /dev/null ]; then
        rm -f /etc/systemd/system/guard.service
    fi
    rm -rf /var/lib/guard /run/guard /etc/guard
    if getent group guard >/dev/null; then
        groupdel guard || echo "guard: could not remove group guard" >&2
    fi
fi
if [ "$1" = remove ] || [ "$1" = purge ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
        systemctl reset-failed guard.service >/dev/null 2>&1 || true
    fi
fi
exit 0
"#;

/// Lays out the package tree under `tree` and builds `out_dir/NAME.deb`;
/// returns its path.
pub fn build(
    contents: &Contents,
    version: &str,
    arch: &str,
    tree: &Path,
    out_dir: &Path,
) -> Result<PathBuf> {
    if tree.exists() {
        fs::remove_dir_all(tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    let mut installed_kib = 0;
    let mut md5sums = String::new();
    for (path, data, mode) in &contents.files {
        let dest = tree.join(path.trim_start_matches('/'));
        write_file(&dest, data, *mode)?;
        installed_kib += (data.len() as u64).div_ceil(1024);
        md5sums.push_str(&format!(
            "{}  {}\n",
            md5(&dest)?,
            path.trim_start_matches('/')
        ));
    }
    let debian = tree.join("DEBIAN");
    write_file(
        &debian.join("control"),
        control(version, arch, installed_kib).as_bytes(),
        0o644,
    )?;
    write_file(
        &debian.join("conffiles"),
        format!("{CONFFILE}\n").as_bytes(),
        0o644,
    )?;
    write_file(&debian.join("md5sums"), md5sums.as_bytes(), 0o644)?;
    for (name, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        write_file(&debian.join(name), text.as_bytes(), 0o755)?;
    }
    directory_modes(tree)?;
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let deb = out_dir.join(format!("guard_{version}_{arch}.deb"));
    let out = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group", "-Zxz"])
        .arg(tree)
        .arg(&deb)
        .stdin(Stdio::null())
        .output()
        .context("running dpkg-deb (install dpkg)")?;
    if !out.status.success() {
        bail!(
            "dpkg-deb --build {} failed ({}): {}",
            tree.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(deb)
}

fn write_file(dest: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(dest, data).with_context(|| format!("writing {}", dest.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", dest.display()))
}

/// dpkg installs directories with the modes they have in the tree: every
/// one 0755, whatever the builder's umask made them.
fn directory_modes(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", dir.display()))?;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if entry.file_type()?.is_dir() {
            directory_modes(&entry.path())?;
        }
    }
    Ok(())
}

fn md5(path: &Path) -> Result<String> {
    let out = Command::new("md5sum")
        .arg(path)
        .output()
        .context("running md5sum (install coreutils)")?;
    if !out.status.success() {
        bail!("md5sum {} failed: {}", path.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("md5sum printed nothing for {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the built binary: prints a line naming what it was
    /// asked for, as the real one prints the policy, page or completions.
    fn fake_guard(dir: &Path) -> PathBuf {
        let path = dir.join("guard");
        fs::write(&path, "#!/bin/sh\necho \"fake guard output for: $*\"\n").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn deploy(dir: &Path) -> PathBuf {
        let d = dir.join("deploy");
        fs::create_dir_all(&d).expect("mkdir");
        let unit = "[Service]\nExecStart=/usr/local/sbin/guard run\n\
                    ExecReload=/usr/local/sbin/guard config check\n";
        fs::write(d.join("guard.service"), unit).expect("write");
        fs::write(d.join("guard-alerts.yml"), "groups: []\n").expect("write");
        fs::write(d.join("README.md"), "# Running guard under systemd\n").expect("write");
        d
    }

    fn dpkg_deb(args: &[&str], deb: &Path) -> String {
        let out = Command::new("dpkg-deb")
            .args(args)
            .arg(deb)
            .output()
            .expect("dpkg-deb");
        assert!(out.status.success(), "dpkg-deb {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_package_holds_every_file_root_owned_with_the_policy_as_conffile() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let guard = fake_guard(tmp.path());
        let contents = contents(&guard, &deploy(tmp.path())).expect("contents");
        let deb = build(
            &contents,
            "0.1.0-7",
            "amd64",
            &tmp.path().join("tree"),
            &tmp.path().join("out"),
        )
        .expect("build");
        assert_eq!(deb.file_name().unwrap(), "guard_0.1.0-7_amd64.deb");

        assert_eq!(
            dpkg_deb(&["--field"], &deb)
                .lines()
                .find(|l| l.starts_with("Version:")),
            Some("Version: 0.1.0-7")
        );
        let listing = dpkg_deb(&["--contents"], &deb);
        for (path, mode) in [
            ("./usr/sbin/guard", "-rwxr-xr-x"),
            ("./usr/lib/systemd/system/guard.service", "-rw-r--r--"),
            ("./etc/guard/guard.toml", "-rw-r--r--"),
            ("./usr/share/man/man8/guard.8.gz", "-rw-r--r--"),
            (
                "./usr/share/bash-completion/completions/guard",
                "-rw-r--r--",
            ),
            ("./usr/share/zsh/vendor-completions/_guard", "-rw-r--r--"),
            (
                "./usr/share/fish/vendor_completions.d/guard.fish",
                "-rw-r--r--",
            ),
            ("./usr/share/doc/guard/guard-alerts.yml", "-rw-r--r--"),
            ("./usr/share/doc/guard/copyright", "-rw-r--r--"),
        ] {
            let line = listing
                .lines()
                .find(|l| l.ends_with(&format!(" {path}")))
                .unwrap_or_else(|| panic!("{path} not in the package:\n{listing}"));
            assert!(line.starts_with(&format!("{mode} root/root")), "{line}");
        }
        for line in listing.lines().filter(|l| l.starts_with('d')) {
            assert!(line.starts_with("drwxr-xr-x root/root"), "{line}");
        }

        let control_dir = tmp.path().join("control");
        let out = Command::new("dpkg-deb")
            .arg("--control")
            .arg(&deb)
            .arg(&control_dir)
            .status()
            .expect("dpkg-deb --control");
        assert!(out.success());
        assert_eq!(
            fs::read_to_string(control_dir.join("conffiles")).unwrap(),
            "/etc/guard/guard.toml\n"
        );
        // Every file is in md5sums, with the sum of what was packed.
        let sums = fs::read_to_string(control_dir.join("md5sums")).unwrap();
        assert_eq!(sums.lines().count(), contents.files.len());
        assert!(sums.lines().any(|l| l.ends_with("  usr/sbin/guard")));
        for script in ["postinst", "prerm", "postrm"] {
            let path = control_dir.join(script);
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o755, "{script}");
            let syntax = Command::new("sh")
                .arg("-n")
                .arg(&path)
                .status()
                .expect("sh -n");
            assert!(syntax.success(), "{script} is not valid sh");
        }
        // What the binary printed went in where it belongs.
        let tree = tmp.path().join("tree");
        assert_eq!(
            fs::read_to_string(tree.join("etc/guard/guard.toml")).unwrap(),
            "fake guard output for: config default\n"
        );
        assert_eq!(
            fs::read_to_string(tree.join("usr/share/fish/vendor_completions.d/guard.fish"))
                .unwrap(),
            "fake guard output for: completions fish\n"
        );
    }

    #[test]
    fn the_packaged_unit_runs_the_packaged_binary() {
        let unit = packaged_unit(
            "ExecStart=/usr/local/sbin/guard run\nExecReload=/usr/local/sbin/guard config check\n",
        )
        .expect("unit");
        assert!(unit.contains("\nExecStart=/usr/sbin/guard run\n"), "{unit}");
        assert!(
            unit.contains("\nExecReload=/usr/sbin/guard config check\n"),
            "{unit}"
        );
        assert!(!unit.contains("/usr/local"), "{unit}");
        let err = packaged_unit("ExecStart=/opt/guard run\n").unwrap_err();
        assert!(
            err.to_string().contains("ExecStart=/usr/local/sbin/guard"),
            "{err}"
        );
    }

    #[test]
    fn the_real_unit_file_can_be_packaged() {
        let unit =
            fs::read_to_string(crate::workspace_root().join("deploy/guard.service")).unwrap();
        let packaged = packaged_unit(&unit).expect("deploy/guard.service");
        assert!(packaged.contains("\nExecStart=/usr/sbin/guard run\n"));
        // The source install's header (copy it to /etc/systemd/system) is
        // replaced by the package's; the rest, comments included, stays.
        assert!(
            !packaged.contains("/etc/systemd/system/guard.service"),
            "{packaged}"
        );
        assert!(packaged.contains("Installed by the guard Debian package"));
        assert!(packaged.contains("\n[Service]\n"));
        assert_eq!(
            packaged.matches("CAP_").count(),
            unit.matches("CAP_").count()
        );
    }

    #[test]
    fn architectures_are_debians_names() {
        assert_eq!(debian_arch("x86_64-unknown-linux-gnu").unwrap(), "amd64");
        assert_eq!(debian_arch("aarch64-unknown-linux-gnu").unwrap(), "arm64");
        assert!(debian_arch("sparc64-unknown-linux-gnu").is_err());
        assert_eq!(version("3"), format!("{}-3", env!("CARGO_PKG_VERSION")));
    }
}
