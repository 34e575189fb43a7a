//! The programs a scenario runs inside its cgroups.

use std::{
    fs,
    io::{Read, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const PAGE: usize = 4096;
const MIB: usize = 1 << 20;

/// Sets the task's comm, which is what the guard and the trace show.
fn set_name(name: &str) {
    set_name_bytes(name.as_bytes());
}

/// The same from raw bytes: the kernel takes any bytes but NUL, UTF-8 or not.
fn set_name_bytes(name: &[u8]) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
    // bytes; `buf` is 16 bytes with a NUL at or before index 15.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
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

/// Line-buffered writes to stdout that go out at once (the reader polls).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Takes `mib` MiB of anonymous memory and keeps touching all of it, like a
/// grep holding a huge match buffer. Runs until killed. `name` is its comm;
/// `oom_score_adj`, when given, is set before the first allocation.
pub fn hog(mib: usize, name: &str, oom_score_adj: Option<i32>) -> ! {
    set_name(name);
    if let Some(adj) = oom_score_adj
        && let Err(e) = fs::write("/proc/self/oom_score_adj", adj.to_string())
    {
        eprintln!("hog: setting oom_score_adj {adj}: {e}");
        std::process::exit(3);
    }
    hold(mib)
}

/// Takes `mib` MiB of anonymous memory and keeps touching all of it.
fn hold(mib: usize) -> ! {
    let bytes = mib * MIB;
    let p = map_anon(bytes);
    let mut round: u8 = 0;
    loop {
        round = round.wrapping_add(1);
        touch(p, bytes, round);
    }
}

/// Holds `kib` KiB, then, once `go` exists, has `threads` threads each
/// charge 64 KiB anew every 20 ms (touch, then give back). In a cgroup far over
/// its memory.high every such charge ends in the kernel's longest penalty
/// sleep (2 s), so the cgroup stalls for as long as this runs, the kernel
/// hears of it several times a second (one thread waking after another),
/// and it costs almost no CPU. Runs until killed.
pub fn nibbler(kib: usize, threads: usize, name: &str, go: &str) -> ! {
    const BITE: usize = 64 << 10;
    set_name(name);
    let bytes = kib << 10;
    touch(map_anon(bytes), bytes, 1);
    while !std::path::Path::new(go).exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each thread its own region, emptied with MADV_DONTNEED rather than
    // unmapped: munmap takes the mmap lock for writing and would make the
    // threads wait for each other instead of for the kernel's penalty.
    let bite = |p: usize| loop {
        touch(p as *mut u8, BITE, 1);
        // SAFETY: p is a live private anonymous mapping of BITE bytes.
        unsafe { libc::madvise(p as *mut libc::c_void, BITE, libc::MADV_DONTNEED) };
        std::thread::sleep(Duration::from_millis(20));
    };
    for _ in 1..threads {
        let p = map_anon(BITE) as usize;
        std::thread::spawn(move || bite(p));
        std::thread::sleep(Duration::from_millis(20));
    }
    bite(map_anon(BITE) as usize)
}

/// A hog whose name is not UTF-8 (`h\xff\xfeg`): /proc shows those bytes
/// as they are, and a reader that insists on UTF-8 cannot parse it.
pub fn odd_name(mib: usize) -> ! {
    set_name_bytes(ODD_NAME);
    hold(mib)
}

/// The name `odd_name` takes.
pub const ODD_NAME: &[u8] = b"h\xff\xfeg";

/// A hog whose main thread exits: a second thread takes `mib` MiB and keeps
/// touching it. The leader becomes a zombie whose /proc/PID/status has no
/// memory lines; the memory shows in /proc/PID/task/TID/status. Prints
/// `thread PID TID` before the leader goes.
pub fn leader_exit(mib: usize, name: &str) -> ! {
    set_name(name);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: gettid(2) has no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        let _ = tx.send(tid);
        hold(mib)
    });
    let Ok(tid) = rx.recv() else {
        eprintln!("leader-exit: the memory thread did not start");
        std::process::exit(3);
    };
    say(&format!("thread {} {tid}", std::process::id()));
    // exit(2), not exit_group(2): only this thread ends, without unwinding
    // (pthread_exit would need libgcc_s, which a static binary cannot load).
    // SAFETY: the thread ends here; nothing of it is used afterwards.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    unreachable!("exit(2) returned")
}

