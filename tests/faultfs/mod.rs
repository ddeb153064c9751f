//! FaultFs: an in-memory FUSE file system for crash tests. It keeps unsynced changes apart,
//! drops them at a simulated power cut, and fails chosen operations with a chosen errno.
//!
//! Include it in a test file with `#[path = "faultfs/mod.rs"] mod faultfs;`. It needs root and
//! `/dev/fuse` (the `fuser` crate mounts with mount(2) itself: no libfuse, no fusermount).
//!
//! # Durability model (strict POSIX, stricter than ext4 on purpose)
//! - A file's data and size change at once on write, truncate and fallocate (reads see them),
//!   but they are only *unsynced*. `fsync` or `fdatasync` of the file makes its current data
//!   and size durable. `sync_file_range` and `close` make nothing durable.
//! - A failed fsync (an injected [`Op::Fsync`] fault) drops the file's unsynced changes from
//!   what can ever become durable, as Linux does with pages whose write-back failed (byte by
//!   byte here): they stay readable, a later fsync that succeeds does not bring them back, the
//!   next power cut loses them.
//! - Namespace operations (create, mknod, mkdir, link, unlink, rmdir, rename) change the current
//!   tree at once and become durable only when the directory holding the name is fsynced
//!   (`fsyncdir`): that makes all its current names durable, nothing else (not the files' data,
//!   not its subdirectories' names). A rename between two directories is two changes: the new
//!   name is durable once the target directory is synced, the old name is gone once the source
//!   directory is; with only the target synced, the file comes back under both names.
//! - At a power cut ([`FaultFs::power_cut`]) the tree reverts to the durable names, from the
//!   root down, and every file reachable through them to its durable data. So a file created
//!   and written but never fsynced comes back empty if its name was made durable and is gone
//!   otherwise; a file fsynced whose name was never made durable is gone; a directory whose name
//!   is durable comes back with its own durable names only.
//!   [`FaultFs::power_cut_keeping`] is write-back in order: per file, a random prefix of the
//!   unsynced changes (writes and size changes, in the order they were made) survives, and the
//!   first write after that prefix survives torn: its bytes up to a random 512-byte sector
//!   boundary of the file that it crosses, possibly none (a write within one sector is all or
//!   nothing, as disks write whole sectors).
//! - Not modelled: mode, owner and times are kept as they are at a power cut (the store sets
//!   them at create/mkdir); no symlinks, xattrs or special files.
//!
//! # The mount
//! Every `write(2)` reaches the daemon before it returns (no writeback cache, files opened
//! `direct_io`, so reads and writes are never served from the page cache and every read can be
//! failed); entry and attribute TTLs are zero. `flock` and POSIX locks are emulated by the
//! kernel locally. `statfs` reports 4 TiB free. After a power cut the file system is mounted
//! afresh at the same path (new kernel caches); descriptors still open on the old mount get
//! `EIO` for everything (callers kill their processes first).
#![allow(dead_code)]

mod fuse;
mod tree;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// An operation a [`Fault`] can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// write(2), pwrite(2) and fallocate(2) on the file.
    Write,
    /// fsync(2) or fdatasync(2) of the file.
    Fsync,
    /// fsync(2) of a directory.
    FsyncDir,
    /// Creating a file (open with O_CREAT of a new name, mknod) or a hard link to it.
    Create,
    Mkdir,
    /// unlink(2) or rmdir(2); the path is the removed name's.
    Unlink,
    /// rename(2); matches when the old or the new path does.
    Rename,
    Read,
    /// truncate(2), ftruncate(2), open with O_TRUNC.
    Truncate,
}

/// Fails matching operations with `errno`. The path is the node's path from the mount's root,
/// starting with `/` (e.g. `/store/wal/00000001.log`).
#[derive(Clone, Debug)]
pub struct Fault {
    pub op: Op,
    pub path_contains: String,
    /// The first `skip` matching operations pass.
    pub skip: u32,
    /// How many matches after those fail; `None`: every one.
    pub times: Option<u32>,
    /// `libc::EIO`, `libc::ENOSPC`, ...
    pub errno: i32,
}

impl Fault {
    /// Every `op` on a path containing `path_contains` fails with `errno` from now on.
    pub fn new(op: Op, path_contains: &str, errno: i32) -> Fault {
        Fault {
            op,
            path_contains: path_contains.to_owned(),
            skip: 0,
            times: None,
            errno,
        }
    }

    pub fn skip(self, skip: u32) -> Fault {
        Fault { skip, ..self }
    }

    pub fn times(self, times: u32) -> Fault {
        Fault {
            times: Some(times),
            ..self
        }
    }
}

