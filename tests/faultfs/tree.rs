//! The in-memory tree behind the mount: what each file and directory holds now, what of it is
//! durable, and what a power cut leaves. Pure logic, no FUSE types: errors are errno values.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

pub type Ino = u64;
pub const ROOT: Ino = 1;

/// One change to a file's data since its last fsync, kept in the order it was made.
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

impl Pending {
    fn apply(&self, to: &mut Vec<u8>) {
        match self {
            Pending::Write { offset, data } => write_at(to, *offset, data),
            Pending::SetLen(len) => to.resize(*len as usize, 0),
        }
    }
}

/// Disks write whole sectors: a torn write keeps its bytes before one of the sector boundaries
/// it crosses, chosen at random (or none of them).
pub const SECTOR: u64 = 512;

fn torn_len(rng: &mut fastrand::Rng, offset: u64, len: usize) -> usize {
    let first = (offset / SECTOR + 1) * SECTOR;
    let end = offset + len as u64;
    let crossed = if first < end {
        (end - 1 - first) / SECTOR + 1
    } else {
        0
    };
    match rng.u64(0..=crossed) {
        0 => 0,
        k => (first + (k - 1) * SECTOR - offset) as usize,
    }
}

fn write_at(to: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    let end = start + data.len();
    if to.len() < end {
        to.resize(end, 0);
    }
    to[start..end].copy_from_slice(data);
}

pub struct File {
    /// What reads see.
    data: Vec<u8>,
    /// What the last successful fsync made durable (plus what a power cut kept).
    durable: Vec<u8>,
    /// Changes since then that may still become durable, in order.
    pending: Vec<Pending>,
    pending_bytes: u64,
}

pub struct Dir {
    /// The names as they are now.
    pub entries: BTreeMap<OsString, Ino>,
    /// The names as of the directory's last fsync.
    durable: BTreeMap<OsString, Ino>,
}

pub enum Body {
    File(File),
    Dir(Dir),
}

pub struct Node {
    pub body: Body,
    /// Permission bits (no file type).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// One name of the node (the first it got, or the one a rename gave it), for `path`.
    parent: Ino,
    name: OsString,
    /// Open handles: an unlinked file lives on while one is open.
    pub open: u32,
}

impl Node {
    pub fn size(&self) -> u64 {
        match &self.body {
            Body::File(f) => f.data.len() as u64,
            Body::Dir(_) => 4096,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir(_))
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

pub enum Kind {
    File,
    Dir,
}

/// Errno values the tree answers with.
pub type Errno = i32;

pub struct Tree {
    pub nodes: BTreeMap<Ino, Node>,
    next_ino: Ino,
}

impl Tree {
    pub fn new() -> Tree {
        let mut tree = Tree {
            nodes: BTreeMap::new(),
            next_ino: ROOT + 1,
        };
        tree.nodes
            .insert(ROOT, new_node(Kind::Dir, 0o755, 0, 0, ROOT, ""));
        tree
    }

    pub fn node(&self, ino: Ino) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    pub fn node_mut(&mut self, ino: Ino) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Result<&Dir, Errno> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut Dir, Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut File, Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(libc::EISDIR),
        }
    }

