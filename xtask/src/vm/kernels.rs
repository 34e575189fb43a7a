//! The kernel matrix: Debian's bookworm, trixie and sid cloud kernels,
//! fetched once with the machine's own apt mirror and cached outside the
//! repository.

use anyhow::{Context, Result, anyhow, bail};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::apt::{Apt, pick_dependency};
use super::host::read_dir_names;
use super::mirror::find_mirror;

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
pub(super) const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Returns the bookworm, trixie and sid cloud kernels, in that order,
/// downloading any that are not cached yet.
///
/// The cache lives in `$XDG_CACHE_HOME/guard/kernels` (or
/// `~/.cache/guard/kernels`), one subdirectory per suite holding only
/// `vmlinuz` and `release`. A cached suite is used without touching the
/// network; delete its directory to fetch the current kernel again.
pub fn ensure_kernels() -> Result<Vec<Kernel>> {
    let root = cache_dir("kernels")?;
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

/// `what` under guard's folder in the user's cache (XDG_CACHE_HOME, else
/// ~/.cache): the kernels here, the systemd root image in rootfs.rs.
pub(crate) fn cache_dir(what: &str) -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .ok_or_else(|| anyhow!("neither XDG_CACHE_HOME nor HOME is set"))?;
            Path::new(&home).join(".cache")
        }
    };
    Ok(base.join("guard").join(what))
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn bzimage_magic_is_checked() {
        let mut image = vec![0u8; 0x300];
        assert!(!is_bzimage(&image));
        image[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(is_bzimage(&image));
        assert!(!is_bzimage(b"short"));
    }
}
