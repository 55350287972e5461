//! What `freeim bench all` starts for itself: a private `redis-server`, gateway nodes
//! (`freeim server`, this very binary) and raw baseline servers, each on free ports, each a
//! child process that is killed when its handle is dropped.

use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a child may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A free TCP port on 127.0.0.1 (bound and released; the race window is tiny).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct free ports on 127.0.0.1: all held bound until every one is picked, since a
/// port released can be handed out again at once (two nodes given one port: the second
/// cannot listen, and the first answers its health check and gets both shares).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// A child process of the bench: `program` run so that it dies with the bench, even when
/// the bench itself is killed or interrupted (`PR_SET_PDEATHSIG`), so no node, worker or
/// Redis outlives a run.
pub fn child(program: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe and touches no memory.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
}

/// A child process killed on drop.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it (SIGKILL: no cleanup, as in a crash) and waits until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (the graceful stop) and returns at once.
    pub fn terminate(&self) {
        // SAFETY: kill(2) with a valid signal number touches no memory of this process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
    }

    /// `None` while it runs; once it has exited (reaped), whether it exited with success.
    pub fn exit_status(&mut self) -> Option<bool> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(status.success()),
            Err(_) => Some(false),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where children write their logs (`$TMPDIR/freeim-bench-PID/`).
pub fn log_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("freeim-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn log_file(name: &str) -> Stdio {
    // Appended to: a restarted node's log follows its first run's.
    match std::fs::OpenOptions::new().create(true).append(true).open(log_dir().join(name)) {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::null(),
    }
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while !ready() || matches!(child.try_wait(), Ok(Some(_))) {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{what} exited at start ({status}); see {}", log_dir().display());
        }
        if Instant::now() > deadline {
            bail!("{what} did not start within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A private Redis (never the system one on 6379): no persistence.
pub struct Redis {
    /// Its process.
    pub proc: Proc,
    /// Its URL.
    pub url: String,
}

impl Redis {
    /// Starts `redis-server` on a free port.
    pub fn start() -> anyhow::Result<Redis> {
        let port = free_port()?;
        let mut child = child("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--maxclients", "10000"])
            .stdout(log_file(&format!("redis-{port}.log")))
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (is it installed?)")?;
        wait_until("redis-server", || TcpStream::connect(("127.0.0.1", port)).is_ok(), &mut child)?;
        Ok(Redis { proc: Proc { child }, url: format!("redis://127.0.0.1:{port}/0") })
    }
}

/// Gateway nodes (`freeim server`) sharing one Redis.
pub struct Nodes {
    /// The processes, in node order.
    pub procs: Vec<Proc>,
    /// Node names (`127.0.0.1:PORT`), in routing order.
    pub names: Vec<String>,
    redis: String,
    /// More `freeim server` flags, for every node.
    flags: Vec<String>,
}

impl Nodes {
    /// Starts `k` nodes on free ports; returns when each says `/healthz` 200.
    pub fn start(k: usize, redis: &str) -> anyhow::Result<Nodes> {
        Nodes::start_with(k, redis, Vec::new())
    }

    /// [`Nodes::start`], each node also given `flags`.
    pub fn start_with(k: usize, redis: &str, flags: Vec<String>) -> anyhow::Result<Nodes> {
        let names: Vec<String> = free_ports(k)?.into_iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut nodes = Nodes { procs: Vec::new(), names, redis: redis.to_owned(), flags };
        for i in 0..k {
            let proc = nodes.spawn(i)?;
            nodes.procs.push(proc);
        }
        Ok(nodes)
    }

    /// Starts node `i` again (after [`Proc::kill`]); returns when it is healthy.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.procs[i] = self.spawn(i)?;
        Ok(())
    }

    fn spawn(&self, i: usize) -> anyhow::Result<Proc> {
        let name = &self.names[i];
        let mut command = child(std::env::current_exe()?);
        command.args(["server", "--redis", &self.redis, "--server", name, "--servers", &self.names.join(",")]);
        // More nodes than cores (53 on this 2-core box for a million): one worker thread
        // each, so no node wakes a second thread of its own to steal work.
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        if self.names.len() > cores {
            command.args(["--threads", "1"]);
        }
        command.args(&self.flags);
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log_file(&format!("node-{}.log", name.replace(':', "-"))))
            .spawn()
            .context("cannot start a gateway node")?;
        let addr: SocketAddr = name.parse()?;
        wait_until(&format!("node {name}"), || healthy(addr), &mut child)?;
        Ok(Proc { child })
    }

    /// Process ids, in node order.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }
}

/// `GET /healthz` answers 200 (the node is subscribed to its channel).
fn healthy(addr: SocketAddr) -> bool {
    get(addr, "/healthz", Duration::from_millis(500)).is_some_and(|answer| answer.starts_with("HTTP/1.1 200"))
}

/// The answer (head and body) to `GET path` at `addr`, read until the node closes or for
/// `wait`; `None` when it cannot be had.
pub fn get(addr: SocketAddr, path: &str, wait: Duration) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, wait).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (!answer.is_empty()).then(|| String::from_utf8_lossy(&answer).into_owned())
}

/// Node `addr`'s `freeim_connections` gauge, from `/metrics` (waiting up to 10 s: a node
/// among 53 on a busy 2-core box can take seconds to answer).
pub fn node_connections(addr: SocketAddr) -> Option<u64> {
    let metrics = get(addr, "/metrics", Duration::from_secs(10))?;
    metrics.lines().find_map(|l| l.strip_prefix("freeim_connections "))?.trim().parse().ok()
}

/// Raw baseline servers (`freeim bench raw-server`).
pub struct RawServers {
    /// The processes, in node order.
    pub procs: Vec<Proc>,
    /// WebSocket addresses (`127.0.0.1:PORT`), in routing order.
    pub names: Vec<String>,
    /// Control addresses, in the same order.
    pub controls: Vec<SocketAddr>,
}

impl RawServers {
    /// Starts `k` raw servers on free ports.
    pub fn start(k: usize) -> anyhow::Result<RawServers> {
        let exe = std::env::current_exe()?;
        let mut servers = RawServers { procs: Vec::new(), names: Vec::new(), controls: Vec::new() };
        for _ in 0..k {
            let ports = free_ports(2)?;
            let (ws, control) = (ports[0], ports[1]);
            let name = format!("127.0.0.1:{ws}");
            let control: SocketAddr = format!("127.0.0.1:{control}").parse()?;
            let mut child = child(&exe)
                .args(["bench", "raw-server", "--listen", &name, "--control", &control.to_string()])
                .stdout(Stdio::null())
                .stderr(log_file(&format!("raw-{ws}.log")))
                .spawn()
                .context("cannot start a raw server")?;
            let addr: SocketAddr = name.parse()?;
            wait_until("raw server", || TcpStream::connect(addr).is_ok(), &mut child)?;
            servers.procs.push(Proc { child });
            servers.names.push(name);
            servers.controls.push(control);
        }
        Ok(servers)
    }

    /// Process ids, in node order.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }
}