    /// The node's path from the mount's root ("/" for the root), for fault matching.
    pub fn path(&self, ino: Ino) -> String {
        let mut names = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let Some(node) = self.nodes.get(&at) else {
                break;
            };
            names.push(node.name.to_string_lossy().into_owned());
            at = node.parent;
            if names.len() > 4096 {
                break;
            }
        }
        names.reverse();
        format!("/{}", names.join("/"))
    }

    /// The path `name` has (or would have) in `parent`.
    pub fn child_path(&self, parent: Ino, name: &OsStr) -> String {
        let base = self.path(parent);
        let sep = if base.ends_with('/') { "" } else { "/" };
        format!("{base}{sep}{}", name.to_string_lossy())
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(libc::ENOENT)
    }

    pub fn parent_of(&self, ino: Ino) -> Ino {
        self.nodes.get(&ino).map_or(ROOT, |n| n.parent)
    }

    /// Current number of names of `ino` (directories: 2 + subdirectories).
    pub fn nlink(&self, ino: Ino) -> u32 {
        let Some(node) = self.nodes.get(&ino) else {
            return 0;
        };
        match &node.body {
            Body::Dir(d) => {
                2 + d
                    .entries
                    .values()
                    .filter(|c| self.nodes.get(c).is_some_and(Node::is_dir))
                    .count() as u32
            }
            Body::File(_) => self
                .nodes
                .values()
                .filter_map(|n| match &n.body {
                    Body::Dir(d) => Some(d.entries.values().filter(|&&c| c == ino).count()),
                    Body::File(_) => None,
                })
                .sum::<usize>() as u32,
        }
    }

    pub fn make(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Ino, Errno> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes
            .insert(ino, new_node(kind, perm, uid, gid, parent, name));
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        self.node_mut(parent)?.touch();
        Ok(ino)
    }

    pub fn link(&mut self, ino: Ino, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        if self.node(ino)?.is_dir() {
            return Err(libc::EPERM);
        }
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        self.node_mut(parent)?.touch();
        self.node_mut(ino)?.ctime = SystemTime::now();
        Ok(())
    }

    /// unlink(2) (`dir == false`) or rmdir(2) (`dir == true`).
    pub fn remove(&mut self, parent: Ino, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        let node = self.node(ino)?;
        match (&node.body, dir) {
            (Body::Dir(_), false) => return Err(libc::EISDIR),
            (Body::File(_), true) => return Err(libc::ENOTDIR),
            (Body::Dir(d), true) if !d.entries.is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.node_mut(parent)?.touch();
        self.renamed_away(ino, parent, name);
        self.collect();
        Ok(())
    }

    /// After a name of `ino` went away: if it was the name `path` uses, take another if any.
    fn renamed_away(&mut self, ino: Ino, parent: Ino, name: &OsStr) {
        let other = self.nodes.iter().find_map(|(&p, n)| match &n.body {
            Body::Dir(d) => d
                .entries
                .iter()
                .find(|(_, &c)| c == ino)
                .map(|(nm, _)| (p, nm.clone())),
            Body::File(_) => None,
        });
        if let Some(node) = self.nodes.get_mut(&ino) {
            if node.parent == parent && node.name == name {
                if let Some((p, nm)) = other {
                    node.parent = p;
                    node.name = nm;
                }
            }
            node.ctime = SystemTime::now();
        }
    }

    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        let moving_dir = self.node(ino)?.is_dir();
        if moving_dir {
            // A directory may not move into itself or below itself.
            let mut at = new_parent;
            loop {
                if at == ino {
                    return Err(libc::EINVAL);
                }
                if at == ROOT {
                    break;
                }
                at = self.parent_of(at);
            }
        }
        if let Ok(old) = self.lookup(new_parent, new_name) {
            if no_replace {
                return Err(libc::EEXIST);
            }
            if old == ino {
                return Ok(());
            }
            match (&self.node(old)?.body, moving_dir) {
                (Body::Dir(_), false) => return Err(libc::EISDIR),
                (Body::File(_), true) => return Err(libc::ENOTDIR),
                (Body::Dir(d), true) if !d.entries.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        self.dir_mut(parent)?.entries.remove(name);
        let replaced = self
            .dir_mut(new_parent)?
            .entries
            .insert(new_name.to_owned(), ino);
        self.node_mut(parent)?.touch();
        self.node_mut(new_parent)?.touch();
        let node = self.node_mut(ino)?;
        node.parent = new_parent;
        node.name = new_name.to_owned();
        node.ctime = SystemTime::now();
        if let Some(old) = replaced {
            self.renamed_away(old, new_parent, new_name);
        }
        self.collect();
        Ok(())
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<&[u8], Errno> {
        match &self.node(ino)?.body {
            Body::File(f) => {
                let start = (offset as usize).min(f.data.len());
                let end = (start + size as usize).min(f.data.len());
                Ok(&f.data[start..end])
            }
            Body::Dir(_) => Err(libc::EISDIR),
        }
    }

    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let f = self.file_mut(ino)?;
        write_at(&mut f.data, offset, data);
        f.pending_bytes += data.len() as u64;
        f.pending.push(Pending::Write {
            offset,
            data: data.to_vec(),
        });
        self.node_mut(ino)?.touch();
        Ok(())
    }

    /// The file's current size, for O_APPEND writes.
    pub fn len(&self, ino: Ino) -> u64 {
        self.nodes.get(&ino).map_or(0, Node::size)
    }

    pub fn set_len(&mut self, ino: Ino, len: u64) -> Result<(), Errno> {
        let f = self.file_mut(ino)?;
        f.data.resize(len as usize, 0);
        f.pending.push(Pending::SetLen(len));
        self.node_mut(ino)?.touch();
        Ok(())
    }

    /// fsync/fdatasync of a file: its current data and size become durable.
    pub fn sync_file(&mut self, ino: Ino) -> Result<(), Errno> {
        if let Body::File(f) = &mut self.node_mut(ino)?.body {
            for op in f.pending.drain(..) {
                op.apply(&mut f.durable);
            }
            f.pending_bytes = 0;
        }
        Ok(())
    }

    /// A failed fsync: the unsynced changes stay readable but are dropped from what can become
    /// durable (a later fsync that succeeds does not bring them back; the next power cut loses
    /// them). Linux does the same to the pages whose write-back failed (it marks them clean);
    /// here it is byte by byte, so even a later write to the same page does not save them.
    pub fn lose_unsynced(&mut self, ino: Ino) -> Result<(), Errno> {
        if let Body::File(f) = &mut self.node_mut(ino)?.body {
            f.pending.clear();
            f.pending_bytes = 0;
        }
        Ok(())
    }

    /// fsync of a directory: its current names become durable.
    pub fn sync_dir(&mut self, ino: Ino) -> Result<(), Errno> {
        let d = self.dir_mut(ino)?;
        d.durable = d.entries.clone();
        self.collect();
        Ok(())
    }

    pub fn unsynced_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match &n.body {
                Body::File(f) => f.pending_bytes,
                Body::Dir(_) => 0,
            })
            .sum()
    }

    /// A power cut. Every directory goes back to its durable names, every file reachable
    /// through them to its durable data; the rest is gone. With `rng`, each file (in inode
    /// order) keeps a random prefix of its unsynced changes, and the change after that prefix,
    /// when it is a write, survives torn: up to a random sector boundary inside it (possibly
    /// none of it; a write within one sector is all or nothing).
    pub fn power_cut(&mut self, mut rng: Option<&mut fastrand::Rng>) {
        let keep = self.reachable(|d| Box::new(d.durable.values().copied()));
        self.nodes.retain(|ino, _| keep.contains(ino));
        for node in self.nodes.values_mut() {
            node.open = 0;
            match &mut node.body {
                Body::Dir(d) => d.entries = d.durable.clone(),
                Body::File(f) => {
                    if let Some(rng) = rng.as_deref_mut() {
                        let kept = rng.usize(0..=f.pending.len());
                        for op in &f.pending[..kept] {
                            op.apply(&mut f.durable);
                        }
                        if let Some(Pending::Write { offset, data }) = f.pending.get(kept) {
                            let torn = torn_len(rng, *offset, data.len());
                            write_at(&mut f.durable, *offset, &data[..torn]);
                        }
                    }
                    f.pending.clear();
                    f.pending_bytes = 0;
                    f.data = f.durable.clone();
                }
            }
        }
        // Names for `path`: the durable ones.
        let names: Vec<(Ino, Ino, OsString)> = self
            .nodes
            .iter()
            .filter_map(|(&p, n)| match &n.body {
                Body::Dir(d) => Some(d.entries.iter().map(move |(nm, &c)| (c, p, nm.clone()))),
                Body::File(_) => None,
            })
            .flatten()
            .collect();
        for (child, parent, name) in names {
            if let Some(node) = self.nodes.get_mut(&child) {
                node.parent = parent;
                node.name = name;
            }
        }
    }

    /// Frees the nodes nothing can reach any more: no current or durable name (through
    /// directories that are themselves reachable) and no open handle.
    pub fn collect(&mut self) {
        let mut keep =
            self.reachable(|d| Box::new(d.entries.values().chain(d.durable.values()).copied()));
        let open: Vec<Ino> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.open > 0)
            .map(|(&i, _)| i)
            .collect();
        keep.extend(open);
        self.nodes.retain(|ino, _| keep.contains(ino));
    }

    fn reachable<'a>(
        &'a self,
        children: impl Fn(&'a Dir) -> Box<dyn Iterator<Item = Ino> + 'a>,
    ) -> BTreeSet<Ino> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if !seen.insert(ino) {
                continue;
            }
            if let Some(Node {
                body: Body::Dir(d), ..
            }) = self.nodes.get(&ino)
            {
                stack.extend(children(d));
            }
        }
        seen
    }
}

fn new_node(
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    parent: Ino,
    name: impl AsRef<OsStr>,
) -> Node {
    let now = SystemTime::now();
    Node {
        body: match kind {
            Kind::File => Body::File(File {
                data: Vec::new(),
                durable: Vec::new(),
                pending: Vec::new(),
                pending_bytes: 0,
            }),
            Kind::Dir => Body::Dir(Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            }),
        },
        perm,
        uid,
        gid,
        atime: now,
        mtime: now,
        ctime: now,
        parent,
        name: name.as_ref().to_owned(),
        open: 0,
    }
}
