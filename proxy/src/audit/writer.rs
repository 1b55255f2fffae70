//! The writer: one OS thread that takes records off the bounded queue in
//! order, chains them, and writes them to the file and stdout sinks (and
//! hands them to the postgres sink's task), in batches of what the queue
//! holds.
//!
//! Back-pressure, end to end: sessions → queue (`queue_capacity`; `block`
//! waits, `drop` counts) → writer → postgres sink (a bounded channel the
//! writer waits on). A sink that fails is retried, with the batch it was
//! writing, until it works again: records are chained before any sink sees
//! them, so nothing after the queue is ever dropped and every sink receives
//! the same records in the same order.
//!
//! fsync policy: the file is fsynced (`sync_data`) at most
//! `fsync_interval` after a write (at once with `0s`), at every rotation and
//! at shutdown. A process crash loses only what the queue held; a power
//! loss can also lose up to `fsync_interval` of written records.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};

use super::chain::Chain;
use super::record::{Event, Record};

/// Records taken off the queue per batch, at most.
const BATCH: usize = 512;

/// Bytes made room for per record of a batch (a statement line is ~700).
const LINE_ROOM: usize = 800;

/// How long the writer waits after draining the queue before it takes the
/// next records: bounds how late a record is written (and how much of a
/// `block` queue a burst fills) against wake-ups per record.
const LINGER: Duration = Duration::from_millis(10);

/// What the queue carries.
pub enum Entry {
    Record(Record),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
    /// Seal the log, write everything, stop; answered with the last seq and MAC.
    Close(oneshot::Sender<(u64, String)>),
}

/// A batch for the postgres sink: JSON lines, in chain order.
pub struct PgBatch {
    pub lines: String,
    pub count: u64,
    /// Answered once this batch (and all before it) is in the table.
    pub done: Option<oneshot::Sender<()>>,
}

/// The file sink.
pub struct FileSink {
    pub path: PathBuf,
    pub rotate_bytes: u64,
    pub fsync_interval: Duration,
    file: Option<File>,
    size: u64,
    dirty_since: Option<Instant>,
    /// Seq of the first record of the current file.
    first_seq: Option<u64>,
    /// The error of the current outage, logged once.
    failing: bool,
    /// Set while writes fail, for `/readyz`.
    pub health: Arc<AtomicBool>,
}

