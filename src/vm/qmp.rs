//! A minimal QMP (QEMU Machine Protocol) client over QEMU's `-qmp unix:PATH` socket.
//!
//! QMP is line-delimited JSON: QEMU greets with `{"QMP": {...}}`, the client must send
//! `qmp_capabilities` before any other command, and every command is answered by one
//! `{"return": ...}` or `{"error": {"class", "desc"}}` object. Asynchronous events
//! (`{"event": ...}`) may arrive at any time in between; they are skipped here. The lab
//! uses it to ask guests to power down (`system_powerdown`, the ACPI power button) and to
//! learn that QEMU finished starting: QEMU answers commands only once its main loop runs,
//! that is after every `-netdev` (host forwards included) was set up.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// A QMP session in command mode (capabilities negotiated).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// QEMU answered a command with an error object.
#[derive(Debug, thiserror::Error)]
#[error("QMP {command}: {class}: {desc}")]
pub struct QmpError {
    /// The command that failed.
    pub command: String,
    /// QEMU's error class (`GenericError`, `CommandNotFound`, ...).
    pub class: String,
    /// QEMU's description.
    pub desc: String,
}

impl Qmp {
    /// Connects to the QMP socket at `path`, reads the greeting and negotiates
    /// capabilities. Every read and write may take up to `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("connecting to QMP at {}", path.display()))?;
        Qmp::over(stream, timeout).with_context(|| format!("talking QMP at {}", path.display()))
    }

    /// The handshake on an already connected stream (the tests' fake QEMU too).
    fn over(stream: UnixStream, timeout: Duration) -> Result<Qmp> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = q.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!("expected QEMU's QMP greeting, got {greeting}");
        }
        q.execute("qmp_capabilities")?;
        Ok(q)
    }

    /// Runs one command without arguments; returns its `return` value.
    pub fn execute(&mut self, command: &str) -> Result<Value> {
        let mut line = serde_json::to_vec(&json!({ "execute": command }))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .with_context(|| format!("sending QMP {command}"))?;
        loop {
            let msg = self
                .read_message()
                .with_context(|| format!("waiting for QEMU's answer to {command}"))?;
            if let Some(r) = msg.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = msg.get("error") {
                let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                bail!(QmpError {
                    command: command.into(),
                    class: s("class"),
                    desc: s("desc"),
                });
            }
            // An event (or anything else that answers no command): not ours.
        }
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("QEMU closed the QMP connection");
        }
        serde_json::from_str(line.trim_end())
            .with_context(|| format!("parsing QMP message {line:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU: greets, then answers each command line with the next scripted reply
    /// (several lines allowed: events before the answer); returns what it received.
    fn fake_qemu(path: &Path, replies: Vec<&'static str>) -> std::thread::JoinHandle<Vec<Value>> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7, \"minor\": 2, \"micro\": 0}}, \"capabilities\": [\"oob\"]}}\r\n")
                .unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut got = Vec::new();
            for reply in replies {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap() == 0 {
                    break;
                }
                got.push(serde_json::from_str(&l).unwrap());
                s.write_all(reply.as_bytes()).unwrap();
            }
            got
        })
    }

    #[test]
    fn capabilities_then_powerdown_skipping_events() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp");
        let server = fake_qemu(
            &sock,
            vec![
                "{\"return\": {}}\r\n",
                "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"POWERDOWN\"}\r\n{\"return\": {}}\r\n",
            ],
        );
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        assert_eq!(q.execute("system_powerdown").unwrap(), json!({}));
        drop(q);
        let got = server.join().unwrap();
        assert_eq!(
            got,
            vec![
                json!({"execute": "qmp_capabilities"}),
                json!({"execute": "system_powerdown"})
            ]
        );
    }

    #[test]
    fn an_error_reply_names_the_command_and_class() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp");
        let server = fake_qemu(
            &sock,
            vec![
                "{\"return\": {}}\n",
                "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}\n",
            ],
        );
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        let e = q.execute("nope").unwrap_err();
        let qe = e.downcast_ref::<QmpError>().expect("a QmpError");
        assert_eq!(qe.class, "CommandNotFound");
        assert!(e.to_string().contains("nope"), "{e}");
        drop(q);
        server.join().unwrap();
    }

    #[test]
    fn no_greeting_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(600));
            drop(s);
        });
        let t = std::time::Instant::now();
        assert!(Qmp::connect(&sock, Duration::from_millis(200)).is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
        server.join().unwrap();
    }

    #[test]
    fn a_closed_connection_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp");
        let server = fake_qemu(&sock, vec!["{\"return\": {}}\n"]);
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        server.join().unwrap();
        // Either the write meets the closed socket or the read meets its end.
        assert!(q.execute("quit").is_err());
    }
}
