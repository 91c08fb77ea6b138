//! The commit log: a small file beside the database (`store.redb` → `store.redb.log`)
//! where the writer makes batches durable, so that redb itself is fsynced only at
//! checkpoints.
//!
//! Why: a durable redb commit rewrites every B-tree page the batch touched plus redb's
//! own metadata, 33–49 KB per transaction however small, and fsyncs it. Measured with
//! `headwater bench broker --workload qos1-durable` (300 000 messages), that was 360 MB
//! of disk writes, 1.2 KB per message, and the kernel's writeback work took CPU the
//! connections needed. A record here is the batch's operations themselves (about 100 B
//! per queued message), written with one `pwrite` and made durable with one
//! `fdatasync`; redb gets the same batch as a `Durability::None` commit, which stays in
//! its write buffer and is visible to readers at once.
//!
//! Format (little-endian): a 16-byte header, `MAGIC` then the file's epoch (u64); then
//! records, each `[body length: u32][crc32: u32][epoch: u64][body]`, the body being the
//! batch's operations in order (see [`encode`]). The checksum covers the record's file
//! offset, its epoch and its body. Every write of a record also writes 16 zero bytes
//! after it, which the next record overwrites: a clean end of the log.
//!
//! Invariants:
//! - The records of the header's epoch, read from the start up to the first one that is
//!   incomplete, fails its checksum or carries another epoch, are exactly the batches
//!   applied to redb since its last durable commit, in order (a prefix of them after a
//!   power cut, never anything else). Operations are blind writes (Put, Delete,
//!   DeletePrefix), so replaying them onto a database that already holds all of them
//!   gives the same result: a crash between a checkpoint and the log's reset is
//!   harmless, because the log is synced before the checkpoint.
//! - A checkpoint (a durable redb commit) is followed by [`CommitLog::reset`], which
//!   writes a new epoch and fdatasyncs it before any record of that epoch is written.
//!   Records are written over the old ones from the start of the file, so its size stays
//!   at its high-water mark and a sync rarely has metadata to journal.
//! - Epochs are random, not counted: the bytes behind the last record of an epoch can be
//!   the middle of an older record, that is, client payload. A payload crafted to look
//!   like a record would need the current epoch (64 random bits) and its own offset in
//!   the file to pass the checksum.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Op, StoreError};

/// Identifies a Headwater commit log, format 1.
const MAGIC: &[u8; 8] = b"HWLOG\0\0\x01";
/// Magic and epoch.
const HEADER_LEN: u64 = 16;
/// Body length, checksum, epoch.
const RECORD_HEADER_LEN: usize = 16;

const PUT: u8 = 1;
const DELETE: u8 = 2;
const DELETE_PREFIX: u8 = 3;

/// One operation read back from the log, borrowing the log's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LoggedOp<'a> {
    Put {
        table: &'a str,
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        table: &'a str,
        key: &'a [u8],
    },
    DeletePrefix {
        table: &'a str,
        prefix: &'a [u8],
    },
}

impl<'a> From<&'a Op> for LoggedOp<'a> {
    fn from(op: &'a Op) -> Self {
        match op {
            Op::Put { table, key, value } => LoggedOp::Put {
                table: table.0,
                key,
                value,
            },
            Op::Delete { table, key } => LoggedOp::Delete {
                table: table.0,
                key,
            },
            Op::DeletePrefix { table, prefix } => LoggedOp::DeletePrefix {
                table: table.0,
                prefix,
            },
        }
    }
}

/// The log file, open for the writer thread.
pub(super) struct CommitLog {
    file: File,
    path: PathBuf,
    /// The epoch in the header; every record written now carries it.
    epoch: u64,
    /// Where the next record goes.
    end: u64,
    /// Where the last record written starts, until it is taken back or the epoch ends.
    last: Option<u64>,
    /// The next record, reused between batches.
    buffer: Vec<u8>,
}

