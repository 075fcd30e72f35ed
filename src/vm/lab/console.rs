//! `lab console`: the terminal connected to a VM's serial console.
//!
//! QEMU serves each lab VM's serial port on a unix socket in the run dir (and logs it to
//! the serial log all the while). This connects stdin and stdout to that socket with no
//! helper program: the terminal goes into raw mode (every key, Ctrl-C included, goes to
//! the guest), and Ctrl-] leaves, as in telnet. QEMU serves one client at a time; a
//! second `lab console` on the same VM sees nothing until the first leaves.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};

/// The key that leaves the console: Ctrl-] (GS, 0x1d), telnet's escape.
pub const ESCAPE: u8 = 0x1d;

/// Why [`relay`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The user pressed Ctrl-].
    Escape,
    /// QEMU closed the console (the VM stopped).
    Closed,
    /// The input ended (stdin was not a terminal) and the console stayed quiet briefly.
    InputEnded,
}

/// Copies `input` to the console socket and the console to `output` until Ctrl-] in the
/// input, the console's end, or the input's end. Each direction runs on its own thread,
/// so a quiet guest never holds up typing and a quiet user never holds up output.
pub fn relay(
    sock: UnixStream,
    mut input: impl Read + Send + 'static,
    mut output: impl Write + Send + 'static,
) -> Result<End> {
    let (tx, rx) = mpsc::channel();
    let mut from_vm = sock.try_clone().context("cloning the console socket")?;
    let tx_out = tx.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match from_vm.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if output.write_all(&buf[..n]).is_err() || output.flush().is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx_out.send(End::Closed);
    });
    let mut to_vm = sock.try_clone().context("cloning the console socket")?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let end = loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => break End::InputEnded,
                Ok(n) => {
                    let chunk = &buf[..n];
                    let (send, end) = match chunk.iter().position(|b| *b == ESCAPE) {
                        Some(i) => (&chunk[..i], Some(End::Escape)),
                        None => (chunk, None),
                    };
                    if to_vm.write_all(send).is_err() {
                        break End::Closed;
                    }
                    if let Some(e) = end {
                        break e;
                    }
                }
            }
        };
        let _ = tx.send(end);
    });
    let mut end = rx.recv().unwrap_or(End::Closed);
    if end == End::InputEnded {
        // Piped input: let the guest answer what it was sent before leaving.
        if let Ok(e) = rx.recv_timeout(Duration::from_secs(1)) {
            end = e;
        }
    }
    // Ends the output thread's read.
    let _ = sock.shutdown(std::net::Shutdown::Both);
    Ok(end)
}

/// The terminal in raw mode for as long as this lives (restored on drop, even on a
/// panic's unwind).
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    /// Raw mode on stdin's terminal; None when stdin is no terminal.
    fn enter() -> Result<Option<RawMode>> {
        let stdin = std::io::stdin();
        if !rustix::termios::isatty(&stdin) {
            return Ok(None);
        }
        let saved = rustix::termios::tcgetattr(&stdin).context("reading the terminal mode")?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw)
            .context("putting the terminal in raw mode")?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// Connects the terminal to the console socket `path` of VM `name` until Ctrl-] or
/// until the VM stops.
pub fn attach(name: &str, path: &Path) -> Result<End> {
    let sock = UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to {name}'s serial console at {}",
            path.display()
        )
    })?;
    eprintln!("mesobake: connected to {name}'s serial console; Ctrl-] leaves");
    let raw = RawMode::enter()?;
    let end = relay(sock, std::io::stdin(), std::io::stdout());
    drop(raw);
    let end = end?;
    match end {
        End::Escape => eprintln!("\nmesobake: left {name}'s console"),
        End::Closed => eprintln!("\nmesobake: {name}'s console closed (the VM stopped)"),
        End::InputEnded => {}
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};

    /// Output that the test can read after the relay's thread wrote it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A fake QEMU console: prints a banner, then echoes what it receives upper-cased.
    fn fake_console(path: &Path) -> std::thread::JoinHandle<Vec<u8>> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"login: ").unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        let _ = s.write_all(&buf[..n].to_ascii_uppercase());
                    }
                }
            }
            got
        })
    }

    #[test]
    fn ctrl_bracket_leaves_and_is_not_sent() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console");
        let server = fake_console(&p);
        let sock = UnixStream::connect(&p).unwrap();
        // A reader that yields the keys, then blocks like a terminal would.
        let (keys_tx, keys_rx) = mpsc::channel::<Vec<u8>>();
        struct Keys(mpsc::Receiver<Vec<u8>>);
        impl Read for Keys {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                let k = self.0.recv().unwrap_or_default();
                b[..k.len()].copy_from_slice(&k);
                Ok(k.len())
            }
        }
        let out = Shared::default();
        let o = out.clone();
        let relay = std::thread::spawn(move || relay(sock, Keys(keys_rx), o).unwrap());
        keys_tx.send(b"root\r".to_vec()).unwrap();
        let t = std::time::Instant::now();
        while !String::from_utf8_lossy(&out.0.lock().unwrap()).contains("ROOT") {
            assert!(t.elapsed() < Duration::from_secs(5), "no echo");
            std::thread::sleep(Duration::from_millis(10));
        }
        keys_tx.send(b"ls\x1dnot sent".to_vec()).unwrap();
        assert_eq!(relay.join().unwrap(), End::Escape);
        assert_eq!(server.join().unwrap(), b"root\rls");
        let shown = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
        assert!(shown.starts_with("login: ROOT"), "{shown:?}");
    }

    #[test]
    fn the_console_closing_ends_the_relay() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console");
        let l = UnixListener::bind(&p).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"reboot: Power down\r\n").unwrap();
        });
        let sock = UnixStream::connect(&p).unwrap();
        // Input that never ends, like an idle terminal.
        struct Idle;
        impl Read for Idle {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_secs(3600));
                Ok(0)
            }
        }
        let out = Shared::default();
        assert_eq!(relay(sock, Idle, out.clone()).unwrap(), End::Closed);
        server.join().unwrap();
        assert_eq!(&*out.0.lock().unwrap(), b"reboot: Power down\r\n");
    }

    #[test]
    fn piped_input_is_sent_and_its_end_ends_the_relay() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console");
        let server = fake_console(&p);
        let sock = UnixStream::connect(&p).unwrap();
        let out = Shared::default();
        let end = relay(sock, &b"uptime\n"[..], out.clone()).unwrap();
        assert_eq!(end, End::InputEnded);
        assert_eq!(server.join().unwrap(), b"uptime\n");
        let shown = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
        assert!(shown.contains("UPTIME"), "{shown:?}");
    }
}
