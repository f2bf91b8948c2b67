//! `goodhart` as a child process: its log lines, read on a thread, and a wait for one of them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `goodhart` subcommand; killed (SIGKILL) when dropped.
pub struct Goodhart {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    name: String,
}

impl Goodhart {
    /// Starts `goodhart ARGS…` with `env`; `name` prefixes its log lines in the test output.
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_goodhart"))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .expect("goodhart starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        let prefix = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{prefix}] {line}");
                let _ = tx.send(line);
            }
        });
        Self { child, lines, name: name.to_string() }
    }

    /// The first log line from now on that contains `needle` (at most `within`).
    pub fn wait_for_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("{} never logged {needle:?} within {within:?}", self.name),
            }
        }
    }

    /// `http://ADDR` of a `serve` that logged "listening on http://ADDR".
    pub fn wait_listening(&mut self) -> String {
        let line = self.wait_for_line("listening on http://", Duration::from_secs(60));
        let rest = line.split("listening on http://").nth(1).expect("an address");
        let addr: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
        format!("http://{addr}")
    }

    /// SIGKILL: no chance to checkpoint, flush or say goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Goodhart {
    fn drop(&mut self) {
        self.kill();
    }
}