/// What [`CommitLog::open`] found: the log, and the bytes of the records to replay.
pub(super) struct Opened {
    pub log: CommitLog,
    /// Bodies of the valid records of the current epoch, in order; decode each with
    /// [`decode`].
    pub records: Vec<Vec<u8>>,
}

impl CommitLog {
    /// The log that belongs to the database at `database`.
    pub(super) fn path_for(database: &Path) -> PathBuf {
        let mut name = database.as_os_str().to_owned();
        name.push(".log");
        PathBuf::from(name)
    }

    /// Opens (creating if needed) the log at `path` and reads the records left to replay.
    /// The caller replays them, makes redb durable, then calls [`CommitLog::reset`]
    /// before writing anything.
    pub(super) fn open(path: &Path) -> Result<Opened, StoreError> {
        let error = |what: &str, e: std::io::Error| {
            StoreError::Database(format!("commit log {}: {what}: {e}", path.display()))
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| error("cannot open", e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| error("cannot read", e))?;
        let unwritten = bytes.len() < HEADER_LEN as usize
            || bytes[..HEADER_LEN as usize].iter().all(|&b| b == 0);
        let (epoch, records) = if unwritten {
            // New, or created and cut off before its first header was synced: no record
            // can have been acknowledged through it (records follow a synced header).
            // Emptied, so nothing behind a new header can pass for a record of its epoch.
            file.set_len(0).map_err(|e| error("cannot empty", e))?;
            (0, Vec::new())
        } else {
            let header = bytes
                .get(..HEADER_LEN as usize)
                .filter(|h| h.starts_with(MAGIC));
            let Some(header) = header else {
                return Err(StoreError::Database(format!(
                    "commit log {}: not a headwater commit log (bad header); move it away \
                     only if the database next to it is known to be complete",
                    path.display()
                )));
            };
            let epoch = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            (epoch, valid_records(&bytes[HEADER_LEN as usize..], epoch))
        };
        let log = CommitLog {
            file,
            path: path.to_path_buf(),
            epoch,
            end: HEADER_LEN,
            last: None,
            buffer: Vec::new(),
        };
        Ok(Opened { log, records })
    }

    /// Starts a new epoch: everything logged so far must already be durable in redb.
    /// Durable when this returns, so no older record can be replayed afterwards.
    pub(super) fn reset(&mut self) -> Result<(), StoreError> {
        let epoch = new_epoch(self.epoch);
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&epoch.to_le_bytes());
        self.file
            .write_all_at(&header, 0)
            .map_err(|e| self.error("cannot write the header", e))?;
        self.file
            .sync_data()
            .map_err(|e| self.error("cannot sync", e))?;
        self.epoch = epoch;
        self.end = HEADER_LEN;
        self.last = None;
        Ok(())
    }

