//! The programs a scenario runs inside its cgroups.

use std::{
    io::Write,
    time::{Duration, Instant},
};

const PAGE: usize = 4096;

/// Sets the task's comm, which is what the guard and the trace show.
fn set_name(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Maps `bytes` of anonymous memory; the mapping lives until exit.
fn map_anon(bytes: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no
    // preconditions; the result is checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED, "mmap {bytes} bytes failed");
    p.cast()
}

fn touch(p: *mut u8, bytes: usize, value: u8) {
    for off in (0..bytes).step_by(PAGE) {
        // SAFETY: `off` < `bytes`, the length of the mapping at `p`.
        unsafe { p.add(off).write_volatile(value) };
    }
}

/// Takes `mib` MiB of anonymous memory and keeps touching all of it, like a
/// grep holding a huge match buffer. Runs until killed.
pub fn hog(mib: usize) -> ! {
    set_name(c"hog");
    let bytes = mib << 20;
    let p = map_anon(bytes);
    let mut round: u8 = 0;
    loop {
        round = round.wrapping_add(1);
        touch(p, bytes, round);
    }
}

/// A server's event loop: every 10 ms it maps, touches and unmaps 256 KiB
/// (64 pages, one charge batch), and records how late it finished against
/// its schedule. Prints `sample <monotonic_ns> <late_us>` for every tick
/// later than 1 ms, then `bystander ticks=<n> worst_us=<w>`.
pub fn bystander(run_for: Duration) {
    set_name(c"bystander");
    const TICK: Duration = Duration::from_millis(10);
    const BUF: usize = 256 << 10;
    let start = Instant::now();
    let mut samples: Vec<(u64, u64)> = Vec::with_capacity(4096);
    let mut worst = 0u64;
    let mut ticks = 0u64;
    let mut next = start + TICK;
    while start.elapsed() < run_for {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let p = map_anon(BUF);
        touch(p, BUF, 1);
        // SAFETY: unmapping exactly the mapping made above.
        unsafe { libc::munmap(p.cast(), BUF) };
        let done = Instant::now();
        let late = done.saturating_duration_since(next).as_micros() as u64;
        ticks += 1;
        worst = worst.max(late);
        if late > 1000 && samples.len() < samples.capacity() {
            samples.push((crate::monotonic_ns(), late));
        }
        // Keep the schedule; after a long stall, resume from now.
        next += TICK;
        if next < done {
            next = done + TICK;
        }
    }
    let mut out = std::io::stdout().lock();
    for (t, late) in samples {
        let _ = writeln!(out, "sample {t} {late}");
    }
    let _ = writeln!(out, "bystander ticks={ticks} worst_us={worst}");
}