/// What the mount has seen since it was created (across power cuts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// write/pwrite calls that changed a file.
    pub writes: u64,
    /// Successful fsync/fdatasync calls on files.
    pub fsyncs: u64,
    /// Successful fsync calls on directories.
    pub fsyncdirs: u64,
    /// Bytes written that are not durable now (the next power cut drops them).
    pub unsynced_bytes: u64,
    /// Operations failed by injected faults.
    pub faults_fired: u64,
    pub power_cuts: u64,
}

struct Armed {
    fault: Fault,
    matched: u32,
    fired: u32,
}

/// Everything the mounts share: the tree, the faults, the counts.
struct State {
    tree: tree::Tree,
    /// Bumped at each power cut: a mount of an older epoch answers EIO.
    epoch: u64,
    faults: Vec<Armed>,
    counts: Counts,
    /// Open file handles of the current mount.
    handles: std::collections::HashMap<u64, tree::Ino>,
    next_fh: u64,
}

impl State {
    /// The errno of the first armed fault that fires for `op` on any of `paths`.
    fn fault(&mut self, op: Op, paths: &[&str]) -> Result<(), i32> {
        for armed in &mut self.faults {
            let f = &armed.fault;
            if f.op != op || !paths.iter().any(|p| p.contains(&f.path_contains)) {
                continue;
            }
            armed.matched += 1;
            if armed.matched <= f.skip || f.times.is_some_and(|t| armed.fired >= t) {
                continue;
            }
            armed.fired += 1;
            self.counts.faults_fired += 1;
            return Err(f.errno);
        }
        Ok(())
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The mount and its state. Unmounts on drop.
pub struct FaultFs {
    at: PathBuf,
    shared: Shared,
    session: Mutex<Option<fuser::BackgroundSession>>,
    /// The directory `mount_temp` made; removed after the unmount.
    _temp: Option<tempfile::TempDir>,
}

impl FaultFs {
    /// Mounts an empty FaultFs at `at` (created if missing). Err says why it cannot: no
    /// `/dev/fuse`, not root, or the kernel refused the mount.
    pub fn mount(at: &Path) -> Result<FaultFs, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse does not exist (no FUSE in this kernel or container)".into());
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("mounting FaultFs needs root (it calls mount(2) itself)".into());
        }
        std::fs::create_dir_all(at).map_err(|e| format!("creating {}: {e}", at.display()))?;
        let at = at
            .canonicalize()
            .map_err(|e| format!("resolving {}: {e}", at.display()))?;
        let shared = Arc::new(Mutex::new(State {
            tree: tree::Tree::new(),
            epoch: 0,
            faults: Vec::new(),
            counts: Counts::default(),
            handles: Default::default(),
            next_fh: 1,
        }));
        let session = fuse::mount(&at, &shared, 0)?;
        Ok(FaultFs {
            at,
            shared,
            session: Mutex::new(Some(session)),
            _temp: None,
        })
    }

    /// Mounts an empty FaultFs on a new temporary directory, removed when it is dropped.
    pub fn mount_temp() -> Result<FaultFs, String> {
        let temp =
            tempfile::tempdir().map_err(|e| format!("creating a temporary directory: {e}"))?;
        let mut fs = FaultFs::mount(temp.path())?;
        fs._temp = Some(temp);
        Ok(fs)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.at
    }

    /// A simulated power loss: every file and directory reverts to its durable state, and the
    /// file system is mounted again at the same path. Kill the processes using it first.
    pub fn power_cut(&self) {
        self.cut(None);
    }

    /// Like [`FaultFs::power_cut`], but per file a random prefix of the unsynced changes
    /// survives, and the next write survives torn at a sector boundary (ordered write-back).
    /// The same seed on the same history keeps the same changes.
    pub fn power_cut_keeping(&self, seed: u64) {
        self.cut(Some(fastrand::Rng::with_seed(seed)));
    }

    fn cut(&self, mut rng: Option<fastrand::Rng>) {
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = {
            let mut st = lock(&self.shared);
            st.epoch += 1;
            st.tree.power_cut(rng.as_mut());
            st.handles.clear();
            st.counts.power_cuts += 1;
            st.epoch
        };
        fuse::unmount(&self.at, session.take());
        match fuse::mount(&self.at, &self.shared, epoch) {
            Ok(s) => *session = Some(s),
            Err(e) => panic!("mounting FaultFs again after a power cut: {e}"),
        }
    }

    /// Fails matching operations from now on (see [`Fault`]). Faults are checked in the order
    /// they were injected; the first that fires decides the errno.
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared).faults.push(Armed {
            fault,
            matched: 0,
            fired: 0,
        });
    }

    pub fn clear_faults(&self) {
        lock(&self.shared).faults.clear();
    }

    pub fn counts(&self) -> Counts {
        let st = lock(&self.shared);
        Counts {
            unsynced_bytes: st.tree.unsynced_bytes(),
            ..st.counts
        }
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        let session = self.session.get_mut().unwrap_or_else(|p| p.into_inner());
        fuse::unmount(&self.at, session.take());
    }
}
