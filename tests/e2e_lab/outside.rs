//! A host-side "outside host" on a lab's private L2 segment, for firewall tests.
//!
//! The lab's VMs share a segment that is a QEMU `socket` netdev on a multicast group over
//! the host's loopback (src/vm/lab.rs). An [`OutsideHost`] joins that segment from a
//! fresh network namespace, with whatever IPv4 addresses a test wants on its interface,
//! so a test can open TCP connections to the guests from addresses inside or outside the
//! cluster network and see what the guests' firewalls do with them.
//!
//! The bridge is a device-less QEMU whose hub joins a tap to the multicast socket: the
//! same code that carries the guests' frames carries ours, and there is no frame pump of
//! our own to get wrong. QEMU opens the socket in the host's namespace (where the group
//! lives, on the host's loopback) and creates the tap there; the tap is then moved into
//! the namespace, and QEMU's file descriptor keeps carrying its frames.
//!
//! Given the cluster's gateway address (no VM has it) plus an outside address, the
//! namespace is where the guests send replies for the outside address (their default
//! route), so a guest that accepts a connection from outside is seen to accept it.
//! Forwarding stays off in the namespace: no guest traffic goes anywhere else.
//!
//! Nothing outlives the test: QEMU and the listeners are killed and the namespace deleted
//! on drop, panics included; QEMU and the listeners also get SIGKILL when the thread that
//! started them ends (`setpriv --pdeathsig`), so a test process killed outright leaves
//! at most its namespace, which the next [`OutsideHost::join`] on this machine removes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// What a TCP connection attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// The three-way handshake completed.
    Connected,
    /// The destination answered with a RST: it is there, the port is closed.
    Refused,
    /// The destination answered ARP during the attempt, but nothing came back to the SYN
    /// within the timeout: what a firewall's drop looks like.
    TimedOut,
    /// Nobody answered ARP for the next hop (or the kernel said host/network
    /// unreachable): the destination is not on the segment, so this proves no firewall.
    Unreachable(String),
    /// Anything else, e.g. the source address is not ours.
    Failed(String),
}

/// Prefix of every name this module gives a namespace or an interface; the sweep of
/// stale namespaces relies on it.
const PREFIX: &str = "mbo";

/// Connects from a bound source and prints one word (and a reason) for [`Reach`].
const CONNECT_PY: &str = r#"
import errno, socket, sys
src, dst, port, t = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket()
try:
    s.bind((src, 0))
except OSError as e:
    print("failed bind", src, e)
    sys.exit()
s.settimeout(t)
try:
    s.connect((dst, port))
    print("connected")
except socket.timeout:
    print("timedout")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        print("unreachable", e)
    else:
        print("failed", e)
"#;

/// Accepts and closes connections; "ready" tells the caller it is listening.
const LISTEN_PY: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"#;

/// A network namespace on a lab segment. See the module doc.
pub struct OutsideHost {
    /// Namespace and interface share this name (short enough for IFNAMSIZ).
    name: String,
    qemu: Option<Child>,
    listeners: Vec<Child>,
}

fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

