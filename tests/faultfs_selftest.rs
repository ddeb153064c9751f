//! FaultFs proves its own durability model and faults with real syscalls through the mount:
//! std::fs, a shell killed with SIGKILL, and sled 0.34. Each test pairs what survives with the
//! same sequence less its sync, which must lose it, so no assertion holds by accident.
//! Needs root and /dev/fuse; without them every test fails with the reason.

#[path = "faultfs/mod.rs"]
mod faultfs;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

use faultfs::{Fault, FaultFs, Op};

fn mount() -> FaultFs {
    FaultFs::mount_temp().unwrap_or_else(|e| panic!("FaultFs cannot mount: {e}"))
}

/// Creates (or truncates) `path` with `data`, fsynced when `sync`.
fn put(path: &Path, data: &[u8], sync: bool) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    if sync {
        f.sync_all().unwrap();
    }
}

fn sync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

/// The file's contents, or None when it does not exist.
fn read(path: &Path) -> Option<Vec<u8>> {
    match fs::read(path) {
        Ok(data) => Some(data),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}

fn errno<T: std::fmt::Debug>(res: io::Result<T>) -> i32 {
    res.expect_err("the operation should have failed")
        .raw_os_error()
        .expect("an OS error")
}

/// Guards the core of the model: reads see unsynced data, a power cut drops it, and fsync or
/// fdatasync keeps it. `b` (written, never fsynced) is the same sequence less the sync.
#[test]
fn unsynced_writes_vanish_at_a_power_cut_and_synced_ones_stay() {
    let fs = mount();
    let (a, b, c, d) = (
        fs.path().join("a"),
        fs.path().join("b"),
        fs.path().join("c"),
        fs.path().join("d"),
    );
    let mut fa = File::create(&a).unwrap();
    fa.write_all(b"synced").unwrap();
    fa.sync_all().unwrap();
    put(&b, b"unsynced", false);
    let mut fc = File::create(&c).unwrap();
    fc.write_all(b"datasync").unwrap();
    fc.sync_data().unwrap();
    put(&d, b"abcdef", true);
    sync_dir(fs.path());
    fa.write_all(b"+later").unwrap();
    OpenOptions::new()
        .write(true)
        .open(&d)
        .unwrap()
        .set_len(2)
        .unwrap();
    assert_eq!(
        read(&a).unwrap(),
        b"synced+later",
        "reads see unsynced writes"
    );
    assert_eq!(read(&d).unwrap(), b"ab", "reads see an unsynced truncate");
    assert_eq!(fs.counts().unsynced_bytes, 6 + 8);
    drop((fa, fc));

    fs.power_cut();
    assert_eq!(read(&a).unwrap(), b"synced");
    assert_eq!(
        read(&b).unwrap(),
        b"",
        "never fsynced: its name survives, its data does not"
    );
    assert_eq!(
        read(&c).unwrap(),
        b"datasync",
        "fdatasync makes data durable"
    );
    assert_eq!(
        read(&d).unwrap(),
        b"abcdef",
        "an unsynced truncate is undone"
    );
    let counts = fs.counts();
    assert_eq!((counts.unsynced_bytes, counts.power_cuts), (0, 1));
}

/// Guards namespace durability: a new name needs its directory synced, its data needs the file
/// synced, and a subdirectory's names need the subdirectory synced (the parent's sync is not
/// enough). Each file below lacks exactly one of the syncs `both` had.
#[test]
fn a_new_file_survives_only_if_it_and_its_directory_were_synced() {
    let fs = mount();
    let dir = fs.path().join("d");
    fs::create_dir(&dir).unwrap();
    let sub = dir.join("sub");
    fs::create_dir(&sub).unwrap();
    sync_dir(fs.path());
    put(&dir.join("both"), b"both", true);
    put(&dir.join("dir_only"), b"dir_only", false);
    sync_dir(&dir);
    put(&dir.join("file_only"), b"file_only", true);
    put(&dir.join("neither"), b"neither", false);
    put(&sub.join("in_unsynced_sub"), b"x", true);
    fs::create_dir(fs.path().join("unsynced_dir")).unwrap();

    fs.power_cut();
    assert_eq!(read(&dir.join("both")).unwrap(), b"both");
    assert_eq!(
        read(&dir.join("dir_only")).unwrap(),
        b"",
        "name durable, data not"
    );
    assert_eq!(read(&dir.join("file_only")), None, "data durable, name not");
    assert_eq!(read(&dir.join("neither")), None);
    assert!(sub.is_dir(), "its name was synced in d");
    assert_eq!(read(&sub.join("in_unsynced_sub")), None);
    assert!(!fs.path().join("unsynced_dir").exists());
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["both", "dir_only", "sub"]);
}