impl FileSink {
    pub fn new(path: PathBuf, rotate_bytes: u64, fsync_interval: Duration) -> Self {
        Self {
            path,
            rotate_bytes,
            fsync_interval,
            file: None,
            size: 0,
            dirty_since: None,
            first_seq: None,
            failing: false,
            health: Arc::default(),
        }
    }

    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = OpenOptions::new().create(true).append(true).read(true).open(&self.path)?;
            let len = f.metadata()?.len();
            if len > 0 && !ends_with_newline(&self.path, len)? {
                // A line cut by a crash stays (verify reports it); ours start afresh.
                f.write_all(b"\n")?;
            }
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        self.file.as_mut().ok_or_else(|| std::io::Error::other("file sink not open"))
    }

    /// Writes `text` whole, retrying until it is written: a failed write is
    /// cut back to the last whole record before the next attempt.
    fn write(&mut self, text: &str, first_seq: u64) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.try_write(text) {
                Ok(()) => {
                    if self.failing {
                        tracing::info!(file = %self.path.display(), "audit file sink recovered");
                        self.failing = false;
                        self.health.store(false, Ordering::Relaxed);
                    }
                    self.first_seq.get_or_insert(first_seq);
                    return;
                }
                Err(e) => {
                    if !self.failing {
                        tracing::error!(
                            file = %self.path.display(), error = %e,
                            "audit file sink failing; records wait in the queue and are written \
                             when it recovers"
                        );
                        self.failing = true;
                        self.health.store(true, Ordering::Relaxed);
                    }
                    if let Some(f) = &self.file {
                        let _ = f.set_len(self.size);
                    }
                    self.file = None;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn try_write(&mut self, text: &str) -> std::io::Result<()> {
        let f = self.open()?;
        f.write_all(text.as_bytes())?;
        self.size += text.len() as u64;
        self.dirty_since.get_or_insert_with(Instant::now);
        if self.fsync_interval.is_zero() {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty_since.take().is_some() {
            if let Some(f) = &self.file {
                f.sync_data()?;
            }
        }
        Ok(())
    }

    /// When the next fsync is due.
    fn sync_due(&self) -> Option<Instant> {
        self.dirty_since.map(|t| t + self.fsync_interval)
    }

    /// Closes the current file (its last record is a rotation seal) and
    /// renames it `FILE.<seq of its first record>`.
    fn rotate(&mut self) {
        let _ = self.sync();
        self.file = None;
        let first = self.first_seq.take().unwrap_or(0);
        let mut to = self.path.clone().into_os_string();
        to.push(format!(".{first:020}"));
        if let Err(e) = std::fs::rename(&self.path, &to) {
            tracing::error!(file = %self.path.display(), error = %e, "audit file rotation failed");
        }
        self.size = 0;
    }
}

fn ends_with_newline(path: &std::path::Path, len: u64) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(len - 1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

/// Everything the writer thread owns.
pub struct Writer {
    pub chain: Chain,
    pub file: Option<FileSink>,
    pub stdout: bool,
    pub postgres: Option<mpsc::Sender<PgBatch>>,
    pub depth: prometheus::IntGauge,
    /// `pgwarden_audit_events_total{sink}`: file, stdout, postgres (the
    /// last counted by its task).
    pub events: [IntCounter; 2],
    /// Records taken per batch: [`BATCH`], or the queue's capacity when
    /// smaller, so that a full small queue is never mistaken for a drained
    /// one (the writer would linger with sessions waiting on it).
    pub batch: usize,
}

/// A batch chained and cut into files: `(text, first seq, rotate after)`.
struct Segment {
    text: String,
    first_seq: u64,
    count: u64,
    rotate: bool,
}

impl Writer {
    /// Runs on its own thread until the queue closes or a Close arrives.
    pub fn run(mut self, mut rx: mpsc::Receiver<Entry>) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "audit writer cannot start; audit records are lost");
                return;
            }
        };
        rt.block_on(async move {
            let batch = self.batch.clamp(1, BATCH);
            let mut entries = Vec::with_capacity(batch);
            loop {
                let due = self.file.as_ref().and_then(FileSink::sync_due);
                let got = match due {
                    Some(at) => tokio::select! {
                        n = rx.recv_many(&mut entries, batch) => n,
                        _ = tokio::time::sleep_until(at.into()) => {
                            if let Some(f) = self.file.as_mut() {
                                let _ = f.sync();
                            }
                            continue;
                        }
                    },
                    None => rx.recv_many(&mut entries, batch).await,
                };
                if got == 0 {
                    // Every sender is gone without a Close: seal anyway.
                    self.close().await;
                    return;
                }
                self.depth.sub(got as i64);
                let mut segments = vec![];
                let mut left = got;
                for entry in entries.drain(..) {
                    left -= 1;
                    match entry {
                        Entry::Record(r) => self.chain_into(&r, &mut segments, left + 1),
                        Entry::Flush(done) => {
                            self.write(std::mem::take(&mut segments), None).await;
                            let _ = done.send(());
                        }
                        Entry::Close(done) => {
                            self.write(std::mem::take(&mut segments), None).await;
                            let last = self.close().await;
                            let _ = done.send(last);
                            return;
                        }
                    }
                }
                self.write(segments, None).await;
                if got < batch {
                    // The queue is drained: let records gather for a moment
                    // rather than be woken for each one (a futex wake per
                    // statement on the sessions' threads otherwise).
                    tokio::time::sleep(LINGER).await;
                }
            }
        });
    }

    /// Chains `r` into the last segment; `left` records of the batch, this
    /// one included, are still to come (room is made for them at once).
    fn chain_into(&mut self, r: &Record, segments: &mut Vec<Segment>, left: usize) {
        if segments.last().is_none_or(|s| s.rotate) {
            segments.push(Segment {
                text: String::with_capacity(left * LINE_ROOM),
                first_seq: self.chain.seq + 1,
                count: 0,
                rotate: false,
            });
        }
        let Some(seg) = segments.last_mut() else { return };
        self.chain.append(r, &mut seg.text);
        seg.count += 1;
        if let Some(f) = &self.file {
            if f.size + seg.text.len() as u64 >= f.rotate_bytes {
                let seal = Record::new(Event::Seal, None, "ok").reason("rotate");
                self.chain.append(&seal, &mut seg.text);
                seg.count += 1;
                seg.rotate = true;
            }
        }
    }

    async fn write(&mut self, segments: Vec<Segment>, done: Option<oneshot::Sender<()>>) {
        let mut done = done;
        let n = segments.len();
        for (i, seg) in segments.into_iter().enumerate() {
            if let Some(f) = self.file.as_mut() {
                f.write(&seg.text, seg.first_seq);
                self.events[0].inc_by(seg.count);
                if seg.rotate {
                    f.rotate();
                }
            }
            if self.stdout {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(seg.text.as_bytes()).and_then(|()| out.flush());
                self.events[1].inc_by(seg.count);
            }
            if let Some(pg) = &self.postgres {
                let done = if i + 1 == n { done.take() } else { None };
                let batch = PgBatch { lines: seg.text, count: seg.count, done };
                if pg.send(batch).await.is_err() {
                    tracing::error!("audit postgres sink stopped; its records are lost");
                }
            }
        }
        if let Some(d) = done {
            let _ = d.send(());
        }
    }

    /// Writes the shutdown seal, fsyncs, waits for the postgres sink.
    async fn close(&mut self) -> (u64, String) {
        let seal = Record::new(Event::Seal, None, "ok").reason("shutdown");
        let mut text = String::new();
        let first_seq = self.chain.seq + 1;
        self.chain.append(&seal, &mut text);
        let seg = Segment { text, first_seq, count: 1, rotate: false };
        let (tx, rx) = oneshot::channel();
        let wait = self.postgres.is_some();
        self.write(vec![seg], Some(tx)).await;
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.sync() {
                tracing::error!(error = %e, "audit file fsync at shutdown failed");
            }
        }
        if wait {
            let _ = rx.await;
        }
        (self.chain.seq, self.chain.prev.clone())
    }
}
