//! A real `redis-server` on a free port, in its own temporary directory, that
//! tests can kill, restart (empty, same port), pause and resume. Dropping it
//! kills the process and removes the directory.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    spec: Spec,
}

/// How to run a server beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// Extra `redis-server` arguments (a cluster node's, TLS), kept for restarts.
    pub args: Vec<String>,
    /// Up once it accepts TCP connections, not once it answers PING on plain
    /// TCP (for a TLS-only or password-protected server).
    pub tcp_probe: bool,
    /// Killed by the kernel when the thread that started it ends (for
    /// servers shared by a whole test binary, which no `Drop` stops).
    pub die_with_thread: bool,
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind :0").local_addr().unwrap().port()
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(free_port(), Spec::default())
    }

    /// A server on `port`, run as `spec` says.
    pub fn start_with(port: u16, spec: Spec) -> Self {
        let dir = std::env::temp_dir().join(format!("presence-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = Self { port, dir, child: None, spec };
        server.spawn();
        server
    }

    /// Its own temporary directory (configuration files, logs).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn spawn(&mut self) {
        let log = self.dir.join("redis.log");
        let mut command = Command::new("redis-server");
        if self.spec.die_with_thread {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.spec.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (run .ci/run, or apt-get install redis-server)");
        self.child = Some(child);
        let what = format!("redis-server on port {} answers PING", self.port);
        super::poll::until_blocking(&what, Duration::from_secs(10), || {
            super::poll::when(self.ping(), format_args!("log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()))
        });
    }

    fn ping(&self) -> bool {
        if self.spec.tcp_probe {
            return std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A plain connection for inspecting what the engine wrote.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().expect("connect to test redis")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.pid().to_string()]).status().expect("kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// SIGKILL: the data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: the server stops answering, connections stay open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = Command::new("kill").args(["-CONT", &self.pid().to_string()]).status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