    /// Writes one record holding `ops` (not yet durable: see [`CommitLog::sync`]).
    pub(super) fn append<'a>(
        &mut self,
        ops: impl IntoIterator<Item = LoggedOp<'a>>,
    ) -> Result<(), StoreError> {
        self.buffer.clear();
        self.buffer.resize(RECORD_HEADER_LEN, 0);
        for op in ops {
            encode(&mut self.buffer, op)?;
        }
        let body_len = u32::try_from(self.buffer.len() - RECORD_HEADER_LEN)
            .map_err(|_| StoreError::Database("commit log: one batch is over 4 GiB".to_string()))?;
        self.buffer[8..16].copy_from_slice(&self.epoch.to_le_bytes());
        let crc = checksum(self.end, &self.buffer[8..]);
        self.buffer[..4].copy_from_slice(&body_len.to_le_bytes());
        self.buffer[4..8].copy_from_slice(&crc.to_le_bytes());
        let record_len = self.buffer.len() as u64;
        // The end marker travels in the same write; the next record overwrites it.
        self.buffer.extend_from_slice(&[0; RECORD_HEADER_LEN]);
        self.file
            .write_all_at(&self.buffer, self.end)
            .map_err(|e| self.error("cannot write", e))?;
        self.last = Some(self.end);
        self.end += record_len;
        // A huge batch should not pin its buffer for the rest of the process.
        if self.buffer.capacity() > 1 << 20 {
            self.buffer = Vec::new();
        }
        Ok(())
    }

    /// Takes back the record [`CommitLog::append`] just wrote (redb refused its batch): an
    /// end marker goes over its header and the next record starts there.
    pub(super) fn retract(&mut self) -> Result<(), StoreError> {
        let Some(start) = self.last.take() else {
            return Ok(());
        };
        self.file
            .write_all_at(&[0; RECORD_HEADER_LEN], start)
            .map_err(|e| self.error("cannot write", e))?;
        self.end = start;
        Ok(())
    }

    /// Makes every record written so far durable (fdatasync).
    pub(super) fn sync(&self) -> Result<(), StoreError> {
        self.file
            .sync_data()
            .map_err(|e| self.error("cannot sync", e))
    }

    /// Bytes of records written in this epoch.
    pub(super) fn len(&self) -> u64 {
        self.end - HEADER_LEN
    }

    fn error(&self, what: &str, e: std::io::Error) -> StoreError {
        StoreError::Database(format!("commit log {}: {what}: {e}", self.path.display()))
    }
}

/// The bodies of the records of `epoch` in `bytes` (the file after its header), up to
/// the first that is incomplete, corrupt or of another epoch: the tail a crash can leave
/// is ignored.
fn valid_records(bytes: &[u8], epoch: u64) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes
        .get(at..)
        .and_then(|rest| rest.get(..RECORD_HEADER_LEN))
    {
        let body_len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let record_epoch = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        // Checked: on armv7 a garbage length near 4 GiB would wrap a 32-bit usize.
        let end = usize::try_from(body_len)
            .ok()
            .and_then(|len| (at + RECORD_HEADER_LEN).checked_add(len));
        let Some(record) = end.and_then(|end| bytes.get(at..end)) else {
            break;
        };
        let offset = HEADER_LEN + at as u64;
        if record_epoch != epoch || checksum(offset, &record[8..]) != crc {
            break;
        }
        records.push(record[RECORD_HEADER_LEN..].to_vec());
        at += record.len();
    }
    records
}

/// The checksum of a record at file offset `offset` over its epoch and body (`tail`).
fn checksum(offset: u64, tail: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&offset.to_le_bytes());
    hasher.update(tail);
    hasher.finalize()
}

/// A random epoch, different from `previous` and from 0 (the end marker's).
fn new_epoch(previous: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // std seeds every `RandomState` from the operating system's random source; no
    // dependency is needed for 64 bits nobody outside the process can predict.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(previous);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    hasher.write_u64(nanos);
    match hasher.finish() {
        0 => 1,
        epoch if epoch == previous => epoch.wrapping_add(1).max(1),
        epoch => epoch,
    }
}

/// Appends one operation: kind (u8), table name (u8 length, bytes), key (u32 length,
/// bytes), and for a Put the value (u32 length, bytes).
fn encode(out: &mut Vec<u8>, op: LoggedOp<'_>) -> Result<(), StoreError> {
    let (kind, table, key, value) = match op {
        LoggedOp::Put { table, key, value } => (PUT, table, key, Some(value)),
        LoggedOp::Delete { table, key } => (DELETE, table, key, None),
        LoggedOp::DeletePrefix { table, prefix } => (DELETE_PREFIX, table, prefix, None),
    };
    out.push(kind);
    // Table names are the subsystems' constants ("broker.sessions"), far below 256 bytes.
    let table_len = u8::try_from(table.len())
        .map_err(|_| StoreError::Database(format!("table name over 255 bytes: {table}")))?;
    out.push(table_len);
    out.extend_from_slice(table.as_bytes());
    for bytes in std::iter::once(key).chain(value) {
        let len = u32::try_from(bytes.len()).map_err(|_| {
            StoreError::Database(format!("a key or value over 4 GiB in table {table}"))
        })?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
    }
    Ok(())
}

