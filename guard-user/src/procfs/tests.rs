use super::*;

#[test]
fn meminfo_gives_total_and_available_in_bytes() {
    let text = "MemTotal:         512000 kB\nMemFree:           10000 kB\n\
                MemAvailable:      20480 kB\nBuffers:              0 kB\n";
    assert_eq!(parse_meminfo(text), Some((512_000 * 1024, 20 << 20)));
    assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
}

const STATUS: &str = "Name:\thog\nUmask:\t0022\nState:\tD (disk sleep)\nTgid:\t812\n\
    Uid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n\
    VmRSS:\t   76044 kB\nRssAnon:\t   75520 kB\nRssFile:\t     524 kB\n\
    RssShmem:\t       0 kB\nVmSwap:\t    2048 kB\nThreads:\t1\n";

// A command name with a space and a parenthesis, as a process may set.
const STAT: &str = "812 (my (hog) x) D 700 812 700 0 -1 4194560 18000 0 0 0 \
    120 30 0 0 20 0 1 0 3456 104857600 19000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";

#[test]
fn status_gives_name_state_uid_and_memory() {
    let s = parse_status(STATUS.as_bytes()).expect("parses");
    assert_eq!(s.name.as_bytes(), b"hog");
    assert_eq!(s.state, b'D');
    assert_eq!(s.uid, 1000);
    assert_eq!(s.rss_anon_kib, 75520);
    assert_eq!(s.swap_kib, 2048);
    assert!(s.has_mm);
    assert_eq!(s.threads, 1);
    assert_eq!(s.kthread, None);
}

#[test]
fn a_name_is_taken_exactly_with_its_spaces_and_bytes() {
    let mut text = b"Name:\t sshd\nState:\tS (sleeping)\n".to_vec();
    let s = parse_status(&text).expect("parses");
    assert_eq!(s.name.as_bytes(), b" sshd", "a leading space is no padding");
    text = b"Name:\th\xff\xfeg\nUid:\t1000\t1000\t1000\t1000\nVmRSS:\t 1 kB\nRssAnon:\t 8 kB\n"
        .to_vec();
    let s = parse_status(&text).expect("a name that is not UTF-8 still parses");
    assert_eq!(s.name.as_bytes(), b"h\xff\xfeg");
    assert_eq!(s.name.to_string(), "h\u{FFFD}\u{FFFD}g");
    assert_eq!(s.rss_anon_kib, 8);
    let s = parse_status(b"Name:\ta\\nb\\\\c\n").expect("parses");
    assert_eq!(
        s.name.as_bytes(),
        b"a\nb\\c",
        "the kernel's escapes are undone"
    );
}

#[test]
fn kernel_thread_status_has_no_memory_lines() {
    let s = parse_status(b"Name:\tkswapd0\nUid:\t0\t0\t0\t0\nKthread:\t1\n").expect("parses");
    assert_eq!((s.rss_anon_kib, s.swap_kib, s.has_mm), (0, 0, false));
    assert_eq!(s.kthread, Some(true));
}

#[test]
fn status_without_name_is_rejected() {
    assert_eq!(parse_status(b"Uid:\t0\t0\t0\t0\n"), None);
}

#[test]
fn stat_fields_are_counted_after_the_last_parenthesis() {
    assert_eq!(
        parse_stat(STAT.as_bytes()),
        Some(Stat {
            comm: Comm::from("my (hog) x"),
            state: b'D',
            pgrp: 812,
            flags: 4194560,
            start_time: 3456
        })
    );
    let odd = STAT.replace("my (hog) x", "h\u{FFFD}g").into_bytes();
    let mut odd = odd.clone();
    // Raw bytes that are not UTF-8 inside the parentheses.
    let at = odd.iter().position(|&b| b == b'(').expect("paren") + 1;
    odd.splice(at..at + 5, *b"h\xffg");
    let odd = parse_stat(&odd).expect("parses");
    assert_eq!(odd.start_time, 3456);
    assert_eq!(odd.comm.as_bytes(), b"h\xffg");
}

#[test]
fn statm_gives_anonymous_memory_as_resident_minus_shared() {
    let s = parse_statm(b"26000 19000 1200 300 0 18000 0\n").expect("parses");
    assert_eq!(
        (s.size, s.resident, s.shared, s.anon()),
        (26000, 19000, 1200, 17800)
    );
    assert_eq!(parse_statm(b"1 2\n"), None);
}

#[test]
fn truncated_stat_is_rejected() {
    assert_eq!(parse_stat(b"812 (hog) D 700"), None);
}

#[test]
fn cmdline_arguments_are_joined_by_spaces() {
    assert_eq!(
        parse_cmdline(b"ugrep\0-r\0needle\0/\0"),
        "ugrep -r needle /"
    );
    assert_eq!(parse_cmdline(b""), "");
}