/// A hog whose memory is a memfd mapped shared: `mib` MiB of shmem (RssShmem
/// in /proc/PID/status, not RssAnon), touched over and over.
pub fn memfd(mib: usize, name: &str) -> ! {
    set_name(name);
    let bytes = mib * MIB;
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"guard-memfd".as_ptr(), libc::MFD_CLOEXEC) };
    // SAFETY: ftruncate on the fd just created.
    if fd < 0 || unsafe { libc::ftruncate(fd, bytes as libc::off_t) } != 0 {
        eprintln!("memfd: {}", std::io::Error::last_os_error());
        std::process::exit(3);
    }
    // SAFETY: a shared mapping of the whole memfd, no address hint; the
    // result is checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED, "mmap of the memfd failed");
    let mut round: u8 = 0;
    loop {
        round = round.wrapping_add(1);
        touch(p.cast(), bytes, round);
    }
}

/// A hog that cannot exit at once: a second thread takes `mib` MiB and
/// keeps touching it, while the main thread writes `write_mib` MiB to
/// `device` with O_DIRECT, over and over, and so spends its time in
/// uninterruptible sleep (state D) while the (throttled) disk takes it.
/// Prints `writing PID` before the first write, `wrote MS` after each.
pub fn stuck(mib: usize, write_mib: usize, device: &str, name: &str) -> ! {
    set_name(name);
    let fail = |what: &str| -> ! {
        eprintln!(
            "stuck: {what} {device}: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(3);
    };
    let Ok(path) = std::ffi::CString::new(device) else {
        fail("bad path")
    };
    // SAFETY: open(2) on a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_DIRECT) };
    if fd < 0 {
        fail("opening");
    }
    // Page-aligned, as O_DIRECT needs.
    let len = write_mib * MIB;
    let buf = map_anon(len);
    touch(buf, len, 0x5a);
    std::thread::spawn(move || hold(mib));
    say(&format!("writing {}", std::process::id()));
    loop {
        let began = Instant::now();
        let mut done = 0;
        while done < len {
            // SAFETY: `buf` holds `len` bytes; the range written is in it.
            let n = unsafe { libc::pwrite(fd, buf.add(done).cast(), len - done, done as i64) };
            if n <= 0 {
                fail("writing");
            }
            done += n as usize;
        }
        say(&format!("wrote {}", began.elapsed().as_millis()));
    }
}

/// An innocent that holds real memory: takes `mib` MiB, says `ready PID`
/// once all of it is touched, then touches it now and then (an editor, a
/// language server) until killed.
pub fn holder(mib: usize, name: &str) -> ! {
    hold_ready(mib, name, Duration::from_millis(200))
}

/// One of many small processes: takes `first_kib` KiB in 64 KiB steps,
/// says `ready PID`, waits for SIGUSR1, takes the rest up to `total_kib`
/// the same way, says `full PID`, then touches all of it now and then.
/// Small pages only, so that each step charges what it says.
pub fn small(first_kib: usize, total_kib: usize) -> ! {
    set_name("small");
    const STEP: usize = 64 << 10;
    // SAFETY: sigset operations on a local set, and the mask of this
    // process's only thread, blocked before anyone can send the signal.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let bytes = total_kib << 10;
    let p = map_anon(bytes);
    // SAFETY: advice on exactly the mapping made above.
    unsafe { libc::madvise(p.cast(), bytes, libc::MADV_NOHUGEPAGE) };
    let take = |from: usize, to: usize| {
        for off in (from..to).step_by(STEP) {
            // SAFETY: `off` < `to` <= `bytes`, inside the mapping.
            touch(unsafe { p.add(off) }, STEP.min(to - off), 1);
        }
    };
    let first = (first_kib << 10).min(bytes);
    take(0, first);
    say(&format!("ready {}", std::process::id()));
    let mut sig = 0;
    // SAFETY: sigwait on the set blocked above, with a valid out pointer.
    unsafe { libc::sigwait(&set, &mut sig) };
    take(first, bytes);
    say(&format!("full {}", std::process::id()));
    // Then it works at a steady size, as a compiler does: a quarter of its
    // memory given back and taken again, over and over, so it keeps
    // charging the cgroup without growing.
    const CHURN: usize = 256 << 10;
    let chunks = bytes.div_ceil(CHURN);
    let mut round: u8 = 1;
    for chunk in (0..chunks).cycle() {
        std::thread::sleep(Duration::from_millis(50));
        round = round.wrapping_add(1);
        let from = chunk * CHURN;
        let len = CHURN.min(bytes - from);
        // SAFETY: `from..from + len` lies inside the mapping made above.
        unsafe { libc::madvise(p.add(from).cast(), len, libc::MADV_DONTNEED) };
        // SAFETY: the same range, inside the mapping.
        touch(unsafe { p.add(from) }, len, round);
    }
    unreachable!("cycle() never ends")
}

/// Grows to `mib` MiB in 8 MiB steps (40 ms apart), touching each step as it comes, then
/// keeps touching all of it until killed: a process whose memory grows
/// (a link, a grep's buffer) rather than one that asks for everything at
/// once, which the kernel's overcommit heuristic would refuse outright on a
/// machine smaller than the request.
pub fn grower(mib: usize, name: &str) -> ! {
    set_name(name);
    const STEP: usize = 8 * MIB;
    let mut chunks = Vec::new();
    let mut round: u8 = 0;
    loop {
        round = round.wrapping_add(1);
        if chunks.len() * STEP < mib * MIB {
            let p = map_anon(STEP);
            touch(p, STEP, round);
            chunks.push(p as usize);
            // About 200 MiB/s at most: a build's compilers and linkers
            // grow fast, but not at memory bandwidth.
            std::thread::sleep(Duration::from_millis(40));
            continue;
        }
        for &p in &chunks {
            touch(p as *mut u8, STEP, round);
        }
    }
}

/// One of a parent's workers: takes `mib` MiB, says `ready PID` once all of
/// it is touched, and keeps touching it until killed.
pub fn worker(mib: usize) -> ! {
    hold_ready(mib, "worker", Duration::ZERO)
}

/// Takes `mib` MiB as `name`, says `ready PID` once all of it is touched,
/// then touches all of it every `pause` (at once when zero) until killed.
fn hold_ready(mib: usize, name: &str, pause: Duration) -> ! {
    set_name(name);
    let bytes = mib * MIB;
    let p = map_anon(bytes);
    touch(p, bytes, 1);
    say(&format!("ready {}", std::process::id()));
    let mut round: u8 = 1;
    loop {
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
        round = round.wrapping_add(1);
        touch(p, bytes, round);
    }
}

/// A small parent with `n` workers of `mib` MiB each (a build driver and
/// its compilers). See [`parent`].
pub fn workers(n: usize, mib: usize) {
    parent("workers", n, &["worker", &mib.to_string()]);
}

/// A parent named `name` with `n` children `guard-scenario CHILD...`.
/// Prints `worker PID` for each, then `exit PID SIGNAL` as each one ends
/// (SIGNAL 0 for a normal exit), and exits 0 when all have. The children
/// share its stdout.
pub fn parent(name: &str, n: usize, child: &[&str]) {
    set_name(name);
    for _ in 0..n {
        match Command::new("/proc/self/exe")
            .args(child)
            .stdin(Stdio::null())
            .spawn()
        {
            Ok(c) => say(&format!("worker {}", c.id())),
            Err(e) => {
                eprintln!("{name}: spawning a child: {e}");
                std::process::exit(3);
            }
        }
    }
    let mut left = n;
    while left > 0 {
        let mut status = 0;
        // SAFETY: waitpid for any child, with a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        let sig = if libc::WIFSIGNALED(status) {
            libc::WTERMSIG(status)
        } else {
            0
        };
        say(&format!("exit {pid} {sig}"));
        left -= 1;
    }
}