/// The operations of one record body, or an error naming what is malformed (a record
/// that passed its checksum but does not decode was written by something else).
pub(super) fn decode(mut body: &[u8]) -> Result<Vec<LoggedOp<'_>>, StoreError> {
    fn take<'a>(body: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
        if body.len() < n {
            return Err(StoreError::Database(
                "commit log: a record ends inside an operation".to_string(),
            ));
        }
        let (head, rest) = body.split_at(n);
        *body = rest;
        Ok(head)
    }
    fn bytes<'a>(body: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
        let len = u32::from_le_bytes(take(body, 4)?.try_into().expect("4 bytes"));
        take(body, len as usize)
    }
    let mut ops = Vec::new();
    while !body.is_empty() {
        let kind = take(&mut body, 1)?[0];
        let table_len = take(&mut body, 1)?[0];
        let table =
            std::str::from_utf8(take(&mut body, usize::from(table_len))?).map_err(|_| {
                StoreError::Database("commit log: a table name is not UTF-8".to_string())
            })?;
        let key = bytes(&mut body)?;
        ops.push(match kind {
            PUT => LoggedOp::Put {
                table,
                key,
                value: bytes(&mut body)?,
            },
            DELETE => LoggedOp::Delete { table, key },
            DELETE_PREFIX => LoggedOp::DeletePrefix { table, prefix: key },
            other => {
                return Err(StoreError::Database(format!(
                    "commit log: unknown operation kind {other}"
                )));
            }
        });
    }
    Ok(ops)
}

