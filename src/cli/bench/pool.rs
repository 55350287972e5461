//! The coordinator's side of the workers: spawn them (re-executing this binary), send
//! commands, and collect one answer per worker.
//!
//! Each worker's stdout is read by a small thread that forwards parsed answers; answers
//! wait in a per-worker inbox until the coordinator asks for that kind, so progress polls
//! and phase reports can interleave freely.

use super::cluster;
use super::worker::{FromWorker, ToWorker};
use anyhow::{Context, bail};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;

/// Sockets one worker holds at most (the process limit is 20,000 files; a few are needed
/// for Redis, pipes and the runtime).
pub const MAX_PER_WORKER: u64 = 15_000;

/// How long a worker may take to answer a progress poll. A worker answers between its
/// sockets' work, on the same thread; with a million sockets ramping on this box (120
/// processes on 2 cores), 10 s was not enough.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Running workers. Dropping the pool kills them.
pub struct Pool {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    answers: mpsc::UnboundedReceiver<(usize, FromWorker)>,
    inboxes: Vec<VecDeque<FromWorker>>,
}

impl Pool {
    /// Starts `n` workers.
    pub fn spawn(n: usize) -> anyhow::Result<Pool> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let (tx, answers) = mpsc::unbounded_channel();
        let mut pool = Pool { children: Vec::new(), stdins: Vec::new(), answers, inboxes: vec![VecDeque::new(); n] };
        for w in 0..n {
            let mut child = cluster::child(&exe)
                .args(["bench", "worker"])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("cannot start a bench worker")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            pool.stdins.push(child.stdin.take().context("worker stdin")?);
            pool.children.push(child);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str(&line) {
                        Ok(msg) => {
                            let _ = tx.send((w, msg));
                        }
                        Err(e) => eprintln!("bench: worker {w} said {line:?}: {e}"),
                    }
                }
                let _ = tx.send((w, FromWorker::Gone));
            });
        }
        Ok(pool)
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Process ids of the workers (for their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Sends `cmd` to worker `w`.
    pub fn send(&mut self, w: usize, cmd: &ToWorker) -> anyhow::Result<()> {
        let line = serde_json::to_string(cmd)?;
        writeln!(self.stdins[w], "{line}").and_then(|_| self.stdins[w].flush()).context("a bench worker is gone")
    }

    /// Sends `cmd` to every worker.
    pub fn send_all(&mut self, cmd: &ToWorker) -> anyhow::Result<()> {
        (0..self.len()).try_for_each(|w| self.send(w, cmd))
    }

    /// One answer accepted by `pick` from every worker, in worker order; `None` when they
    /// are not all there within `wait` (those received stay queued for the next call).
    pub async fn gather(
        &mut self,
        wait: Duration,
        pick: impl Fn(&FromWorker) -> bool,
    ) -> anyhow::Result<Option<Vec<FromWorker>>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.inboxes.iter().all(|inbox| inbox.iter().any(&pick)) {
                let taken = self.inboxes.iter_mut().map(|inbox| {
                    let i = inbox.iter().position(&pick).unwrap_or(0);
                    inbox.remove(i).unwrap_or(FromWorker::Gone)
                });
                return Ok(Some(taken.collect()));
            }
            match tokio::time::timeout_at(deadline, self.answers.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => bail!("every bench worker is gone"),
                Ok(Some((w, FromWorker::Gone))) => bail!("bench worker {w} exited early"),
                Ok(Some((w, msg))) => self.inboxes[w].push_back(msg),
            }
        }
    }

    /// [`Pool::gather`] that fails instead of returning `None`.
    pub async fn expect(
        &mut self,
        what: &str,
        wait: Duration,
        pick: impl Fn(&FromWorker) -> bool,
    ) -> anyhow::Result<Vec<FromWorker>> {
        self.gather(wait, pick).await?.with_context(|| format!("bench workers did not report {what} within {wait:?}"))
    }

    /// Polls every worker's counters.
    pub async fn progress(&mut self) -> anyhow::Result<Progress> {
        self.send_all(&ToWorker::Poll)?;
        let answers = self.expect("progress", PROGRESS_TIMEOUT, |m| matches!(m, FromWorker::Progress { .. })).await?;
        let mut sum = Progress::default();
        for answer in answers {
            if let FromWorker::Progress { connected, failed, received, closed, current, receipts, pongs } = answer {
                sum.connected += connected;
                sum.failed += failed;
                sum.received += received;
                sum.closed += closed;
                sum.current += current;
                sum.receipts += receipts;
                sum.pongs += pongs;
            }
        }
        Ok(sum)
    }
}

/// Counters summed over the workers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Sockets upgraded.
    pub connected: u64,
    /// Failed connection attempts.
    pub failed: u64,
    /// Messages received since the last reset.
    pub received: u64,
    /// Sockets closed by the server.
    pub closed: u64,
    /// Durable sockets that are current.
    pub current: u64,
    /// Receipts received.
    pub receipts: u64,
    /// Pings answered.
    pub pongs: u64,
}

impl Drop for Pool {
    fn drop(&mut self) {
        let quit = serde_json::to_string(&ToWorker::Quit).unwrap_or_default();
        for stdin in &mut self.stdins {
            let _ = writeln!(stdin, "{quit}");
            let _ = stdin.flush();
        }
        for child in &mut self.children {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
