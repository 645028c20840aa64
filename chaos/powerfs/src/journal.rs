//! The namespace journal: the directory operations not yet made durable by an `fsync` of
//! their parent directory, kept so that a power cut can undo them.
//!
//! Strict POSIX: a create, mkdir, unlink, rmdir or rename is durable once every directory it
//! changed (both parents of a rename) was `fsync`ed after it; an `fsync` of a file never makes
//! its own name durable. Until then the operation is a record here, written before the
//! operation is applied to the backing directory. A removal (unlink, rmdir, the entry a
//! rename replaces) does not destroy its victim: the victim is moved into the stash
//! (`.cairn-powerfs/stash/<id>` in the backing root, invisible through the mount) and deleted
//! from there only once the removal is durable.
//!
//! The journal is a file in the backing directory (`.cairn-powerfs/journal`), one line per
//! record added (`A`) or settled (`D`), written with a single `write` each: the page cache
//! keeps it through the daemon's SIGKILL, which is the power cut. At the next start, before
//! mounting, [`Journal::open`] undoes every record not settled, newest first (a created entry
//! is removed with everything under it, a stashed one put back, a rename reversed), logs each,
//! empties the stash and the journal.
//!
//! Directories are known by their backing inode numbers, which a rename keeps, so a record
//! still finds its parent after a durable rename of that parent (or of an ancestor).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The hidden directory in the backing root, invisible through the mount.
pub const HIDDEN: &str = ".cairn-powerfs";
const JOURNAL: &str = "journal";
const STASH: &str = "stash";
/// A journal file this long is rewritten with only its live records (when they are a
/// quarter of it or less); it is emptied whenever nothing is pending.
const REWRITE_BYTES: u64 = 4 << 20;
/// Bounds of the walk that finds directories by inode number at recovery.
const WALK_DEPTH_MAX: usize = 64;
const WALK_DIRS_MAX: usize = 1 << 20;

/// One namespace operation, with what undoing it needs. Parents are backing inode numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `name` was created in `parent` (a file or a directory). Undone by removing it, and
    /// everything under it.
    Create { parent: u64, name: OsString },
    /// `name` was moved out of `parent` into the stash as `stash/<id>` (an unlink, an rmdir,
    /// or the entry a rename replaced, whose other parent is `other_parent`). Undone by
    /// moving it back.
    Stash {
        parent: u64,
        name: OsString,
        other_parent: Option<u64>,
    },
    /// A rename onto a free name. Undone by renaming back.
    Rename {
        from_parent: u64,
        from_name: OsString,
        to_parent: u64,
        to_name: OsString,
    },
    /// `renameat2(RENAME_EXCHANGE)`. Undone by exchanging again.
    Exchange {
        a_parent: u64,
        a_name: OsString,
        b_parent: u64,
        b_name: OsString,
    },
}

impl Op {
    /// The directories whose `fsync` the operation waits for.
    fn parents(&self) -> Vec<u64> {
        let mut parents = match self {
            Op::Create { parent, .. } => vec![*parent],
            Op::Stash {
                parent,
                other_parent,
                ..
            } => std::iter::once(*parent).chain(*other_parent).collect(),
            Op::Rename {
                from_parent,
                to_parent,
                ..
            } => vec![*from_parent, *to_parent],
            Op::Exchange {
                a_parent, b_parent, ..
            } => vec![*a_parent, *b_parent],
        };
        parents.dedup();
        parents
    }

    fn encode(&self, id: u64) -> String {
        match self {
            Op::Create { parent, name } => format!("A {id} C {parent} {}\n", hex(name)),
            Op::Stash {
                parent,
                name,
                other_parent,
            } => format!(
                "A {id} S {parent} {} {}\n",
                hex(name),
                other_parent.map_or("-".to_string(), |other| other.to_string())
            ),
            Op::Rename {
                from_parent,
                from_name,
                to_parent,
                to_name,
            } => format!(
                "A {id} R {from_parent} {} {to_parent} {}\n",
                hex(from_name),
                hex(to_name)
            ),
            Op::Exchange {
                a_parent,
                a_name,
                b_parent,
                b_name,
            } => format!(
                "A {id} X {a_parent} {} {b_parent} {}\n",
                hex(a_name),
                hex(b_name)
            ),
        }
    }
}