fn run(c: &mut Command) -> Result<String, String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{c:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{c:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A process that gets SIGKILL when the calling thread ends, so a test killed outright
/// leaves no QEMU or listener behind.
fn tied(argv: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--pdeathsig", "KILL", "--"]).args(argv);
    c
}

/// Deletes namespaces a crashed earlier run left behind: ours by name, from a process
/// that no longer exists.
fn sweep_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some((pid, n)) = ns.strip_prefix(PREFIX).and_then(|r| r.split_once('-')) else {
            continue;
        };
        let ours = !pid.is_empty()
            && !n.is_empty()
            && pid.bytes().chain(n.bytes()).all(|b| b.is_ascii_digit());
        if ours && !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl OutsideHost {
    /// Joins the segment `mcast` ("group:port", as in the lab's state.json) in a fresh
    /// network namespace with these IPv4 addresses (CIDR form) on its interface.
    ///
    /// The QEMU and listeners it starts die when the calling thread ends: create, use
    /// and drop an `OutsideHost` on one thread.
    pub fn join(mcast: &str, addrs: &[&str]) -> Result<OutsideHost, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("{PREFIX}{pid}-{n}");
        if name.len() > 15 {
            return Err(format!("{name}: longer than an interface name may be"));
        }
        if let Some(a) = addrs.iter().find(|a| !a.contains('/')) {
            return Err(format!("{a}: give addresses in CIDR form (a.b.c.d/len)"));
        }
        sweep_stale();
        // A crashed run of a process with our pid used these names too.
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", "dev", &name]);

        ip(&["netns", "add", &name])?;
        // From here on, Drop undoes whatever was done when anything fails.
        let mut host = OutsideHost {
            name,
            qemu: None,
            listeners: Vec::new(),
        };
        host.start_bridge(mcast)?;
        let name = host.name.clone();
        ip(&["link", "set", "dev", &name, "netns", &name])?;
        let mac = format!(
            "02:6d:{:02x}:{:02x}:{:02x}:{:02x}",
            (pid >> 16) & 0xff,
            (pid >> 8) & 0xff,
            pid & 0xff,
            n & 0xff
        );
        // A new namespace copies the host's IPv4 settings, forwarding included.
        host.run(&["sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"])?;
        // IPv6 would only add router solicitations and DAD to the segment; a kernel
        // without IPv6 has nothing to turn off.
        let _ = host.run(&[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
        ]);
        ip(&["-n", &name, "link", "set", "dev", &name, "address", &mac])?;
        for a in addrs {
            ip(&["-n", &name, "addr", "add", a, "dev", &name])?;
        }
        ip(&["-n", &name, "link", "set", "dev", &name, "up"])?;
        ip(&["-n", &name, "link", "set", "dev", "lo", "up"])?;
        let forwarding = host.run(&["cat", "/proc/sys/net/ipv4/ip_forward"])?;
        if forwarding.trim() != "0" {
            return Err(format!("{name}: IPv4 forwarding is {}", forwarding.trim()));
        }
        host.check_bridge()?;
        Ok(host)
    }

    /// Starts QEMU and waits for its tap. The socket netdev comes first on the command
    /// line: QEMU creates netdevs in order and exits on the first that fails, so once
    /// the tap exists, the multicast socket is open.
    fn start_bridge(&mut self, mcast: &str) -> Result<(), String> {
        let name = self.name.clone();
        let socket = format!("socket,id=s,mcast={mcast},localaddr=127.0.0.1");
        let tap = format!("tap,id=t,ifname={name},script=no,downscript=no");
        let child = tied(&[
            "qemu-system-x86_64",
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-netdev",
            &socket,
            "-netdev",
            &tap,
            "-netdev",
            "hubport,id=h0,hubid=0,netdev=s",
            "-netdev",
            "hubport,id=h1,hubid=0,netdev=t",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Read only if QEMU exits; it writes a line or two ("hub 0 with no nics").
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("qemu-system-x86_64 (through setpriv): {e}"))?;
        self.qemu = Some(child);
        let sys = Path::new("/sys/class/net").join(&name);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sys.exists() {
            self.check_bridge()?;
            if Instant::now() > deadline {
                return Err(format!("{name}: QEMU made no tap within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Whether QEMU still runs; if not, what it said.
    fn check_bridge(&mut self) -> Result<(), String> {
        let Some(q) = self.qemu.as_mut() else {
            return Err("no QEMU".into());
        };
        match q.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => {
                let mut err = String::new();
                if let Some(mut e) = q.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                self.qemu = None;
                Err(format!("the bridge QEMU exited ({st}): {}", err.trim()))
            }
            Err(e) => Err(format!("the bridge QEMU: {e}")),
        }
    }

    /// The namespace's name, also its interface's name (for `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace; its stdout, or an error with its stderr.
    pub fn run(&self, argv: &[&str]) -> Result<String, String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv))
    }

    /// Starts a TCP listener on addr:port inside the namespace that accepts and closes
    /// every connection; it lives until drop.
    pub fn listen(&mut self, addr: &str, port: u16) -> Result<(), String> {
        let port_s = port.to_string();
        let mut child = tied(&[
            "ip", "netns", "exec", &self.name, "python3", "-c", LISTEN_PY, addr, &port_s,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("listener: {e}"))?;
        let mut line = String::new();
        let read = child
            .stdout
            .take()
            .map(|o| BufReader::new(o).read_line(&mut line));
        if line.trim() != "ready" {
            kill(&mut child);
            return Err(format!("listener on {addr}:{port} did not start: {read:?}"));
        }
        self.listeners.push(child);
        Ok(())
    }

    /// TCP connect from source address `src` (one of ours) to dst:port within `timeout`.
    pub fn connect(&self, src: &str, dst: &str, port: u16, timeout: Duration) -> Reach {
        // The neighbour entry of the next hop, emptied first, tells afterwards whether
        // anyone answered ARP during this attempt: a timeout means a drop only then.
        let hop = ip(&["-n", &self.name, "route", "get", dst, "from", src])
            .ok()
            .map(|r| {
                let mut w = r.split_whitespace();
                w.find(|t| *t == "via")
                    .and_then(|_| w.next())
                    .unwrap_or(dst)
                    .to_owned()
            });
        if let Some(h) = &hop {
            let _ = ip(&["-n", &self.name, "neigh", "flush", "to", h]);
        }
        let out = match self.run(&[
            "python3",
            "-c",
            CONNECT_PY,
            src,
            dst,
            &port.to_string(),
            &timeout.as_secs_f64().to_string(),
        ]) {
            Ok(o) => o,
            Err(e) => return Reach::Failed(e),
        };
        let out = out.trim();
        let (word, why) = out.split_once(' ').unwrap_or((out, ""));
        match word {
            "connected" => Reach::Connected,
            "refused" => Reach::Refused,
            "unreachable" => Reach::Unreachable(why.to_owned()),
            "timedout" => {
                let Some(h) = hop else {
                    return Reach::Unreachable(format!("no route to {dst}"));
                };
                match ip(&["-n", &self.name, "neigh", "show", "to", &h]) {
                    Ok(n) if n.contains("lladdr") => Reach::TimedOut,
                    Ok(n) => Reach::Unreachable(format!("no ARP reply from {h} ({})", n.trim())),
                    Err(e) => Reach::Failed(e),
                }
            }
            _ => Reach::Failed(out.to_owned()),
        }
    }
}

impl Drop for OutsideHost {
    fn drop(&mut self) {
        for l in &mut self.listeners {
            kill(l);
        }
        // The tap is not persistent: it goes away with QEMU's file descriptor.
        if let Some(q) = self.qemu.as_mut() {
            kill(q);
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("outside host: {e}");
        }
    }
}

/// A random multicast group in 239.255.0.0/16 (site-local) with a UDP port free now.
fn fresh_segment() -> String {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap();
    format!("239.255.{}.{}:{port}", (r >> 8) & 0xff, (r & 0xff).max(1))
}

/// Drops TCP to `port` from `saddr` in the host's namespace with nftables, as the
/// guests' firewall does.
fn drop_from(host: &OutsideHost, saddr: &str, port: u16) -> Result<(), String> {
    host.run(&["nft", "--version"])
        .map_err(|e| format!("nft (Debian package nftables): {e}"))?;
    host.run(&["nft", "add", "table", "inet", "t"])?;
    host.run(&[
        "nft",
        "add chain inet t in { type filter hook input priority 0; policy accept; }",
    ])?;
    host.run(&[
        "nft",
        "add",
        "rule",
        "inet",
        "t",
        "in",
        "ip",
        "saddr",
        saddr,
        "tcp",
        "dport",
        &port.to_string(),
        "drop",
    ])?;
    Ok(())
}

#[test]
fn outside_host_tells_connected_refused_dropped_and_absent_apart() {
    if std::env::var("MESOBAKE_E2E").as_deref() != Ok("1") {
        eprintln!("skipped: set MESOBAKE_E2E=1 (needs root, QEMU, ip, python3)");
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (network namespaces, taps)");
        return;
    }
    let t0 = Instant::now();
    let seg = fresh_segment();
    let mut server = OutsideHost::join(&seg, &["10.77.0.20/24"]).unwrap();
    let client = OutsideHost::join(&seg, &["10.77.0.1/24", "10.99.0.5/24"]).unwrap();
    // Like a guest: replies for outside addresses go to the cluster's gateway.
    ip(&[
        "-n",
        server.name(),
        "route",
        "add",
        "default",
        "via",
        "10.77.0.1",
    ])
    .unwrap();
    server.listen("10.77.0.20", 2181).unwrap();
    eprintln!("outside: two hosts on {seg} in {:?}", t0.elapsed());

    let s = Duration::from_secs(3);
    let check = |src: &str, dst: &str, port: u16, want: Reach| {
        let t = Instant::now();
        let got = client.connect(src, dst, port, s);
        eprintln!(
            "outside: {src} -> {dst}:{port}: {got:?} in {:?}",
            t.elapsed()
        );
        assert_eq!(got, want, "{src} -> {dst}:{port}");
    };
    check("10.77.0.1", "10.77.0.20", 2181, Reach::Connected);
    check("10.77.0.1", "10.77.0.20", 2182, Reach::Refused);
    check("10.99.0.5", "10.77.0.20", 2181, Reach::Connected);
    check("10.99.0.5", "10.77.0.20", 2182, Reach::Refused);

    drop_from(&server, "10.99.0.5", 2181).unwrap();
    check("10.99.0.5", "10.77.0.20", 2181, Reach::TimedOut);
    check("10.99.0.5", "10.77.0.20", 2182, Reach::Refused);
    check("10.77.0.1", "10.77.0.20", 2181, Reach::Connected);

    // Nobody has this address: no ARP reply, which must not pass for a drop.
    let got = client.connect("10.77.0.1", "10.77.0.30", 22, s);
    eprintln!("outside: 10.77.0.1 -> 10.77.0.30:22: {got:?}");
    assert!(matches!(got, Reach::Unreachable(_)), "{got:?}");
    assert!(matches!(
        client.connect("10.88.0.1", "10.77.0.20", 2181, s),
        Reach::Failed(_)
    ));

    // A bridge that cannot start says why, and leaves nothing either.
    let bad = OutsideHost::join("10.1.2.3:4000", &["10.77.0.2/24"]).err();
    eprintln!("outside: not a multicast group: {bad:?}");
    assert!(bad.is_some_and(|e| e.contains("multicast")));

    let names = [server.name().to_owned(), client.name().to_owned()];
    drop(server);
    drop(client);
    let left = ip(&["netns", "list"]).unwrap();
    let links = ip(&["link"]).unwrap();
    for n in names
        .iter()
        .chain([&format!("{PREFIX}{}-2", std::process::id())])
    {
        assert!(!left.contains(n.as_str()), "namespace {n} left: {left}");
        assert!(!links.contains(n.as_str()), "interface {n} left: {links}");
    }
    eprintln!("outside: done in {:?}", t0.elapsed());
}