/// The cgroup v2 directory this process is in.
fn own_cgroup() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(format!("/sys/fs/cgroup{}", rel.trim_end_matches('/')))
}

fn read_u64(path: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// `rounds` short bursts, `interval` apart: each maps memory (without
/// transparent huge pages) and touches it 256 KiB at a time until its cgroup's memory.current is `over_kib` above
/// memory.high (or `limit_mib` is touched, or `give_up` has passed), then
/// unmaps it at once. Prints `burst I peak=BYTES high=BYTES mib=M ms=T
/// over_ms=T gave_up=0|1` per round (over_ms: from first seeing
/// memory.current above memory.high to the unmap).
pub fn burst(over_kib: u64, rounds: u32, interval: Duration, limit_mib: usize, give_up: Duration) {
    set_name("burst");
    let Some(cg) = own_cgroup() else {
        eprintln!("burst: no cgroup v2 line in /proc/self/cgroup");
        std::process::exit(3);
    };
    let high = read_u64(&format!("{cg}/memory.high"));
    let current = format!("{cg}/memory.current");
    const STEP: usize = 256 << 10;
    for round in 0..rounds {
        let began = Instant::now();
        let bytes = limit_mib * MIB;
        let p = map_anon(bytes);
        // Small pages: a transparent huge page would charge 2 MiB at once,
        // and the kernel scales its penalty sleep by the pages charged.
        // SAFETY: advice on exactly the mapping made above.
        unsafe { libc::madvise(p.cast(), bytes, libc::MADV_NOHUGEPAGE) };
        let mut done = 0;
        let mut peak = 0;
        let mut gave_up = false;
        let mut over_at = None;
        while done < bytes {
            touch(
                // SAFETY: `done` < `bytes`, inside the mapping.
                unsafe { p.add(done) },
                STEP.min(bytes - done),
                1,
            );
            done += STEP;
            let now = read_u64(&current);
            peak = peak.max(now);
            if now > high && over_at.is_none() {
                over_at = Some(Instant::now());
            }
            if over_kib > 0 && now >= high + over_kib * 1024 {
                break;
            }
            if began.elapsed() > give_up {
                gave_up = true;
                break;
            }
        }
        // SAFETY: unmapping exactly the mapping made above.
        unsafe { libc::munmap(p.cast(), bytes) };
        let over_ms = over_at.map_or(0.0, |t: Instant| t.elapsed().as_secs_f64() * 1000.0);
        say(&format!(
            "burst {round} peak={peak} high={high} mib={:.2} ms={:.1} over_ms={over_ms:.1} gave_up={}",
            done.min(bytes) as f64 / MIB as f64,
            began.elapsed().as_secs_f64() * 1000.0,
            u8::from(gave_up)
        ));
        let next = interval.saturating_sub(began.elapsed());
        std::thread::sleep(next);
    }
}

/// Writes a `mib` MiB file at `path`, then reads it back `reads` times
/// through the page cache, 1 MiB at a time. Prints `write ms=T`, then
/// `read I ms=T` per pass, then `filecache ok`.
pub fn filecache(path: &str, mib: usize, reads: u32) {
    set_name("filecache");
    let fail = |what: &str, e: std::io::Error| -> ! {
        eprintln!("filecache: {what} {path}: {e}");
        std::process::exit(3);
    };
    let mut chunk = vec![0u8; MIB];
    let began = Instant::now();
    let mut f = fs::File::create(path).unwrap_or_else(|e| fail("creating", e));
    for i in 0..mib {
        chunk.iter_mut().step_by(PAGE).for_each(|b| *b = i as u8);
        f.write_all(&chunk).unwrap_or_else(|e| fail("writing", e));
    }
    f.sync_all().unwrap_or_else(|e| fail("syncing", e));
    drop(f);
    say(&format!(
        "write ms={:.0}",
        began.elapsed().as_secs_f64() * 1000.0
    ));
    for pass in 0..reads {
        let began = Instant::now();
        let mut f = fs::File::open(path).unwrap_or_else(|e| fail("opening", e));
        let mut total = 0;
        for i in 0..mib {
            f.read_exact(&mut chunk)
                .unwrap_or_else(|e| fail("reading", e));
            if chunk[0] != i as u8 {
                eprintln!(
                    "filecache: {path}: MiB {i} reads back {} not {}",
                    chunk[0], i as u8
                );
                std::process::exit(4);
            }
            total += chunk.len();
        }
        say(&format!(
            "read {pass} mib={} ms={:.0}",
            total / MIB,
            began.elapsed().as_secs_f64() * 1000.0
        ));
    }
    say("filecache ok");
}

/// Does nothing until killed, under the name `name` (a helper process
/// sharing a cgroup, or an innocent holding a recycled pid).
pub fn idle(name: &str) -> ! {
    set_name(name);
    loop {
        // SAFETY: pause(2) has no preconditions.
        unsafe { libc::pause() };
    }
}

/// A server's event loop: every 10 ms it maps, touches and unmaps 256 KiB
/// (64 pages, one charge batch), and records how late it finished against
/// its schedule. Prints `sample <monotonic_ns> <late_us>` for every tick
/// later than 1 ms as it happens (a reader may look before the end, as the
/// bench does), then `bystander ticks=<n> worst_us=<w>`.
pub fn bystander(run_for: Duration) {
    set_name("bystander");
    const TICK: Duration = Duration::from_millis(10);
    const BUF: usize = 256 << 10;
    let start = Instant::now();
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
        if late > 1000 {
            say(&format!("sample {} {late}", crate::monotonic_ns()));
        }
        // Keep the schedule; after a long stall, resume from now.
        next += TICK;
        if next < done {
            next = done + TICK;
        }
    }
    say(&format!("bystander ticks={ticks} worst_us={worst}"));
}