fn hex(name: &OsStr) -> String {
    name.as_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn unhex(text: &str) -> Option<OsString> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(OsString::from_vec(bytes))
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    Add(u64, Op),
    Done(u64),
}

/// One journal line; `None` for anything malformed (a torn last line).
fn parse(line: &str) -> Option<Line> {
    let fields: Vec<&str> = line.split(' ').collect();
    let number = |at: usize| fields.get(at)?.parse::<u64>().ok();
    let name = |at: usize| unhex(fields.get(at)?);
    match (fields.first()?, fields.len()) {
        (&"D", 2) => Some(Line::Done(number(1)?)),
        (&"A", _) => {
            let id = number(1)?;
            let op = match (*fields.get(2)?, fields.len()) {
                ("C", 5) => Op::Create {
                    parent: number(3)?,
                    name: name(4)?,
                },
                ("S", 6) => Op::Stash {
                    parent: number(3)?,
                    name: name(4)?,
                    other_parent: match fields[5] {
                        "-" => None,
                        _ => Some(number(5)?),
                    },
                },
                ("R", 7) => Op::Rename {
                    from_parent: number(3)?,
                    from_name: name(4)?,
                    to_parent: number(5)?,
                    to_name: name(6)?,
                },
                ("X", 7) => Op::Exchange {
                    a_parent: number(3)?,
                    a_name: name(4)?,
                    b_parent: number(5)?,
                    b_name: name(6)?,
                },
                _ => return None,
            };
            Some(Line::Add(id, op))
        }
        _ => None,
    }
}

/// A record not yet durable.
struct Pending {
    op: Op,
    /// Parents not yet `fsync`ed since the operation.
    unsynced: Vec<u64>,
    /// Bytes the stash holds for it (counted against the daemon's pending cap).
    stash_bytes: u64,
    /// The directory a durable removal destroys (its inode): records waiting for it can never
    /// be undone into it, so they settle with it.
    removed_dir: Option<u64>,
}

/// What a durable `fsync` of a directory settled.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    pub records: u64,
    /// Stash bytes freed.
    pub stash_bytes: u64,
}

pub struct Journal {
    stash: PathBuf,
    journal_path: PathBuf,
    file: File,
    file_bytes: u64,
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    entries_max: usize,
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

/// Removes a file, or a directory with everything under it; gone already is fine.
fn remove_any(path: &Path) -> io::Result<bool> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

/// `renameat2(a, b, RENAME_EXCHANGE)`.
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(io::Error::from)
}

/// Every directory under `root` (the hidden one included), by inode number. Bounded in depth
/// and count; symlinks are not followed.
fn directories(root: &Path) -> HashMap<u64, PathBuf> {
    let mut found = HashMap::new();
    if let Ok(metadata) = std::fs::symlink_metadata(root) {
        found.insert(metadata.ino(), root.to_path_buf());
    }
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        if depth >= WALK_DEPTH_MAX || found.len() >= WALK_DIRS_MAX {
            continue;
        }
        let Ok(listed) = std::fs::read_dir(&dir) else {
            continue;
        };
        for item in listed.flatten() {
            if item.file_type().is_ok_and(|kind| kind.is_dir()) {
                found.insert(item.ino(), item.path());
                stack.push((item.path(), depth + 1));
            }
        }
    }
    found
}

