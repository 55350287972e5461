//! A real `redis-server` child process on a free loopback port, which a test can kill,
//! restart (empty, or from an append-only file), freeze and read raw: assertions on exact
//! key state go through here, not through the library under test.

use super::{POLL, WAIT, free_port, send_signal};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// A `redis-server` child process; killed when dropped.
pub struct RedisServer {
    /// The loopback port it listens on, the same across restarts.
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port, with no persistence.
    pub fn start() -> Self {
        let mut server = RedisServer { port: free_port(), child: None };
        server.restart(None);
        server
    }

    /// Starts one on a free port that keeps an append-only file in `data_dir`, written on
    /// every command (see [`RedisServer::restart`]).
    pub fn start_persistent(data_dir: &Path) -> Self {
        let mut server = RedisServer { port: free_port(), child: None };
        server.restart(Some(data_dir));
        server
    }

    /// Its `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it again on the same port, once it was killed. With no `data_dir` it comes
    /// back empty (nothing is persisted). With one, it keeps an append-only file there,
    /// written on every command: after a kill, the next restart from the same directory
    /// comes back with every write, as a production Redis does after a crash.
    pub fn restart(&mut self, data_dir: Option<&Path>) {
        assert!(self.child.is_none(), "redis-server is already running");
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.args(["--port", &port, "--bind", "127.0.0.1"]);
        match data_dir {
            None => command.args(["--save", "", "--appendonly", "no"]),
            Some(dir) => {
                command.arg("--dir").arg(dir).args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            }
        };
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        self.child = Some(child.expect("redis-server must be installed (scripts/test.sh installs it)"));
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(POLL);
        }
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): its connections stay open but nothing answers, as with a
    /// frozen host or a dropped route. [`RedisServer::resume`] undoes it.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        send_signal(self.child.as_ref().expect("redis-server is running").id(), signal);
    }

    /// A plain synchronous connection for asserting exact state.
    pub fn conn(&self) -> ::redis::Connection {
        self.try_conn().unwrap()
    }

    fn try_conn(&self) -> ::redis::RedisResult<::redis::Connection> {
        ::redis::Client::open(self.url())?.get_connection()
    }

    /// Runs one raw command and returns its reply.
    pub fn cmd<T: ::redis::FromRedisValue>(&self, args: &[&str]) -> T {
        raw_command(args).query(&mut self.conn()).unwrap()
    }

    /// A hash as sorted (field, value) pairs.
    pub fn hash(&self, key: &str) -> Vec<(String, String)> {
        self.try_hash(key).unwrap()
    }

    /// [`RedisServer::hash`], or empty while Redis cannot be reached or answer.
    pub fn hash_if_up(&self, key: &str) -> Vec<(String, String)> {
        self.try_hash(key).unwrap_or_default()
    }

    fn try_hash(&self, key: &str) -> ::redis::RedisResult<Vec<(String, String)>> {
        let mut pairs: Vec<(String, String)> = raw_command(&["HGETALL", key]).query(&mut self.try_conn()?)?;
        pairs.sort();
        Ok(pairs)
    }

    /// How many times Redis has run `command` (lowercase, from `INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = self.cmd(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// A hash's fields, sorted.
    pub fn fields(&self, key: &str) -> Vec<String> {
        let mut fields: Vec<String> = self.cmd(&["HKEYS", key]);
        fields.sort();
        fields
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `args` as one command: its name, then its arguments.
fn raw_command(args: &[&str]) -> ::redis::Cmd {
    let mut cmd = ::redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd
}
