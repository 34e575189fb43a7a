//! The busybox initramfs the scenarios boot, written as a newc cpio archive.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::host::run_tool;

const BUSYBOX: &str = "/bin/busybox";

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