#[test]
fn shared_memory_counts_only_when_it_dies_with_the_process() {
    let memfd = b"7f00-7f10 rw-s 00000000 00:01 1234   /memfd:hog (deleted)\n\
                  7f20-7f30 rw-p 00000000 00:00 0 \n";
    assert!(shmem_dies_with(memfd));
    let anon_shared = b"7f00-7f10 rw-s 00000000 00:01 99   /dev/zero (deleted)\n";
    assert!(shmem_dies_with(anon_shared));
    let tmpfs_file = b"7f00-7f10 rw-s 00000000 00:01 1234   /memfd:a (deleted)\n\
                       7f20-7f30 rw-s 00000000 00:1a 77   /dev/shm/cache file\n";
    assert!(!shmem_dies_with(tmpfs_file), "a file on tmpfs outlives it");
    let sysv = b"7f00-7f10 rw-s 00000000 00:01 5   /SYSV0000abcd\n";
    assert!(!shmem_dies_with(sysv), "a SysV segment outlives it");
    let removed = b"7f00-7f10 rw-s 00000000 00:01 5   /SYSV0000abcd (deleted)\n";
    assert!(shmem_dies_with(removed), "unless it was marked for removal");
    assert!(!shmem_dies_with(b"7f20-7f30 rw-p 00000000 00:00 0 \n"));
}

fn fake_proc(pid: u32, stat: &str, status: &[u8], adj: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join(pid.to_string());
    fs::create_dir(&p).expect("mkdir");
    fs::write(p.join("stat"), stat).expect("write");
    fs::write(p.join("status"), status).expect("write");
    fs::write(p.join("oom_score_adj"), adj).expect("write");
    fs::write(p.join("cmdline"), b"hog\0--mib\0x64\0").expect("write");
    dir
}

#[test]
fn process_reads_name_owner_and_footprint() {
    let root = fake_proc(812, STAT, STATUS.as_bytes(), "-500\n");
    let mut fs = ProcFs::new(root.path());
    let p = fs.process(812).expect("reads");
    assert_eq!(p.comm.as_bytes(), b"hog");
    assert_eq!(p.footprint, (75520 + 2048) * 1024);
    assert!(!p.kernel_thread);
    assert_eq!(fs.oom_score_adj(812).expect("adj"), -500);
    assert_eq!(fs.start_time(812).expect("start"), 3456);
    assert_eq!(fs.cmdline(812).expect("cmdline"), "hog --mib x64");
}

#[test]
fn a_leader_that_exited_is_read_through_a_live_thread() {
    let zombie = b"Name:\thog\nState:\tZ (zombie)\nTgid:\t812\n\
                   Uid:\t1000\t1000\t1000\t1000\nThreads:\t2\n";
    let root = fake_proc(812, STAT, zombie, "0\n");
    let task = root.path().join("812/task");
    fs::create_dir_all(task.join("812")).expect("mkdir");
    fs::create_dir_all(task.join("813")).expect("mkdir");
    fs::write(task.join("813/status"), STATUS).expect("write");
    let p = ProcFs::new(root.path()).process(812).expect("reads");
    assert_eq!(p.footprint, (75520 + 2048) * 1024);
    assert_eq!(p.via_thread, Some(813));
    assert!(!p.kernel_thread);
}

#[test]
fn kernel_threads_are_recognised_by_their_flag() {
    let stat = STAT.replace("4194560", &(4194560u64 | PF_KTHREAD).to_string());
    let root = fake_proc(812, &stat, b"Name:\tkworker/0:1\nState:\tI (idle)\n", "0");
    assert!(
        ProcFs::new(root.path())
            .process(812)
            .expect("reads")
            .kernel_thread
    );
}

#[test]
fn a_vanished_process_is_gone_not_an_io_error() {
    let root = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        ProcFs::new(root.path()).process(4242),
        Err(ProcError::Gone(4242))
    ));
}

#[test]
fn the_exe_of_a_copy_is_not_the_file_at_the_path_it_names() {
    // This test's own executable, read through /proc/self: the path
    // names the very file it runs.
    let mut fs = ProcFs::new("/proc");
    let me = std::process::id();
    let exe = fs
        .exe(me, None, |_| true)
        .expect("readable")
        .expect("has an exe");
    assert!(exe.same_file, "{exe:?}");
    assert!(!exe.deleted);
    // A copy elsewhere is another file: the original's path does not
    // describe it.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("copy");
    std::fs::copy(&exe.path, &copy).expect("copy");
    let a = std::fs::metadata(&copy).expect("meta");
    let b = std::fs::metadata(&exe.path).expect("meta");
    assert_ne!((a.dev(), a.ino()), (b.dev(), b.ino()));
}
