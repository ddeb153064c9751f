//! The FUSE side: mounting, unmounting, and each kernel request answered from the shared tree
//! (faults checked first, counts kept).

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::MutexGuard;
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

use super::tree::{Ino, Kind, Tree};
use super::{lock, Op, Shared, State};

/// Entries and attributes are never cached by the kernel.
const TTL: Duration = Duration::ZERO;
/// Every read and write goes to the daemon (none served from or left in the page cache), and
/// `close` sends no FLUSH request: a process that exits with files open on the mount must not
/// wait for an answer from a daemon thread that its own exit has already ended (that hangs the
/// exit for ever). Release is asynchronous in the kernel, so it cannot hang.
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_DIRECT_IO.union(FopenFlags::FOPEN_NOFLUSH);

pub(super) fn mount(
    at: &Path,
    shared: &Shared,
    epoch: u64,
) -> std::result::Result<BackgroundSession, String> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("faultfs".into()),
        MountOption::Subtype("faultfs".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
    ];
    let fs = Mounted {
        shared: shared.clone(),
        epoch,
    };
    fuser::spawn_mount(fs, at, &config)
        .map_err(|e| format!("mounting FaultFs at {} refused: {e}", at.display()))
}

/// Detaches the mount at once (descriptors still open on it keep the old connection, which
/// answers EIO), then lets the session end.
pub(super) fn unmount(at: &Path, session: Option<BackgroundSession>) {
    let Some(session) = session else {
        return;
    };
    if let Ok(path) = CString::new(at.as_os_str().as_bytes()) {
        // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
    drop(session);
}

/// One mount of the shared state; a power cut makes its epoch stale.
struct Mounted {
    shared: Shared,
    epoch: u64,
}

type Result<T> = std::result::Result<T, i32>;

impl Mounted {
    fn state(&self) -> Result<MutexGuard<'_, State>> {
        let st = lock(&self.shared);
        if st.epoch != self.epoch {
            return Err(libc::EIO);
        }
        Ok(st)
    }

    fn run<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> std::result::Result<T, Errno> {
        self.state()
            .and_then(|mut st| f(&mut st))
            .map_err(Errno::from_i32)
    }

    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: Kind,
        mode: u32,
    ) -> std::result::Result<FileAttr, Errno> {
        let op = match kind {
            Kind::File => Op::Create,
            Kind::Dir => Op::Mkdir,
        };
        self.run(|st| {
            let path = st.tree.child_path(parent.0, name);
            st.fault(op, &[&path])?;
            let perm = (mode & 0o7777) as u16;
            let ino = st
                .tree
                .make(parent.0, name, kind, perm, req.uid(), req.gid())?;
            attr(&st.tree, ino)
        })
    }
}

fn attr(tree: &Tree, ino: Ino) -> Result<FileAttr> {
    let n = tree.node(ino)?;
    let size = n.size();
    Ok(FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: n.atime,
        mtime: n.mtime,
        ctime: n.ctime,
        crtime: n.ctime,
        kind: if n.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: n.perm,
        nlink: tree.nlink(ino),
        uid: n.uid,
        gid: n.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    })
}