/// Guards renames: the atomic-replace pattern (write, fsync, rename) keeps the old contents
/// until the directory is synced, and the new ones after. Across directories each side becomes
/// durable with its own directory: with only the target synced the file has both names after a
/// power cut, with only the source synced it has none.
#[test]
fn a_rename_is_durable_once_its_directory_is_synced() {
    let fs = mount();
    let (target, tmp) = (fs.path().join("target"), fs.path().join("tmp"));
    put(&target, b"v1", true);
    sync_dir(fs.path());

    put(&tmp, b"v2", true);
    fs::rename(&tmp, &target).unwrap();
    assert_eq!(read(&target).unwrap(), b"v2");
    fs.power_cut();
    assert_eq!(read(&target).unwrap(), b"v1", "the rename was not synced");
    assert_eq!(read(&tmp), None);

    put(&tmp, b"v2", true);
    fs::rename(&tmp, &target).unwrap();
    sync_dir(fs.path());
    fs.power_cut();
    assert_eq!(read(&target).unwrap(), b"v2", "the rename was synced");
    assert_eq!(read(&tmp), None);

    let (a, b) = (fs.path().join("a"), fs.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    sync_dir(fs.path());
    put(&a.join("x"), b"x", true);
    sync_dir(&a);
    fs::rename(a.join("x"), b.join("x")).unwrap();
    sync_dir(&b);
    fs.power_cut();
    assert_eq!(
        read(&a.join("x")).unwrap(),
        b"x",
        "the source directory was not synced"
    );
    assert_eq!(
        read(&b.join("x")).unwrap(),
        b"x",
        "the target directory was"
    );

    put(&a.join("y"), b"y", true);
    sync_dir(&a);
    fs::rename(a.join("y"), b.join("y")).unwrap();
    sync_dir(&a);
    fs.power_cut();
    assert_eq!(read(&a.join("y")), None, "the source directory was synced");
    assert_eq!(
        read(&b.join("y")),
        None,
        "the target directory was not: the file is lost"
    );

    put(&a.join("z"), b"z", true);
    sync_dir(&a);
    fs::rename(a.join("z"), b.join("z")).unwrap();
    sync_dir(&a);
    sync_dir(&b);
    fs.power_cut();
    assert_eq!(read(&a.join("z")), None);
    assert_eq!(
        read(&b.join("z")).unwrap(),
        b"z",
        "both directories were synced"
    );
}

/// Guards `power_cut_keeping`: what survives is always a prefix of the unsynced writes in the
/// order they were made (the last one possibly torn at a 512-byte sector boundary), it varies
/// with the seed between nothing and everything, and one seed gives one outcome.
#[test]
fn power_cut_keeping_keeps_a_prefix_of_the_writes_in_order() {
    let fs = mount();
    let path = fs.path().join("log");
    put(&path, b"", true);
    sync_dir(fs.path());
    // 20 records of 300 bytes: most cross a sector boundary, so they can tear.
    let records: Vec<u8> = (0..20)
        .flat_map(|i| format!("{:-<299}\n", format!("rec-{i:05}")).into_bytes())
        .collect();
    let outcome = |seed: u64| {
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(0).unwrap();
        f.sync_all().unwrap();
        for record in records.chunks(300) {
            f.write_all(record).unwrap();
        }
        drop(f);
        fs.power_cut_keeping(seed);
        read(&path).unwrap()
    };
    let mut lengths = Vec::new();
    for seed in 0..20 {
        let kept = outcome(seed);
        assert!(
            records.starts_with(&kept),
            "seed {seed}: {} bytes kept are not a prefix of what was written",
            kept.len()
        );
        assert!(
            kept.len() % 300 == 0 || kept.len() % 512 == 0,
            "seed {seed}: torn off a sector boundary at {}",
            kept.len()
        );
        lengths.push(kept.len());
    }
    assert!(
        lengths.iter().any(|&n| n > 0 && n < records.len()),
        "{lengths:?}"
    );
    assert!(
        lengths.iter().any(|&n| n % 300 != 0),
        "no torn write in {lengths:?}"
    );
    lengths.sort();
    lengths.dedup();
    assert!(lengths.len() > 5, "too few different outcomes: {lengths:?}");
    assert_eq!(outcome(7), outcome(7), "one seed, one outcome");

    // Overwrites of one range (two sectors each): the survivors are applied in the order they
    // were written, and the next one may have reached its first sector only.
    let writes = [[b'a'; 1024], [b'b'; 1024], [b'c'; 1024]];
    let mut allowed = std::collections::BTreeSet::new();
    for kept in 0..=writes.len() {
        for torn in [0, 512] {
            let mut data = kept
                .checked_sub(1)
                .map_or(Vec::new(), |k| writes[k].to_vec());
            if let Some(next) = writes.get(kept) {
                data.resize(data.len().max(torn), 0);
                data[..torn].copy_from_slice(&next[..torn]);
            }
            allowed.insert(data);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..40 {
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(0).unwrap();
        f.sync_all().unwrap();
        for w in &writes {
            f.write_all_at(w, 0).unwrap();
        }
        drop(f);
        fs.power_cut_keeping(seed);
        let kept = read(&path).unwrap();
        assert!(allowed.contains(&kept), "seed {seed}: no ordered outcome");
        seen.insert(kept);
    }
    let c_over_b = [&[b'c'; 512][..], &[b'b'; 512][..]].concat();
    assert!(
        seen.contains(&c_over_b),
        "{} outcomes, none torn over b",
        seen.len()
    );
}

/// Guards fault matching for every kind: the operation on a path containing the pattern fails
/// with the fault's errno and changes nothing; the same operation elsewhere succeeds; after
/// `clear_faults` it succeeds on the faulted path too.
#[test]
fn each_fault_kind_fires_with_its_errno_on_matching_paths_only() {
    let fs = mount();
    let root = fs.path().to_path_buf();
    let p = |name: &str| root.join(name);
    type Attempt<'a> = Box<dyn Fn(&str) -> io::Result<()> + 'a>;
    let cases: Vec<(Op, i32, Attempt)> = vec![
        (
            Op::Write,
            libc::ENOSPC,
            Box::new(|n| OpenOptions::new().append(true).open(p(n))?.write_all(b"x")),
        ),
        (
            Op::Fsync,
            libc::EIO,
            Box::new(|n| OpenOptions::new().write(true).open(p(n))?.sync_all()),
        ),
        (
            Op::FsyncDir,
            libc::EIO,
            Box::new(|n| File::open(p(&format!("{n}.d")))?.sync_all()),
        ),
        (
            Op::Create,
            libc::EDQUOT,
            Box::new(|n| File::create(p(&format!("{n}.new"))).map(drop)),
        ),
        (
            Op::Mkdir,
            libc::ENOSPC,
            Box::new(|n| fs::create_dir(p(&format!("{n}.newdir")))),
        ),
        (
            Op::Unlink,
            libc::EACCES,
            Box::new(|n| fs::remove_file(p(n))),
        ),
        (
            Op::Rename,
            libc::EROFS,
            Box::new(|n| fs::rename(p(n), p(&format!("{n}.renamed")))),
        ),
        (
            Op::Read,
            libc::EIO,
            Box::new(|n| File::open(p(n))?.read_to_end(&mut Vec::new()).map(drop)),
        ),
        (
            Op::Truncate,
            libc::EFBIG,
            Box::new(|n| OpenOptions::new().write(true).open(p(n))?.set_len(1)),
        ),
    ];
    for (op, errno_wanted, attempt) in &cases {
        let (hit, miss) = (format!("hit-{op:?}"), format!("miss-{op:?}"));
        for name in [&hit, &miss] {
            put(&p(name), b"contents", false);
            fs::create_dir(p(&format!("{name}.d"))).unwrap();
        }
        fs.inject(Fault::new(*op, &hit, *errno_wanted));
        let fired = fs.counts().faults_fired;
        assert_eq!(errno(attempt(&hit)), *errno_wanted, "{op:?} on {hit}");
        assert_eq!(fs.counts().faults_fired, fired + 1, "{op:?}");
        attempt(&miss).unwrap_or_else(|e| panic!("{op:?} on {miss} should pass: {e}"));
        match op {
            Op::Create => assert!(!p(&format!("{hit}.new")).exists()),
            Op::Mkdir => assert!(!p(&format!("{hit}.newdir")).exists()),
            Op::Rename => assert!(p(&hit).exists() && !p(&format!("{hit}.renamed")).exists()),
            Op::Read => {}
            _ => assert_eq!(read(&p(&hit)).unwrap(), b"contents", "{op:?} changed {hit}"),
        }
        fs.clear_faults();
        attempt(&hit).unwrap_or_else(|e| panic!("{op:?} on {hit} after clear_faults: {e}"));
    }
    // A rename matches on its new path too, and O_TRUNC is a truncate.
    put(&p("src"), b"s", false);
    fs.inject(Fault::new(Op::Rename, "dst", libc::EIO));
    assert_eq!(errno(fs::rename(p("src"), p("dst"))), libc::EIO);
    fs.inject(Fault::new(Op::Truncate, "src", libc::EIO));
    assert_eq!(errno(File::create(p("src"))), libc::EIO);
    assert_eq!(read(&p("src")).unwrap(), b"s");
}

/// Guards `skip` and `times`: the first `skip` matches pass, the next `times` fail, the rest
/// pass; without `times` every later match fails.
#[test]
fn faults_honour_skip_and_times() {
    let fs = mount();
    let path = fs.path().join("wal.log");
    put(&path, b"", false);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    fs.inject(Fault::new(Op::Write, "wal", libc::ENOSPC).skip(1).times(2));
    let results: Vec<Option<i32>> = (0..5)
        .map(|_| f.write_all(b"r").err().and_then(|e| e.raw_os_error()))
        .collect();
    let nospc = Some(libc::ENOSPC);
    assert_eq!(results, [None, nospc, nospc, None, None]);
    assert_eq!(read(&path).unwrap(), b"rrr");
    assert_eq!(fs.counts().faults_fired, 2);

    fs.clear_faults();
    fs.inject(Fault::new(Op::Write, "wal", libc::EIO).skip(2));
    let results: Vec<bool> = (0..5).map(|_| f.write_all(b"r").is_ok()).collect();
    assert_eq!(results, [true, true, false, false, false]);
}

/// Guards the failed-fsync rule (the PostgreSQL fsync lesson): after an fsync fails, the
/// writes it should have made durable stay readable, a second fsync succeeds, and still a power
/// cut loses them. Retrying a failed fsync is never a way to make data durable.
#[test]
fn a_failed_fsync_loses_the_unsynced_writes_for_good() {
    let fs = mount();
    let path = fs.path().join("seg");
    put(&path, b"A", true);
    sync_dir(fs.path());
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"B").unwrap();
    fs.inject(Fault::new(Op::Fsync, "seg", libc::EIO).times(1));
    assert_eq!(errno(f.sync_data()), libc::EIO);
    f.sync_data().expect("the second fsync succeeds");
    f.write_all(b"C").unwrap();
    f.sync_data().unwrap();
    assert_eq!(read(&path).unwrap(), b"ABC");
    drop(f);
    fs.power_cut();
    // "C" was written at offset 2 and fsynced: the hole where "B" was reads as zero.
    assert_eq!(read(&path).unwrap(), b"A\0C");
}

/// Guards the mount's life across processes: a shell that writes, fsyncs and syncs its
/// directory, then is SIGKILLed, leaves exactly what it synced. The second shell skips the
/// file's fsync and its data is gone.
#[test]
fn a_killed_process_leaves_what_it_synced() {
    let fs = mount();
    let run_and_kill = |script: &str| {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("set -e; {script}; echo ready; exec sleep 60"))
            .current_dir(fs.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "the script failed: {script}");
        child.kill().unwrap();
        child.wait().unwrap();
    };
    run_and_kill("printf not-fsynced > c; sync .");
    run_and_kill(
        "printf synced > a; sync a; sync .; printf ' unsynced' >> a; \
         printf fsynced-not-linked > b; sync b",
    );
    assert_eq!(read(&fs.path().join("a")).unwrap(), b"synced unsynced");
    let before = fs.counts();
    assert!(before.fsyncs >= 2 && before.fsyncdirs >= 2, "{before:?}");

    fs.power_cut();
    assert_eq!(read(&fs.path().join("a")).unwrap(), b"synced");
    assert_eq!(read(&fs.path().join("b")), None);
    assert_eq!(
        read(&fs.path().join("c")).unwrap(),
        b"",
        "no fsync: the data is gone"
    );
}

fn open_sled(path: &Path) -> sled::Db {
    // The store's settings: no flusher thread, so sled syncs only when asked.
    sled::Config::new()
        .path(path)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .unwrap()
}

/// Guards FaultFs under sled 0.34 and records what sled does for durability. sled creates its
/// files without syncing its directory, and `Db::flush` writes with `sync_file_range`, which is
/// no fsync (it persists neither metadata nor the device cache): a power cut right after a
/// flush loses the flushed data. With its files and directories fsynced by the caller after
/// the flush (what the store must do), the same data survives. `forget` stands for a crash:
/// dropping a `Db` would write and sync more.
#[test]
fn sled_keeps_what_was_flushed_only_once_its_files_are_fsynced() {
    let fs = mount();
    let db_dir = fs.path().join("db");
    let db = open_sled(&db_dir);
    let opened = fs.counts();
    assert_eq!(
        (opened.fsyncs, opened.fsyncdirs),
        (0, 0),
        "sled syncs nothing at open"
    );
    sync_dir(fs.path());
    sync_dir(&db_dir);

    db.insert(b"k1", b"v1").unwrap();
    assert!(db.flush().unwrap() > 0);
    let flushed = fs.counts();
    assert_eq!(
        flushed.fsyncs, 0,
        "sled's flush calls no fsync: {flushed:?}"
    );
    assert!(flushed.unsynced_bytes > 0);
    assert_eq!(
        db.flush().unwrap(),
        0,
        "a flush with nothing new writes nothing"
    );
    std::mem::forget(db);
    fs.power_cut();
    let db = open_sled(&db_dir);
    assert_eq!(
        db.get(b"k1").unwrap(),
        None,
        "flushed but never fsynced: lost"
    );

    db.insert(b"k2", b"v2").unwrap();
    db.flush().unwrap();
    for name in ["db", "conf"] {
        File::open(db_dir.join(name)).unwrap().sync_all().unwrap();
    }
    sync_dir(&db_dir);
    std::mem::forget(db);
    fs.power_cut();
    let db = open_sled(&db_dir);
    assert_eq!(db.get(b"k2").unwrap().as_deref(), Some(&b"v2"[..]));
    db.insert(b"k3", b"v3").unwrap();
    db.flush().unwrap();
    drop(db);
    assert_eq!(
        open_sled(&db_dir).get(b"k3").unwrap().as_deref(),
        Some(&b"v3"[..])
    );
}

/// Guards what plain std::fs code and the store rely on besides durability: mode bits (files
/// 0600, directories 0700, kept across a power cut), pread/pwrite, O_APPEND, flock, hard
/// links, reading an unlinked file through an open descriptor, readdir and statfs.
#[test]
fn posix_basics_work_through_the_mount() {
    let fs = mount();
    let dir = fs.path().join("store");
    fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    let path = dir.join("data");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.write_all_at(b"hello world", 0).unwrap();
    f.write_all_at(b"W", 6).unwrap();
    let mut buf = [0u8; 5];
    f.read_exact_at(&mut buf, 6).unwrap();
    assert_eq!(&buf, b"World");
    let mut app = OpenOptions::new().append(true).open(&path).unwrap();
    app.write_all(b"!").unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 12);

    let other = File::open(&path).unwrap();
    // SAFETY: flock on descriptors this test owns.
    let lock =
        |file: &File| unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(lock(&f), 0);
    assert_eq!(lock(&other), -1, "a second exclusive flock must fail");
    assert_eq!(
        io::Error::last_os_error().raw_os_error(),
        Some(libc::EWOULDBLOCK)
    );

    fs::hard_link(&path, dir.join("link")).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().nlink(), 2);
    let doomed = dir.join("doomed");
    put(&doomed, b"still here", false);
    let mut open = File::open(&doomed).unwrap();
    fs::remove_file(&doomed).unwrap();
    let mut s = String::new();
    open.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["data", "link"]);

    // SAFETY: statvfs fills the zeroed struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert!(
        st.f_bavail as u64 * st.f_frsize as u64 >= 1 << 40,
        "1 TiB or more free"
    );

    f.sync_all().unwrap();
    sync_dir(&dir);
    sync_dir(fs.path());
    drop((f, other, app, open));
    fs.power_cut();
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert_eq!(read(&path).unwrap(), b"hello World!");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o640
    );
}

/// Guards the remount: a descriptor opened before a power cut belongs to the old mount and
/// gets EIO, so nothing written through it after the cut can reach the new tree.
#[test]
fn descriptors_from_before_a_power_cut_fail() {
    let fs = mount();
    let path = fs.path().join("f");
    put(&path, b"durable", true);
    sync_dir(fs.path());
    let mut stale = OpenOptions::new().append(true).open(&path).unwrap();
    fs.power_cut();
    assert_eq!(errno(stale.write_all(b"late")), libc::EIO);
    assert_eq!(read(&path).unwrap(), b"durable");
}
