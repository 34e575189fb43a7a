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

mod apt;
mod host;
mod initramfs;
mod kernels;
mod mirror;
mod qemu;
pub(crate) mod rootfs;

pub use initramfs::build_initramfs;
pub(crate) use kernels::cache_dir;
pub use kernels::{Kernel, ensure_kernels};
pub(crate) use mirror::find_mirror;
pub(crate) use qemu::boot;
pub use qemu::{GUEST_FAULT, MAX_RETRIES, run_qemu, run_qemu_with_disk};