fn open_handle(st: &mut State, ino: Ino) -> Result<u64> {
    st.tree.node_mut(ino)?.open += 1;
    let fh = st.next_fh;
    st.next_fh += 1;
    st.handles.insert(fh, ino);
    Ok(fh)
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn entry(reply: ReplyEntry, res: std::result::Result<FileAttr, Errno>) {
    match res {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, res: std::result::Result<(), Errno>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Mounted {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(
            reply,
            self.run(|st| attr(&st.tree, st.tree.lookup(parent.0, name)?)),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.run(|st| attr(&st.tree, ino.0)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let res = self.run(|st| {
            if let Some(len) = size {
                let path = st.tree.path(ino.0);
                st.fault(Op::Truncate, &[&path])?;
                st.tree.set_len(ino.0, len)?;
            }
            let node = st.tree.node_mut(ino.0)?;
            if let Some(mode) = mode {
                node.perm = (mode & 0o7777) as u16;
            }
            if let Some(uid) = uid {
                node.uid = uid;
            }
            if let Some(gid) = gid {
                node.gid = gid;
            }
            if let Some(t) = atime {
                node.atime = time(t);
            }
            if let Some(t) = mtime {
                node.mtime = time(t);
            }
            node.ctime = SystemTime::now();
            attr(&st.tree, ino.0)
        });
        match res {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        entry(reply, self.make(req, parent, name, Kind::File, mode));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        entry(reply, self.make(req, parent, name, Kind::Dir, mode));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.remove(parent, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.remove(parent, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let res = self.run(|st| {
            let from = st.tree.child_path(parent.0, name);
            let to = st.tree.child_path(newparent.0, newname);
            st.fault(Op::Rename, &[&from, &to])?;
            let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
            st.tree
                .rename(parent.0, name, newparent.0, newname, no_replace)
        });
        empty(reply, res);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let res = self.run(|st| {
            let path = st.tree.child_path(newparent.0, newname);
            st.fault(Op::Create, &[&path])?;
            st.tree.link(ino.0, newparent.0, newname)?;
            attr(&st.tree, ino.0)
        });
        entry(reply, res);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.run(|st| open_handle(st, ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), OPEN_FLAGS),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let res = self.run(|st| {
            let path = st.tree.path(ino.0);
            st.fault(Op::Read, &[&path])?;
            Ok(st.tree.read(ino.0, offset, size)?.to_vec())
        });
        match res {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let res = self.run(|st| {
            let path = st.tree.path(ino.0);
            st.fault(Op::Write, &[&path])?;
            let offset = if flags.0 & libc::O_APPEND != 0 {
                st.tree.len(ino.0)
            } else {
                offset
            };
            st.tree.write(ino.0, offset, data)?;
            st.counts.writes += 1;
            Ok(data.len() as u32)
        });
        match res {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let res = self.run(|st| {
            if st.handles.remove(&fh.0).is_some() {
                if let Ok(node) = st.tree.node_mut(ino.0) {
                    node.open = node.open.saturating_sub(1);
                }
                st.tree.collect();
            }
            Ok(())
        });
        empty(reply, res);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let res = self.run(|st| {
            let path = st.tree.path(ino.0);
            if let Err(errno) = st.fault(Op::Fsync, &[&path]) {
                st.tree.lose_unsynced(ino.0)?;
                return Err(errno);
            }
            st.tree.sync_file(ino.0)?;
            st.counts.fsyncs += 1;
            Ok(())
        });
        empty(reply, res);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let res = self.run(|st| {
            let tree = &st.tree;
            let node = tree.node(ino.0)?;
            let super::tree::Body::Dir(dir) = &node.body else {
                return Err(libc::ENOTDIR);
            };
            let mut list = vec![
                (ino.0, FileType::Directory, OsStr::new(".").to_owned()),
                (
                    tree.parent_of(ino.0),
                    FileType::Directory,
                    OsStr::new("..").to_owned(),
                ),
            ];
            for (name, &child) in &dir.entries {
                let kind = match tree.node(child) {
                    Ok(n) if n.is_dir() => FileType::Directory,
                    _ => FileType::RegularFile,
                };
                list.push((child, kind, name.clone()));
            }
            Ok(list)
        });
        match res {
            Ok(list) => {
                for (i, (child, kind, name)) in list.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let res = self.run(|st| {
            let path = st.tree.path(ino.0);
            st.fault(Op::FsyncDir, &[&path])?;
            st.tree.sync_dir(ino.0)?;
            st.counts.fsyncdirs += 1;
            Ok(())
        });
        empty(reply, res);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // 4 TiB in 4 KiB blocks, all free.
        const BLOCKS: u64 = 1 << 30;
        reply.statfs(BLOCKS, BLOCKS, BLOCKS, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let res = self
            .make(req, parent, name, Kind::File, mode)
            .and_then(|a| {
                let fh = self.run(|st| open_handle(st, a.ino.0))?;
                Ok((a, fh))
            });
        match res {
            Ok((a, fh)) => reply.created(&TTL, &a, Generation(0), FileHandle(fh), OPEN_FLAGS),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let res = self.run(|st| {
            let path = st.tree.path(ino.0);
            st.fault(Op::Write, &[&path])?;
            let len = st.tree.len(ino.0);
            let end = offset + length;
            match mode {
                0 if end > len => st.tree.set_len(ino.0, end),
                0 | libc::FALLOC_FL_KEEP_SIZE => Ok(()),
                m if m == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE => {
                    let end = end.min(len);
                    if end > offset {
                        st.tree
                            .write(ino.0, offset, &vec![0; (end - offset) as usize])?;
                    }
                    Ok(())
                }
                _ => Err(libc::EOPNOTSUPP),
            }
        });
        empty(reply, res);
    }
}

impl Mounted {
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> std::result::Result<(), Errno> {
        self.run(|st| {
            let path = st.tree.child_path(parent.0, name);
            st.fault(Op::Unlink, &[&path])?;
            st.tree.remove(parent.0, name, dir)
        })
    }
}
