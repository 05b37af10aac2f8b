//! A test-only redb [`StorageBackend`] over an in-memory "disk" that can fail a chosen I/O
//! operation and simulate a crash, so crash tests are deterministic.
//!
//! The disk keeps two images: `current` (what reads see: the page cache) and `durable` (what
//! survives a crash: the state at the last `sync_data`). Writes and length changes go to
//! `current` and are logged; `sync_data` replays the log onto `durable`. A crash keeps only
//! `durable`, i.e. every unsynced write is lost.
//!
//! A disk holds several files (the journal and its write-ahead log: [`FaultDisk::sibling`])
//! that share one clock: counted operations are `write`, `set_len` and `sync_data` on any of
//! them, numbered from 1 after arming, and a crash takes every file down at once.

use std::sync::{Arc, Mutex, MutexGuard};

use ::redb::{Builder, StorageBackend};

use super::Opener;
use super::wal::WalOpener;

#[derive(Debug)]
enum Unsynced {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// One file of the disk.
#[derive(Debug, Default)]
struct Image {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Unsynced>,
}

#[derive(Debug, Default)]
struct Disk {
    files: Vec<Image>,
    /// Counted operations since the last arming.
    ops: u64,
    /// This counted operation fails once with an I/O error.
    fail_at: Option<u64>,
    /// From this counted operation on, everything fails: the process is dead.
    crash_at: Option<u64>,
    crashed: bool,
}

/// One file of a shared in-memory disk; every [`FaultBackend`] made from it sees the same
/// bytes.
#[derive(Clone, Debug)]
pub(super) struct FaultDisk {
    disk: Arc<Mutex<Disk>>,
    file: usize,
}

impl FaultDisk {
    pub(super) fn new() -> FaultDisk {
        FaultDisk {
            disk: Arc::new(Mutex::new(Disk {
                files: vec![Image::default()],
                ..Disk::default()
            })),
            file: 0,
        }
    }

    /// Another file on the same disk (same clock, same crash), created empty the first time
    /// and the same file after that: the journal's write-ahead log.
    pub(super) fn sibling(&self) -> FaultDisk {
        let mut disk = self.lock();
        if disk.files.len() < 2 {
            disk.files.push(Image::default());
        }
        FaultDisk {
            disk: Arc::clone(&self.disk),
            file: 1,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.disk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn image<'a>(&self, disk: &'a mut Disk) -> &'a mut Image {
        &mut disk.files[self.file]
    }

    /// The `n`th counted operation from now fails once.
    pub(super) fn fail_nth(&self, n: u64) {
        let mut disk = self.lock();
        disk.ops = 0;
        disk.fail_at = Some(n);
    }

    /// The `n`th counted operation from now and everything after it fail: a crash.
    pub(super) fn crash_at(&self, n: u64) {
        let mut disk = self.lock();
        disk.ops = 0;
        disk.crash_at = Some(n);
    }

    /// Counted operations since the last arming.
    pub(super) fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// A new disk holding what survived a crash now: the synced image only.
    pub(super) fn after_crash(&self) -> FaultDisk {
        let files = self
            .lock()
            .files
            .iter()
            .map(|image| Image {
                current: image.durable.clone(),
                durable: image.durable.clone(),
                unsynced: Vec::new(),
            })
            .collect();
        FaultDisk {
            disk: Arc::new(Mutex::new(Disk {
                files,
                ..Disk::default()
            })),
            file: self.file,
        }
    }

    /// Opens this disk's second file as the journal's write-ahead log.
    pub(super) fn wal_opener(&self) -> WalOpener {
        let log = self.sibling();
        Box::new(move || Ok(Box::new(FaultBackend(log.clone())) as Box<dyn StorageBackend>))
    }

    /// The bytes of this file that survive a crash now.
    pub(super) fn durable_bytes(&self) -> Vec<u8> {
        let mut disk = self.lock();
        self.image(&mut disk).durable.clone()
    }

    /// Overwrites bytes of this file, synced (tests plant torn or stale records).
    pub(super) fn plant(&self, offset: u64, data: &[u8]) {
        let mut disk = self.lock();
        let image = self.image(&mut disk);
        let op = Unsynced::Write {
            offset,
            data: data.to_vec(),
        };
        apply(&mut image.current, &op);
        apply(&mut image.durable, &op);
    }

    /// Opens redb on this disk.
    pub(super) fn opener(&self) -> Opener {
        let disk = self.clone();
        Box::new(move || {
            Builder::new()
                .set_cache_size(1024 * 1024)
                .create_with_backend(FaultBackend(disk.clone()))
        })
    }
}

impl Disk {
    /// Counts a mutating operation and decides whether it fails.
    fn count(&mut self) -> std::io::Result<()> {
        if self.crashed {
            return Err(dead());
        }
        self.ops += 1;
        if self.crash_at.is_some_and(|at| self.ops >= at) {
            self.crashed = true;
            return Err(dead());
        }
        if self.fail_at == Some(self.ops) {
            self.fail_at = None;
            return Err(std::io::Error::other("injected I/O error"));
        }
        Ok(())
    }
}

fn dead() -> std::io::Error {
    std::io::Error::other("simulated crash: the disk is gone")
}

fn apply(image: &mut Vec<u8>, op: &Unsynced) {
    match op {
        Unsynced::Write { offset, data } => {
            let start = usize::try_from(*offset).expect("test offsets fit usize");
            let end = start + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[start..end].copy_from_slice(data);
        }
        Unsynced::SetLen(len) => {
            image.resize(usize::try_from(*len).expect("test lengths fit usize"), 0);
        }
    }
}

/// The handle redb owns.
#[derive(Debug)]
pub(super) struct FaultBackend(FaultDisk);

impl StorageBackend for FaultBackend {
    fn len(&self) -> std::io::Result<u64> {
        let mut disk = self.0.lock();
        if disk.crashed {
            return Err(dead());
        }
        Ok(self.0.image(&mut disk).current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let mut disk = self.0.lock();
        if disk.crashed {
            return Err(dead());
        }
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let bytes = self
            .0
            .image(&mut disk)
            .current
            .get(start..start + out.len())
            .ok_or_else(|| std::io::Error::other("read past the end"))?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut disk = self.0.lock();
        disk.count()?;
        let image = self.0.image(&mut disk);
        let op = Unsynced::SetLen(len);
        apply(&mut image.current, &op);
        image.unsynced.push(op);
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let mut disk = self.0.lock();
        disk.count()?;
        let image = self.0.image(&mut disk);
        for op in std::mem::take(&mut image.unsynced) {
            apply(&mut image.durable, &op);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut disk = self.0.lock();
        disk.count()?;
        let image = self.0.image(&mut disk);
        let op = Unsynced::Write {
            offset,
            data: data.to_vec(),
        };
        apply(&mut image.current, &op);
        image.unsynced.push(op);
        Ok(())
    }
}
