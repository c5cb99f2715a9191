//! Child processes that cannot outlive the test that started them.
//!
//! Every server is started through [`Supervised::spawn`]: the child gets a
//! parent-death signal (so a test binary killed mid-run takes its servers with
//! it) and is killed and reaped when the guard is dropped, including during a
//! panic unwind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running child process, killed when dropped.
pub struct Supervised {
    name: String,
    child: Child,
    log_path: PathBuf,
}

impl Supervised {
    /// Starts `command` with stdout and stderr appended to `log_path`.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> std::io::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        set_parent_death_signal(&mut command);
        let program = command.get_program().to_owned();
        let child = spawn_from_keeper_thread(command).map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("cannot start {name} ({program:?}): {error}"),
            )
        })?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log_path: log_path.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last lines the process wrote, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// Fails when the process has already exited, quoting its log.
    pub fn ensure_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited with {status}; last log lines:\n{}",
                self.name,
                self.log_tail(40)
            )),
            Err(error) => Err(format!("cannot check on {}: {error}", self.name)),
        }
    }

    /// Polls `probe` until it returns true. Fails at once if the process
    /// exits, and after `timeout` with the last lines of its log.
    pub fn wait_until_ready(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            if probe() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{what} not ready after {timeout:?}; last log lines:\n{}",
                    self.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL if it has not exited in time.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on a pid we spawned and have not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spawns `command` from one thread that lives as long as the process.
///
/// The parent-death signal fires when the *thread* that forked the child
/// exits, not the process: a server started from a test's thread (say, a
/// shared one behind a `OnceLock`) would be killed when that test ends.
fn spawn_from_keeper_thread(command: Command) -> std::io::Result<Child> {
    type Request = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Request>>> =
        std::sync::OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("process-keeper".into())
            .spawn(move || {
                for (mut command, reply) in receiver {
                    let _ = reply.send(command.spawn());
                }
                // Never return: children die with this thread.
                loop {
                    std::thread::park();
                }
            })
            .expect("cannot start the process keeper thread");
        std::sync::Mutex::new(sender)
    });
    let (reply, answer) = std::sync::mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply))
        .map_err(|_| std::io::Error::other("process keeper thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("process keeper thread is gone"))?
}

fn set_parent_death_signal(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("no free loopback port")
}

/// True when something accepts TCP connections on the loopback port.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
