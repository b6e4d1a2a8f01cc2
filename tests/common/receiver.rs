//! An application's receiver on loopback (`tests/py/webhook_receiver.py`, which checks
//! signatures with Python's hmac), and the requests it saw.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The secret the test apps sign with.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const RECEIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/webhook_receiver.py");

/// The receiver process and the JSON lines it prints, one per request.
pub struct Receiver {
    child: Child,
    pub port: u16,
    pub lines: mpsc::Receiver<Value>,
}

impl Receiver {
    /// Runs the script with `args` (the script's path first).
    pub fn start_with(args: &[&str]) -> Receiver {
        let mut child = Command::new("python3")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let port = first.trim().parse().expect("the receiver prints its port");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { return };
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    return;
                }
            }
        });
        Receiver { child, port, lines }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The receiver's requests until `until` holds for the last one (or 10 s pass).
pub fn requests_until(receiver: &Receiver, mut until: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut requests = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "not seen: {requests:?}");
        if let Ok(r) = receiver.lines.recv_timeout(Duration::from_millis(100)) {
            let done = until(&r);
            requests.push(r);
            if done {
                return requests;
            }
        }
    }
}