/// Makes the directory entry of a newly created file durable.
pub(super) fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| StoreError::Database(format!("cannot sync {}: {e}", parent.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Table;

    const T: Table = Table("t");

    fn ops() -> Vec<Op> {
        vec![
            Op::Put {
                table: T,
                key: b"a".to_vec(),
                value: b"1".to_vec(),
            },
            Op::Delete {
                table: T,
                key: b"b".to_vec(),
            },
            Op::DeletePrefix {
                table: Table("other"),
                prefix: Vec::new(),
            },
            Op::Put {
                table: T,
                key: Vec::new(),
                value: vec![0xff; 300],
            },
        ]
    }

    /// A new log in a temporary directory (kept as long as the returned guard), started.
    fn fresh_log() -> (tempfile::TempDir, std::path::PathBuf, CommitLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb.log");
        let mut log = CommitLog::open(&path).unwrap().log;
        log.reset().unwrap();
        (dir, path, log)
    }

    fn append(log: &mut CommitLog, ops: &[Op]) -> Result<(), StoreError> {
        log.append(ops.iter().map(LoggedOp::from))
    }

    #[test]
    fn operations_decode_as_encoded() {
        let ops = ops();
        let mut body = Vec::new();
        for op in &ops {
            encode(&mut body, op.into()).unwrap();
        }
        let decoded = decode(&body).unwrap();
        let expected: Vec<LoggedOp<'_>> = ops.iter().map(LoggedOp::from).collect();
        assert_eq!(decoded, expected);
        // Every truncation is an error, never a shorter list or a panic.
        for cut in 1..body.len() {
            if let Ok(partial) = decode(&body[..cut]) {
                assert!(partial.len() < ops.len() && partial == expected[..partial.len()]);
            }
        }
    }

    #[test]
    fn replay_stops_at_a_torn_tail_and_at_records_of_an_older_epoch() {
        let (_dir, path, mut log) = fresh_log();
        let ops = ops();
        append(&mut log, &ops[..2]).unwrap();
        append(&mut log, &ops[2..]).unwrap();
        log.sync().unwrap();
        let written = std::fs::read(&path).unwrap();

        let opened = CommitLog::open(&path).unwrap();
        assert_eq!(opened.records.len(), 2);
        assert_eq!(decode(&opened.records[1]).unwrap().len(), 2);

        // The records end where the end marker (16 zero bytes) begins.
        let records_end = written.len() - RECORD_HEADER_LEN;
        assert!(written[records_end..].iter().all(|&b| b == 0));
        // A crash in the middle of the second record leaves the first.
        for cut in [records_end - 1, records_end - 300] {
            std::fs::write(&path, &written[..cut]).unwrap();
            assert_eq!(
                CommitLog::open(&path).unwrap().records.len(),
                1,
                "cut {cut}"
            );
        }
        // A flipped byte fails the checksum.
        let mut corrupt = written.clone();
        corrupt[records_end - 1] ^= 1;
        std::fs::write(&path, &corrupt).unwrap();
        assert_eq!(CommitLog::open(&path).unwrap().records.len(), 1);

        // After a reset, a shorter record over the old ones ends where the old epoch begins.
        std::fs::write(&path, &written).unwrap();
        let mut log = CommitLog::open(&path).unwrap().log;
        log.reset().unwrap();
        append(&mut log, &ops[1..2]).unwrap();
        log.sync().unwrap();
        let opened = CommitLog::open(&path).unwrap();
        assert_eq!(opened.records.len(), 1);
        assert_eq!(
            decode(&opened.records[0]).unwrap(),
            vec![LoggedOp::from(&ops[1])]
        );
        // A reset with nothing after it replays nothing.
        let mut log = opened.log;
        log.reset().unwrap();
        assert!(CommitLog::open(&path).unwrap().records.is_empty());
    }

    #[test]
    fn a_record_moved_to_another_offset_fails_its_checksum() {
        let (_dir, path, mut log) = fresh_log();
        let ops = ops();
        append(&mut log, &ops[..1]).unwrap();
        let second = log.end as usize;
        append(&mut log, &ops[..1]).unwrap();
        let third = log.end as usize;
        log.sync().unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(CommitLog::open(&path).unwrap().records.len(), 2);
        // The same epoch and body one record earlier, as stale bytes could present them.
        let mut moved = written[..HEADER_LEN as usize].to_vec();
        moved.extend_from_slice(&written[second..third]);
        std::fs::write(&path, &moved).unwrap();
        assert!(CommitLog::open(&path).unwrap().records.is_empty());
    }

    #[test]
    fn a_retracted_record_is_not_replayed_and_the_next_takes_its_place() {
        let (_dir, path, mut log) = fresh_log();
        let ops = ops();
        append(&mut log, &ops[..1]).unwrap();
        append(&mut log, &ops[1..]).unwrap();
        log.retract().unwrap();
        log.sync().unwrap();
        let opened = CommitLog::open(&path).unwrap();
        assert_eq!(opened.records.len(), 1);
        append(&mut log, &ops[1..2]).unwrap();
        log.sync().unwrap();
        let opened = CommitLog::open(&path).unwrap();
        assert_eq!(opened.records.len(), 2);
        assert_eq!(
            decode(&opened.records[1]).unwrap(),
            vec![LoggedOp::from(&ops[1])]
        );
    }

    #[test]
    fn epochs_are_never_zero_nor_repeated() {
        let mut previous = 0;
        for _ in 0..1000 {
            let epoch = new_epoch(previous);
            assert!(epoch != 0 && epoch != previous);
            previous = epoch;
        }
    }

    #[test]
    fn a_log_cut_off_before_its_first_header_opens_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb.log");
        for leftover in [&[0u8; 5][..], &[0u8; 4096][..]] {
            std::fs::write(&path, leftover).unwrap();
            let opened = CommitLog::open(&path).unwrap();
            assert!(opened.records.is_empty());
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        }
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb.log");
        std::fs::write(&path, b"something else entirely").unwrap();
        let Err(e) = CommitLog::open(&path) else {
            panic!("opened a foreign file")
        };
        assert!(e.to_string().contains("not a headwater commit log"), "{e}");
    }
}