/// A logged-in terminal stand-in: opens a pseudo-terminal (devpts makes its
/// slave this uid's), keeps the slave open, and appends whatever is written
/// to it to `out` for `run_for`; prints the slave's path first.
pub fn ptyhold(run_for: Duration, out: &str) -> ! {
    // SAFETY: plain libc calls on a descriptor this function owns; the
    // name buffer outlives the call that fills it.
    let (master, name) = unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        if master < 0 || libc::grantpt(master) != 0 || libc::unlockpt(master) != 0 {
            eprintln!("ptyhold: no pty: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        let mut buf = [0 as libc::c_char; 128];
        if libc::ptsname_r(master, buf.as_mut_ptr(), buf.len()) != 0 {
            eprintln!("ptyhold: ptsname: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        let name = std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned();
        (master, name)
    };
    let _slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&name);
    println!("{name}");
    let _ = std::io::stdout().flush();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .unwrap_or_else(|e| {
            eprintln!("ptyhold: {out}: {e}");
            std::process::exit(1)
        });
    let deadline = Instant::now() + run_for;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: master,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; read into a buffer of the size given.
        let n = unsafe {
            if libc::poll(&mut pfd, 1, 200) <= 0 {
                continue;
            }
            libc::read(master, buf.as_mut_ptr().cast(), buf.len())
        };
        if n > 0 {
            let _ = file.write_all(&buf[..n as usize]);
            let _ = file.flush();
        }
    }
    std::process::exit(0)
}