impl Journal {
    /// Opens the journal of the backing directory `root`: undoes (newest first) every
    /// operation a previous daemon left not durable, calling `log` with a line for each, then
    /// empties the stash and the journal. Returns the journal and how many it undid.
    pub fn open(
        root: &Path,
        entries_max: usize,
        log: &mut dyn FnMut(String),
    ) -> io::Result<(Journal, u64)> {
        let hidden = root.join(HIDDEN);
        let stash = hidden.join(STASH);
        std::fs::create_dir_all(&stash)?;
        let journal_path = hidden.join(JOURNAL);
        let text = match std::fs::read(&journal_path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        let mut left: BTreeMap<u64, Op> = BTreeMap::new();
        for line in String::from_utf8_lossy(&text).lines() {
            match parse(line) {
                Some(Line::Add(id, op)) => {
                    left.insert(id, op);
                }
                Some(Line::Done(id)) => {
                    left.remove(&id);
                }
                None => log(format!("ignored a malformed journal line: {line:?}")),
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal_path)?;
        let undone = left.len() as u64;
        let mut dirs = directories(root);
        for (id, op) in left.into_iter().rev() {
            let moved_dir = undo(root, &stash, &dirs, id, &op, log)?;
            // Settled as it goes: a daemon killed while recovering does not undo it twice.
            file.write_all(format!("D {id}\n").as_bytes())?;
            if moved_dir {
                dirs = directories(root);
            }
        }
        for item in std::fs::read_dir(&stash)? {
            remove_any(&item?.path())?;
        }
        file.set_len(0)?;
        file.sync_all()?;
        Ok((
            Journal {
                stash,
                journal_path,
                file,
                file_bytes: 0,
                next_id: 1,
                pending: BTreeMap::new(),
                entries_max,
            },
            undone,
        ))
    }

    /// Where record `id`'s victim is kept until its removal is durable.
    pub fn stash_path(&self, id: u64) -> PathBuf {
        self.stash.join(id.to_string())
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Records `op` before it is applied. ENOSPC when `entries_max` records are pending.
    /// `stash_bytes` is what its victim holds; `removed_dir` the inode of a directory it
    /// removes. Returns the record's id (its victim goes to [`Journal::stash_path`]).
    pub fn begin(&mut self, op: Op, stash_bytes: u64, removed_dir: Option<u64>) -> io::Result<u64> {
        if self.pending.len() >= self.entries_max {
            return Err(enospc());
        }
        let id = self.next_id;
        self.append(&op.encode(id))?;
        self.next_id += 1;
        self.pending.insert(
            id,
            Pending {
                unsynced: op.parents(),
                op,
                stash_bytes,
                removed_dir,
            },
        );
        Ok(id)
    }

    /// Drops record `id` whose operation failed (so was never applied); returns its stash
    /// bytes. The caller has put any victim back.
    pub fn abandon(&mut self, id: u64) -> io::Result<u64> {
        let Some(pending) = self.pending.remove(&id) else {
            return Ok(0);
        };
        self.append(&format!("D {id}\n"))?;
        Ok(pending.stash_bytes)
    }

    /// An `fsync` of the directory with inode `dir`: every pending operation in it waits for
    /// one parent fewer; those waiting for none are durable (their victims deleted).
    pub fn dir_synced(&mut self, dir: u64) -> io::Result<Settled> {
        let mut settled = Settled::default();
        let mut synced = vec![dir];
        // Bounded: each round settles records, and a directory is removed at most once.
        while let Some(dir) = synced.pop() {
            let mut durable = Vec::new();
            for (id, pending) in &mut self.pending {
                if let Some(at) = pending.unsynced.iter().position(|parent| *parent == dir) {
                    pending.unsynced.swap_remove(at);
                    if pending.unsynced.is_empty() {
                        durable.push(*id);
                    }
                }
            }
            for id in durable {
                let pending = self.pending.remove(&id).expect("listed above");
                self.append(&format!("D {id}\n"))?;
                if matches!(pending.op, Op::Stash { .. }) {
                    remove_any(&self.stash_path(id))?;
                }
                settled.records += 1;
                settled.stash_bytes += pending.stash_bytes;
                synced.extend(pending.removed_dir);
            }
        }
        self.compact()?;
        Ok(settled)
    }

    fn append(&mut self, line: &str) -> io::Result<()> {
        self.file.write_all(line.as_bytes())?;
        self.file_bytes += line.len() as u64;
        Ok(())
    }

    /// Empties the journal file when nothing is pending, and rewrites a long one with only
    /// its live records (by a rename, so a kill leaves the old file or the new one).
    fn compact(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            if self.file_bytes > 0 {
                self.file.set_len(0)?;
                self.file_bytes = 0;
            }
            return Ok(());
        }
        if self.file_bytes < REWRITE_BYTES {
            return Ok(());
        }
        let live: String = self
            .pending
            .iter()
            .map(|(id, pending)| pending.op.encode(*id))
            .collect();
        if (live.len() as u64) * 4 > self.file_bytes {
            return Ok(());
        }
        let temporary = self.journal_path.with_extension("tmp");
        std::fs::write(&temporary, &live)?;
        std::fs::rename(&temporary, &self.journal_path)?;
        self.file = OpenOptions::new().append(true).open(&self.journal_path)?;
        self.file_bytes = live.len() as u64;
        Ok(())
    }
}

/// Undoes one operation on the backing directory; `Ok(true)` when it moved or removed a
/// directory (the inode map must be rebuilt). What cannot be undone (a parent gone for good,
/// a name taken) is logged and left.
fn undo(
    root: &Path,
    stash: &Path,
    dirs: &HashMap<u64, PathBuf>,
    id: u64,
    op: &Op,
    log: &mut dyn FnMut(String),
) -> io::Result<bool> {
    let shown = |path: &Path| {
        path.strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string()
    };
    let at = |parent: &u64, name: &OsString| dirs.get(parent).map(|dir| dir.join(name));
    let is_dir = |path: &Path| std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    let exists = |path: &Path| std::fs::symlink_metadata(path).is_ok();
    match op {
        Op::Create { parent, name } => {
            let Some(path) = at(parent, name) else {
                log(format!("undo create: parent of {name:?} is gone"));
                return Ok(false);
            };
            let was_dir = is_dir(&path);
            if remove_any(&path)? {
                log(format!(
                    "undid create of {}{}",
                    shown(&path),
                    if was_dir {
                        "/ (and everything in it)"
                    } else {
                        ""
                    }
                ));
            }
            Ok(was_dir)
        }
        Op::Stash { parent, name, .. } => {
            let kept = stash.join(id.to_string());
            if !exists(&kept) {
                return Ok(false);
            }
            let Some(path) = at(parent, name) else {
                log(format!(
                    "cannot bring back {name:?}: its directory is gone for good"
                ));
                return Ok(false);
            };
            if exists(&path) {
                log(format!(
                    "cannot bring back {}: the name is taken",
                    shown(&path)
                ));
                return Ok(false);
            }
            let was_dir = is_dir(&kept);
            std::fs::rename(&kept, &path)?;
            log(format!("undid removal of {}", shown(&path)));
            Ok(was_dir)
        }
        Op::Rename {
            from_parent,
            from_name,
            to_parent,
            to_name,
        } => {
            let (Some(from), Some(to)) = (at(from_parent, from_name), at(to_parent, to_name))
            else {
                log(format!(
                    "undo rename {from_name:?} -> {to_name:?}: a parent is gone"
                ));
                return Ok(false);
            };
            if !exists(&to) || exists(&from) {
                return Ok(false);
            }
            let was_dir = is_dir(&to);
            std::fs::rename(&to, &from)?;
            log(format!(
                "undid rename of {} to {}",
                shown(&from),
                shown(&to)
            ));
            Ok(was_dir)
        }
        Op::Exchange {
            a_parent,
            a_name,
            b_parent,
            b_name,
        } => {
            let (Some(a), Some(b)) = (at(a_parent, a_name), at(b_parent, b_name)) else {
                log(format!(
                    "undo exchange {a_name:?} <-> {b_name:?}: a parent is gone"
                ));
                return Ok(false);
            };
            if !exists(&a) || !exists(&b) {
                return Ok(false);
            }
            let was_dir = is_dir(&a) || is_dir(&b);
            exchange(&a, &b)?;
            log(format!("undid exchange of {} and {}", shown(&a), shown(&b)));
            Ok(was_dir)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ino(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    fn name(text: &str) -> OsString {
        OsString::from(text)
    }

    fn open(root: &Path) -> (Journal, Vec<String>) {
        let mut lines = Vec::new();
        let (journal, undone) = Journal::open(root, 16, &mut |line| lines.push(line)).unwrap();
        assert_eq!(undone as usize, lines.len(), "{lines:?}");
        (journal, lines)
    }

    #[test]
    fn records_round_trip_through_their_lines() {
        let ops = [
            Op::Create {
                parent: 7,
                name: OsString::from_vec(vec![b'a', b' ', 0xff]),
            },
            Op::Stash {
                parent: 7,
                name: name("x"),
                other_parent: None,
            },
            Op::Stash {
                parent: 7,
                name: name("x"),
                other_parent: Some(9),
            },
            Op::Rename {
                from_parent: 1,
                from_name: name("a"),
                to_parent: 2,
                to_name: name("b"),
            },
            Op::Exchange {
                a_parent: 1,
                a_name: name("a"),
                b_parent: 1,
                b_name: name("b"),
            },
        ];
        for (id, op) in ops.into_iter().enumerate() {
            let line = op.encode(id as u64);
            assert_eq!(
                parse(line.trim_end()),
                Some(Line::Add(id as u64, op)),
                "{line}"
            );
        }
        assert_eq!(parse("D 12"), Some(Line::Done(12)));
        assert_eq!(parse("A 3 C 7 6"), None, "a torn line is malformed");
        assert_eq!(parse("A 3 C 7"), None);
        assert_eq!(parse("A 3 Q 7 61"), None);
    }

    #[test]
    fn an_operation_is_durable_once_every_parent_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path());
        let rename = Op::Rename {
            from_parent: 1,
            from_name: name("a"),
            to_parent: 2,
            to_name: name("b"),
        };
        journal.begin(rename, 0, None).unwrap();
        assert_eq!(journal.dir_synced(1).unwrap().records, 0);
        assert_eq!(journal.pending(), 1);
        assert_eq!(journal.dir_synced(3).unwrap().records, 0);
        assert_eq!(journal.dir_synced(2).unwrap().records, 1);
        assert_eq!(journal.pending(), 0);
        // A sync before the operation does not count for it.
        let create = Op::Create {
            parent: 1,
            name: name("c"),
        };
        journal.begin(create, 0, None).unwrap();
        assert_eq!(journal.pending(), 1);
        assert!(journal.file_bytes > 0);
        assert_eq!(journal.dir_synced(1).unwrap().records, 1);
        assert_eq!(journal.file_bytes, 0, "emptied when nothing is pending");
    }

    #[test]
    fn the_entry_cap_refuses_with_enospc() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path());
        for index in 0..16 {
            let op = Op::Create {
                parent: 1,
                name: name(&format!("f{index}")),
            };
            journal.begin(op, 0, None).unwrap();
        }
        let op = Op::Create {
            parent: 1,
            name: name("one-more"),
        };
        let error = journal.begin(op, 0, None).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
        journal.dir_synced(1).unwrap();
        assert_eq!(journal.pending(), 0);
    }

    #[test]
    fn a_durable_removal_deletes_its_victim_and_settles_what_waited_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), b"data").unwrap();
        let (mut journal, _) = open(root);
        let (root_ino, d_ino) = (ino(root), ino(&root.join("d")));
        let unlink = Op::Stash {
            parent: d_ino,
            name: name("f"),
            other_parent: None,
        };
        let id = journal.begin(unlink, 4, None).unwrap();
        std::fs::rename(root.join("d/f"), journal.stash_path(id)).unwrap();
        let rmdir = Op::Stash {
            parent: root_ino,
            name: name("d"),
            other_parent: None,
        };
        let id = journal.begin(rmdir, 0, Some(d_ino)).unwrap();
        std::fs::rename(root.join("d"), journal.stash_path(id)).unwrap();
        let settled = journal.dir_synced(root_ino).unwrap();
        assert_eq!(
            settled,
            Settled {
                records: 2,
                stash_bytes: 4
            }
        );
        assert_eq!(
            std::fs::read_dir(root.join(HIDDEN).join(STASH))
                .unwrap()
                .count(),
            0
        );
    }

    /// Applies `op` the way the filesystem does (victims to the stash) and records it.
    fn apply(journal: &mut Journal, root: &Path, op: Op) {
        let path = |parent: &u64, name: &OsString| directories(root)[parent].join(name);
        let id = journal.begin(op.clone(), 0, None).unwrap();
        match &op {
            Op::Create { parent, name } => std::fs::write(path(parent, name), b"new").unwrap(),
            Op::Stash { parent, name, .. } => {
                std::fs::rename(path(parent, name), journal.stash_path(id)).unwrap()
            }
            Op::Rename {
                from_parent,
                from_name,
                to_parent,
                to_name,
            } => std::fs::rename(path(from_parent, from_name), path(to_parent, to_name)).unwrap(),
            Op::Exchange {
                a_parent,
                a_name,
                b_parent,
                b_name,
            } => exchange(&path(a_parent, a_name), &path(b_parent, b_name)).unwrap(),
        }
    }

    #[test]
    fn reopening_undoes_what_was_not_durable_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/old"), b"old").unwrap();
        std::fs::write(root.join("keep"), b"keep").unwrap();
        let (root_ino, d_ino) = (ino(root), ino(&root.join("d")));
        let (mut journal, _) = open(root);
        // A temporary written and renamed over `old` (its victim stashed first), then the
        // directory renamed and synced under its new name: only the root is left unsynced.
        apply(
            &mut journal,
            root,
            Op::Create {
                parent: d_ino,
                name: name("tmp"),
            },
        );
        apply(
            &mut journal,
            root,
            Op::Stash {
                parent: d_ino,
                name: name("old"),
                other_parent: None,
            },
        );
        apply(
            &mut journal,
            root,
            Op::Rename {
                from_parent: d_ino,
                from_name: name("tmp"),
                to_parent: d_ino,
                to_name: name("old"),
            },
        );
        apply(
            &mut journal,
            root,
            Op::Rename {
                from_parent: root_ino,
                from_name: name("d"),
                to_parent: root_ino,
                to_name: name("e"),
            },
        );
        apply(
            &mut journal,
            root,
            Op::Stash {
                parent: root_ino,
                name: name("keep"),
                other_parent: None,
            },
        );
        assert_eq!(std::fs::read(root.join("e/old")).unwrap(), b"new");
        assert!(!root.join("keep").exists());
        drop(journal);

        let (journal, lines) = open(root);
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(std::fs::read(root.join("d/old")).unwrap(), b"old");
        assert!(!root.join("d/tmp").exists());
        assert!(!root.join("e").exists());
        assert_eq!(std::fs::read(root.join("keep")).unwrap(), b"keep");
        assert_eq!(journal.pending(), 0);
        assert_eq!(std::fs::read(&journal.journal_path).unwrap(), b"");
        drop(journal);
        // Nothing left to undo.
        let (_, lines) = open(root);
        assert!(lines.is_empty(), "{lines:?}");
    }

    #[test]
    fn a_durable_rename_of_the_parent_does_not_lose_a_child_record() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        let (root_ino, d_ino) = (ino(root), ino(&root.join("d")));
        let (mut journal, _) = open(root);
        apply(
            &mut journal,
            root,
            Op::Create {
                parent: d_ino,
                name: name("f"),
            },
        );
        apply(
            &mut journal,
            root,
            Op::Rename {
                from_parent: root_ino,
                from_name: name("d"),
                to_parent: root_ino,
                to_name: name("e"),
            },
        );
        journal.dir_synced(root_ino).unwrap();
        assert_eq!(journal.pending(), 1);
        drop(journal);
        let (_, lines) = open(root);
        assert_eq!(lines, ["undid create of e/f"]);
        assert!(root.join("e").is_dir());
        assert!(!root.join("e/f").exists());
    }

    #[test]
    fn an_exchange_is_undone_by_exchanging_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a"), b"a").unwrap();
        std::fs::write(root.join("b"), b"b").unwrap();
        let root_ino = ino(root);
        let (mut journal, _) = open(root);
        apply(
            &mut journal,
            root,
            Op::Exchange {
                a_parent: root_ino,
                a_name: name("a"),
                b_parent: root_ino,
                b_name: name("b"),
            },
        );
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"b");
        drop(journal);
        open(root);
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"a");
        assert_eq!(std::fs::read(root.join("b")).unwrap(), b"b");
    }
}
