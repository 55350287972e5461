//! The `freeim` binary as a child process: [`FreeimProcess`] for one that serves (started,
//! waited for, signalled, watched until it exits; killed when dropped) and [`run`] for a
//! command that runs to its end (a bad flag, `ctl`, `bench`).
//!
//! `RUST_LOG` is never inherited from the test's environment: a run's stderr is asserted
//! line by line, and a served process logs at `info` unless the test sets it.

use super::{POLL, get, http};
use std::ffi::OsStr;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How long a served process gets to be ready.
const START_WITHIN: Duration = super::WAIT;

/// Numbers the capture files of this test binary's processes.
static CAPTURES: AtomicUsize = AtomicUsize::new(0);

/// Sends `signal` to our child `pid` with kill(2) (no `kill` binary: a bare machine has none).
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

/// The `freeim` binary under test, with no `RUST_LOG` of the test's.
fn freeim(args: &[impl AsRef<OsStr>], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_freeim"));
    command.args(args).env_remove("RUST_LOG").envs(envs.iter().copied()).stdin(Stdio::null());
    command
}

/// A `freeim` process that serves; stdout and stderr go to files, read with
/// [`FreeimProcess::stdout_text`] and [`FreeimProcess::stderr_text`].
pub struct FreeimProcess {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl FreeimProcess {
    /// Runs `freeim args` with `envs` (`RUST_LOG=info` unless `envs` sets it).
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> FreeimProcess {
        let name = |stream: &str| {
            let n = CAPTURES.fetch_add(1, Ordering::Relaxed);
            std::env::temp_dir().join(format!("freeim-test-{}-{n}.{stream}", std::process::id()))
        };
        let (stdout, stderr) = (name("stdout"), name("stderr"));
        let child = freeim(args, &[])
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        FreeimProcess { child, stdout, stderr }
    }

    /// [`FreeimProcess::spawn`], then waits until `addr` answers `/healthz` with `health`.
    pub async fn start(args: &[&str], envs: &[(&str, &str)], addr: &str, health: u16) -> FreeimProcess {
        let mut process = Self::spawn(args, envs);
        let answers = || async move {
            TcpStream::connect(addr).await.is_ok() && http(addr, &get("/healthz")).await.status == health
        };
        process.wait_ready(&format!("/healthz {health} on {addr}"), answers).await;
        process
    }

    /// Waits until something listens on `addr`.
    pub async fn wait_listening(&mut self, addr: &str) {
        self.wait_ready(&format!("a listener on {addr}"), || async move { TcpStream::connect(addr).await.is_ok() })
            .await;
    }

    /// Polls `ready` for [`START_WITHIN`], failing with stderr if the process exits first.
    async fn wait_ready<F, Fut>(&mut self, what: &str, mut ready: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("freeim exited with {status}: {}", self.stderr_text());
            }
            if ready().await {
                return;
            }
            assert!(Instant::now() < deadline, "freeim did not offer {what}: {}", self.stderr_text());
            tokio::time::sleep(POLL).await;
        }
    }

    /// What the process wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM, the graceful stop.
    pub fn terminate(&self) {
        send_signal(self.child.id(), libc::SIGTERM);
    }

    /// Kills it (SIGKILL, a crash) and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (polling, up to `within`) for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "freeim did not exit: {}", self.stderr_text());
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for FreeimProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.stdout);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// How a `freeim` run that went to its end finished.
#[derive(Debug)]
pub struct Finished {
    /// The exit code (`None`: ended by a signal).
    pub code: Option<i32>,
    /// All it wrote to stdout.
    pub stdout: String,
    /// All it wrote to stderr.
    pub stderr: String,
}

impl Finished {
    /// Whether it exited with 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `freeim args` with `envs` to its end, which must come within `within` (else it is
/// killed and the test fails).
pub fn run(args: &[impl AsRef<OsStr>], envs: &[(&str, &str)], within: Duration) -> Finished {
    let child = freeim(args, envs).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    let Ok(output) = finished.recv_timeout(within) else {
        send_signal(pid, libc::SIGKILL);
        let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
        panic!("freeim {args:?} did not exit within {within:?}");
    };
    let output = output.unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    Finished { code: output.status.code(), stdout: text(output.stdout), stderr: text(output.stderr) }
}
