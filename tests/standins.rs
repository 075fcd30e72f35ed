//! Tests of the stand-in Mesos and Marathon packages in `ci/standins/`.
//!
//! The end-to-end tests install those packages in place of the real ones, so
//! they are only worth something if they behave like the real ones where
//! mesobake can get things wrong: the file layout and conffiles, the init
//! wrapper turning files into flags, and daemons that refuse bad flags the way
//! Mesos and Marathon do. Each test builds the packages with `build.sh` into its
//! own temporary directory, runs the daemons from the extracted packages on
//! 127.0.0.1 with a free port, and kills every process it started (the whole
//! process group, so the wrapper's logger children go too).

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[path = "common/zookeeper.rs"]
mod zookeeper;
use zookeeper::ZooKeeper;

use serde_json::Value;
use tempfile::TempDir;

const MESOS_DEB: &str = "mesos_1.11.0-0.1.standin_all.deb";
const AVENTER_DEB: &str = "aventer-mesos_1.11.0-0.1.standin_all.deb";
const MARATHON_DEB: &str = "marathon_1.10.17-0.1.standin_all.deb";

/// How long a daemon may take to answer HTTP, or to exit when it should.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Helpers: building and reading the packages.
// ---------------------------------------------------------------------------

fn standins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/standins")
}

/// The three packages, freshly built into a temporary directory.
struct Packages {
    dir: TempDir,
}

impl Packages {
    fn build() -> Packages {
        let dir = tempfile::tempdir().expect("temp dir");
        build_into(dir.path());
        Packages { dir }
    }

    fn deb(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Extracts one package with `dpkg-deb -x` into a new temporary root.
    fn extract(&self, name: &str) -> TempDir {
        let root = tempfile::tempdir().expect("temp dir");
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(self.deb(name))
            .arg(root.path())
            .status()
            .expect("running dpkg-deb -x");
        assert!(status.success(), "dpkg-deb -x {name} failed");
        root
    }
}

fn build_into(out: &Path) {
    let output = Command::new("bash")
        .arg(standins_dir().join("build.sh"))
        .arg(out)
        .output()
        .expect("running ci/standins/build.sh");
    assert!(
        output.status.success(),
        "build.sh failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let output = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("running dpkg-deb");
    assert!(
        output.status.success(),
        "dpkg-deb {args:?} {} failed: {}",
        deb.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("dpkg-deb printed UTF-8")
}

/// A control field, read with `dpkg-deb -f`.
fn field(deb: &Path, name: &str) -> String {
    dpkg_deb(&["-f"], deb)
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")).map(str::to_string))
        .unwrap_or_default()
}

/// A member of the control archive (`conffiles`, `postinst`...), or None.
fn control_member(deb: &Path, member: &str) -> Option<String> {
    let output = Command::new("dpkg-deb")
        .arg("-I")
        .arg(deb)
        .arg(member)
        .output()
        .expect("running dpkg-deb -I");
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One entry of `dpkg-deb -c`.
#[derive(Debug)]
struct Entry {
    mode: String,
    owner: String,
    path: String,
    link: Option<String>,
}

fn contents(deb: &Path) -> Vec<Entry> {
    dpkg_deb(&["-c"], deb)
        .lines()
        .map(|line| {
            // drwxr-xr-x root/root 0 2020-11-24 00:00 ./etc/ [-> target]
            let words: Vec<&str> = line.split_whitespace().collect();
            assert!(words.len() >= 6, "unexpected dpkg-deb -c line: {line}");
            Entry {
                mode: words[0].to_string(),
                owner: words[1].to_string(),
                path: words[5].trim_start_matches('.').to_string(),
                link: (words.len() == 8 && words[6] == "->").then(|| words[7].to_string()),
            }
        })
        .collect()
}

/// The non-directory paths of a package.
fn files(entries: &[Entry]) -> BTreeSet<String> {
    entries
        .iter()
        .filter(|e| !e.mode.starts_with('d'))
        .map(|e| e.path.clone())
        .collect()
}

fn entry<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} is not in the package"))
}

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The `Key=Value` lines of a systemd unit, as `Section.Key=Value`.
fn unit_lines(text: &str) -> BTreeSet<String> {
    let mut section = String::new();
    let mut lines = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_string();
        } else if !line.is_empty() && !line.starts_with('#') {
            lines.insert(format!("{section}.{line}"));
        }
    }
    lines
}

fn assert_unit(text: &str, expected: &[&str]) {
    let actual = unit_lines(text);
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(actual, expected, "unit file:\n{text}");
}

// ---------------------------------------------------------------------------
// Helpers: processes and HTTP.
// ---------------------------------------------------------------------------

/// The real python3 binary. pyenv-style shims need PATH, and some tests run the
/// daemon with a PATH that deliberately lacks things. Debian's /usr/bin/python3
/// comes first: it is what the packaged launchers run, and it has python3-kazoo.
fn python3() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if Path::new("/usr/bin/python3").exists() {
            return "/usr/bin/python3".to_string();
        }
        let output = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed to run the stand-in daemons");
        assert!(output.status.success(), "python3 does not run");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    })
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process in its own process group, with stdout and stderr in files.
/// Dropping it kills the whole group and reaps the child.
struct Proc {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Proc {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the process to exit by itself; it is a failure if it keeps running.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "process did not exit\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `GET path` until it answers, failing if the process exits first.
    fn wait_http(&mut self, port: u16, path: &str) -> (u16, String) {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "daemon exited ({status}) instead of serving\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if let Ok(response) = http_get(port, path) {
                return response;
            }
            if Instant::now() > deadline {
                panic!("daemon never answered {path}\nstderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// wait_http against another loopback address.
    fn wait_http_at(&mut self, ip: &str, port: u16, path: &str) -> (u16, String) {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "daemon exited ({status}) instead of serving\nstderr:\n{}",
                    self.stderr()
                );
            }
            if let Ok(response) = http_get_at(ip, port, path) {
                return response;
            }
            if Instant::now() > deadline {
                panic!("daemon never answered {path}\nstderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        // The group, not just the child: the init wrapper leaves logger(1)
        // processes behind it. kill(1) rather than a syscall crate keeps this
        // file to std; an already-gone group is fine.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command that is expected to exit by itself; returns its status,
/// stdout and stderr.
fn run_to_exit(cmd: Command, dir: &Path, name: &str) -> (ExitStatus, String, String) {
    let mut proc = Proc::spawn(cmd, dir, name);
    let status = proc.wait_exit();
    (status, proc.stdout(), proc.stderr())
}

/// A minimal HTTP/1.0 GET to 127.0.0.1: status code and body.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn get_json(port: u16, path: &str) -> Value {
    let (status, body) = http_get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// A command running the extracted Mesos stand-in as PROGRAM (mesos-master,
/// mesos-agent), with a clean environment so no stray MESOS_* gets in.
fn mesos(root: &Path, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(python3());
    cmd.arg(root.join("usr/lib/mesos-standin/standin.py"))
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    cmd
}

/// python3 for a kazoo client of the test's own, under coreutils' `timeout`: a kazoo
/// call on a connection that never comes back waits forever, and a hung client would
/// hang the whole test binary (seen when two test runs shared the machine).
fn kazoo_python() -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", "120", python3()]);
    cmd
}

fn marathon(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(python3());
    cmd.arg(root.join("usr/share/marathon/lib/marathon_standin.py"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    cmd
}

fn write_executable(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

// ---------------------------------------------------------------------------
// Packaging.
// ---------------------------------------------------------------------------

#[test]
fn build_is_reproducible() {
    let first = Packages::build();
    let second = tempfile::tempdir().unwrap();
    build_into(second.path());
    for deb in [MESOS_DEB, AVENTER_DEB, MARATHON_DEB] {
        let a = fs::read(first.deb(deb)).unwrap();
        let b = fs::read(second.path().join(deb)).unwrap();
        assert!(a == b, "{deb} differs between two builds");
    }
}

#[test]
fn mesosphere_package_layout() {
    let packages = Packages::build();
    let deb = packages.deb(MESOS_DEB);
    assert_eq!(field(&deb, "Package"), "mesos");
    assert_eq!(field(&deb, "Version"), "1.11.0-0.1.standin");
    assert_eq!(field(&deb, "Architecture"), "all");
    // The daemons talk to ZooKeeper through Debian's kazoo.
    assert_eq!(field(&deb, "Depends"), "python3, python3-kazoo");
    assert!(field(&deb, "Description").contains("TEST STAND-IN"));
    assert!(field(&deb, "Description").contains("NOT Apache Mesos"));

    let entries = contents(&deb);
    assert!(
        entries.iter().all(|e| e.owner == "root/root"),
        "{entries:?}"
    );
    let expected: BTreeSet<String> = [
        "/etc/default/mesos",
        "/etc/default/mesos-master",
        "/etc/default/mesos-slave",
        "/etc/init/mesos-master.conf",
        "/etc/init/mesos-slave.conf",
        "/etc/mesos/zk",
        "/etc/mesos-master/quorum",
        "/etc/mesos-master/work_dir",
        "/etc/mesos-slave/work_dir",
        "/lib/systemd/system/mesos-master.service",
        "/lib/systemd/system/mesos-slave.service",
        "/usr/bin/mesos-init-wrapper",
        "/usr/lib/mesos-standin/flavour",
        "/usr/lib/mesos-standin/standin.py",
        "/usr/sbin/mesos-agent",
        "/usr/sbin/mesos-master",
        "/usr/sbin/mesos-slave",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(files(&entries), expected);
    assert_eq!(
        entry(&entries, "/usr/sbin/mesos-slave").link.as_deref(),
        Some("mesos-agent")
    );
    for dir in ["/var/lib/mesos/", "/var/log/mesos/"] {
        assert!(entry(&entries, dir).mode.starts_with('d'));
    }
    for exe in [
        "/usr/bin/mesos-init-wrapper",
        "/usr/sbin/mesos-master",
        "/usr/sbin/mesos-agent",
    ] {
        assert_eq!(entry(&entries, exe).mode, "-rwxr-xr-x", "{exe}");
    }
    assert!(
        !entries.iter().any(|e| e.path.contains("mesos-agent/")),
        "no /etc/mesos-agent here"
    );

    // fpm's --config-files etc/: everything under /etc is a conffile.
    let conffiles: BTreeSet<String> = control_member(&deb, "conffiles")
        .expect("conffiles")
        .lines()
        .map(str::to_string)
        .collect();
    let etc: BTreeSet<String> = expected
        .iter()
        .filter(|p| p.starts_with("/etc/"))
        .cloned()
        .collect();
    assert_eq!(conffiles, etc);

    let root = packages.extract(MESOS_DEB);
    let root = root.path();
    assert_eq!(read(root, "/etc/mesos/zk"), "zk://localhost:2181/mesos\n");
    assert_eq!(
        read(root, "/etc/default/mesos"),
        "LOGS=/var/log/mesos\nULIMIT=\"-n 8192\"\n"
    );
    assert_eq!(
        read(root, "/etc/default/mesos-master"),
        "PORT=5050\nZK=`cat /etc/mesos/zk`\n"
    );
    assert_eq!(
        read(root, "/etc/default/mesos-slave"),
        "MASTER=`cat /etc/mesos/zk`\n"
    );
    assert_eq!(read(root, "/etc/mesos-master/work_dir"), "/var/lib/mesos\n");
    assert_eq!(read(root, "/etc/mesos-master/quorum"), "1\n");
    assert_eq!(read(root, "/etc/mesos-slave/work_dir"), "/var/lib/mesos\n");

    let common = [
        "Unit.After=network.target",
        "Unit.Wants=network.target",
        "Service.Restart=always",
        "Service.RestartSec=20",
        "Service.LimitNOFILE=16384",
        "Install.WantedBy=multi-user.target",
    ];
    let mut master: Vec<&str> = common.to_vec();
    master.extend([
        "Unit.Description=Mesos Master",
        "Service.ExecStart=/usr/bin/mesos-init-wrapper master",
    ]);
    assert_unit(
        &read(root, "/lib/systemd/system/mesos-master.service"),
        &master,
    );
    let mut slave: Vec<&str> = common.to_vec();
    slave.extend([
        "Unit.Description=Mesos Slave",
        "Service.ExecStart=/usr/bin/mesos-init-wrapper slave",
        "Service.KillMode=process",
        "Service.CPUAccounting=true",
        "Service.MemoryAccounting=true",
    ]);
    assert_unit(
        &read(root, "/lib/systemd/system/mesos-slave.service"),
        &slave,
    );

    for role in ["master", "slave"] {
        let job = read(root, &format!("/etc/init/mesos-{role}.conf"));
        for line in [
            "start on stopped rc RUNLEVEL=[2345]".to_string(),
            "respawn".to_string(),
            format!("exec /usr/bin/mesos-init-wrapper {role}"),
        ] {
            assert!(
                job.lines().any(|l| l.trim() == line),
                "{role} job lacks {line:?}:\n{job}"
            );
        }
    }

    let postinst = control_member(&deb, "postinst").expect("postinst");
    assert!(
        postinst.contains("systemctl enable mesos-master mesos-slave"),
        "{postinst}"
    );
    let code: Vec<&str> = postinst
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !code
            .iter()
            .any(|l| l.contains("start") || l.contains("invoke-rc.d") || l.contains("service ")),
        "the postinst must not start anything:\n{postinst}"
    );
}

#[test]
fn aventer_package_layout() {
    let packages = Packages::build();
    let deb = packages.deb(AVENTER_DEB);
    assert_eq!(field(&deb, "Package"), "aventer-mesos");
    assert_eq!(field(&deb, "Version"), "1.11.0-0.1.standin");
    assert_eq!(field(&deb, "Conflicts"), "mesos");
    assert_eq!(field(&deb, "Depends"), "python3, python3-kazoo");
    assert!(field(&deb, "Description").contains("TEST STAND-IN"));

    let entries = contents(&deb);
    let expected: BTreeSet<String> = [
        "/lib/systemd/system/mesos-agent.service",
        "/lib/systemd/system/mesos-master.service",
        "/usr/bin/mesos-agent",
        "/usr/bin/mesos-init-wrapper",
        "/usr/bin/mesos-master",
        "/usr/lib/mesos-standin/flavour",
        "/usr/lib/mesos-standin/standin.py",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Also: no /etc at all (no defaults, no /etc/mesos/zk), no mesos-slave link.
    assert_eq!(files(&entries), expected);
    assert!(
        !entries.iter().any(|e| e.path.starts_with("/etc")),
        "{entries:?}"
    );
    assert!(control_member(&deb, "conffiles").is_none());
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        assert!(
            control_member(&deb, script).is_none(),
            "AVENTER ships no {script}"
        );
    }

    let root = packages.extract(AVENTER_DEB);
    let root = root.path();
    let common = [
        "Unit.After=network.target",
        "Unit.Wants=network.target",
        "Service.Restart=always",
        "Service.RestartSec=20",
        "Service.LimitNOFILE=16384",
        "Install.WantedBy=multi-user.target",
    ];
    let mut master: Vec<&str> = common.to_vec();
    master.extend([
        "Unit.Description=ClusterD Master",
        "Service.ExecStart=/usr/bin/mesos-init-wrapper master",
    ]);
    assert_unit(
        &read(root, "/lib/systemd/system/mesos-master.service"),
        &master,
    );
    let mut agent: Vec<&str> = common.to_vec();
    agent.extend([
        "Unit.Description=ClusterD Agent",
        "Service.ExecStart=/usr/bin/mesos-init-wrapper agent",
        "Service.KillMode=process",
        "Service.CPUAccounting=true",
        "Service.MemoryAccounting=true",
        "Service.Delegate=true",
    ]);
    assert_unit(
        &read(root, "/lib/systemd/system/mesos-agent.service"),
        &agent,
    );
    // The daemon is shared with the Mesosphere package, byte for byte.
    let mesosphere = packages.extract(MESOS_DEB);
    assert_eq!(
        read(root, "/usr/lib/mesos-standin/standin.py"),
        read(mesosphere.path(), "/usr/lib/mesos-standin/standin.py")
    );
}

#[test]
fn marathon_package_layout() {
    let packages = Packages::build();
    let deb = packages.deb(MARATHON_DEB);
    assert_eq!(field(&deb, "Package"), "marathon");
    assert_eq!(field(&deb, "Version"), "1.10.17-0.1.standin");
    // Marathon keeps its leader latch and storage root in ZooKeeper.
    assert_eq!(field(&deb, "Depends"), "python3, python3-kazoo");
    assert_eq!(field(&deb, "Pre-Depends"), "passwd");
    assert!(field(&deb, "Description").contains("TEST STAND-IN"));

    let entries = contents(&deb);
    let expected: BTreeSet<String> = [
        "/etc/default/marathon",
        "/lib/systemd/system/marathon.service",
        "/usr/bin/marathon",
        "/usr/share/marathon/bin/marathon",
        "/usr/share/marathon/lib/marathon_standin.py",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(files(&entries), expected);
    assert_eq!(
        entry(&entries, "/usr/bin/marathon").link.as_deref(),
        Some("../share/marathon/bin/marathon")
    );
    assert_eq!(
        control_member(&deb, "conffiles").expect("conffiles").trim(),
        "/etc/default/marathon"
    );

    let root = packages.extract(MARATHON_DEB);
    let root = root.path();
    let defaults = read(root, "/etc/default/marathon");
    assert!(
        defaults.lines().any(|l| l == "MARATHON_MESOS_USER=root"),
        "{defaults}"
    );
    assert!(
        defaults.lines().any(|l| l.starts_with("#JAVA_OPTS=")),
        "{defaults}"
    );
    let unit = read(root, "/lib/systemd/system/marathon.service");
    let lines = unit_lines(&unit);
    for line in [
        "Unit.Requires=network.target",
        "Service.Type=simple",
        "Service.WorkingDirectory=/usr/share/marathon",
        "Service.EnvironmentFile=/etc/default/marathon",
        "Service.ExecStart=/usr/share/marathon/bin/marathon",
        "Service.Restart=always",
        "Service.RestartSec=60",
        "Service.User=marathon",
        "Service.ExecStartPre=/bin/mkdir -p /run/marathon",
        "Service.PermissionsStartOnly=true",
        "Service.LimitNOFILE=1024",
        "Install.WantedBy=multi-user.target",
    ] {
        assert!(
            lines.contains(line),
            "marathon.service lacks {line}:\n{unit}"
        );
    }
    let postinst = control_member(&deb, "postinst").expect("postinst");
    assert!(
        postinst.contains("systemctl enable marathon.service"),
        "{postinst}"
    );
    assert!(control_member(&deb, "preinst")
        .expect("preinst")
        .contains("useradd --system"));
}

/// Runs a maintainer script with fake systemctl/getent/groupadd/useradd that
/// record their arguments, and returns what was called.
fn run_maintainer_script(deb: &Path, script: &str, arg: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control");
    let status = Command::new("dpkg-deb")
        .arg("-e")
        .arg(deb)
        .arg(&control)
        .status()
        .unwrap();
    assert!(status.success());
    let bin = dir.path().join("bin");
    let calls = dir.path().join("calls");
    for tool in ["systemctl", "groupadd", "useradd"] {
        write_executable(
            &bin.join(tool),
            &format!("#!/bin/sh\necho \"{tool} $*\" >>'{}'\n", calls.display()),
        );
    }
    // getent: nothing exists yet.
    write_executable(
        &bin.join("getent"),
        &format!(
            "#!/bin/sh\necho \"getent $*\" >>'{}'\nexit 2\n",
            calls.display()
        ),
    );
    let output = Command::new("/bin/sh")
        .arg(control.join(script))
        .arg(arg)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    fs::read_to_string(&calls)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn maintainer_scripts_enable_without_starting() {
    let packages = Packages::build();
    let calls = run_maintainer_script(&packages.deb(MESOS_DEB), "postinst", "configure");
    // daemon-reload only runs under a booted systemd, which a build host or a
    // chroot is not; either way the services are enabled and never started.
    let calls: Vec<&String> = calls
        .iter()
        .filter(|c| *c != "systemctl daemon-reload")
        .collect();
    assert_eq!(calls, ["systemctl enable mesos-master mesos-slave"]);

    let calls = run_maintainer_script(&packages.deb(MARATHON_DEB), "postinst", "configure");
    let calls: Vec<&String> = calls
        .iter()
        .filter(|c| *c != "systemctl daemon-reload")
        .collect();
    assert_eq!(calls, ["systemctl enable marathon.service"]);

    let calls = run_maintainer_script(&packages.deb(MARATHON_DEB), "preinst", "install");
    assert!(
        calls.contains(&"groupadd --system marathon".to_string()),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("useradd --system") && c.ends_with(" marathon")),
        "{calls:?}"
    );
}

// ---------------------------------------------------------------------------
// The Mesos daemon.
// ---------------------------------------------------------------------------

/// Arguments, environment, and what stderr must say.
type FailureCase<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn master_flag_errors_are_fatal_like_stout() {
    let packages = Packages::build();
    let root = packages.extract(MESOS_DEB);
    let root = root.path();
    let logs = tempfile::tempdir().unwrap();
    let work = logs.path().join("work");
    let work_dir = format!("--work_dir={}", work.display());

    let cases: Vec<FailureCase> = vec![
        (
            vec!["--ip=127.0.0.1", "--ip=127.0.0.1"],
            vec![],
            "Flag 'ip' is already loaded via name 'ip'",
        ),
        (
            vec!["--foo=bar"],
            vec![],
            "Failed to load unknown flag 'foo'",
        ),
        (
            vec!["--no-foo"],
            vec![],
            "Failed to load unknown flag 'foo' via 'no-foo'",
        ),
        // stout only knows --name=value: `--port 5050` leaves port without value.
        (
            vec!["--port", "5050"],
            vec![],
            "Failed to load non-boolean flag 'port': Missing value",
        ),
        (
            vec!["--port=http"],
            vec![],
            "Failed to load flag 'port': Failed to load value 'http'",
        ),
        (
            vec!["--quorum=0", &work_dir],
            vec![],
            "Flag 'quorum' must be a positive integer",
        ),
        (
            vec!["--quorum=two", &work_dir],
            vec![],
            "Failed to load flag 'quorum'",
        ),
        (
            vec!["--no-hostname_lookup=false"],
            vec![],
            "Failed to load boolean flag 'hostname_lookup'",
        ),
        (
            vec![],
            vec![("MESOS_ZK_SESSION_TIMEOUT", "10sec")],
            "Unknown duration unit 'sec'",
        ),
        // A name given on the command line and in the environment is not a
        // duplicate, but a negated one is a different name to stout.
        (
            vec!["--no-hostname_lookup"],
            vec![("MESOS_HOSTNAME_LOOKUP", "true")],
            "Flag 'hostname_lookup' is already loaded via name",
        ),
        (
            vec!["--zk=zk://127.0.0.1:2181/mesos", &work_dir],
            vec![],
            "Need to specify --quorum for replicated log based registry when using ZooKeeper",
        ),
        (
            vec!["--zk=zk://127.0.0.1:2181/mesos", "--quorum=1"],
            vec![],
            "--work_dir needed for replicated log based registry",
        ),
        (
            vec!["--ip=10.0.0", &work_dir],
            vec![],
            "Parsing LIBPROCESS_IP=10.0.0 failed",
        ),
        (
            vec!["--logging_level=DEBUG"],
            vec![],
            "'DEBUG' is not a valid logging level",
        ),
    ];
    for (index, (args, env, expected)) in cases.into_iter().enumerate() {
        let mut cmd = mesos(root, "mesos-master", &args);
        // Any bind would use a free port, so only the expected error can stop it.
        cmd.env("MESOS_PORT", free_port().to_string())
            .env("MESOS_IP", "127.0.0.1");
        for (key, value) in &env {
            cmd.env(key, value);
        }
        let (status, _, stderr) = run_to_exit(cmd, logs.path(), &format!("case{index}"));
        assert_eq!(status.code(), Some(1), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?} {env:?}: expected {expected:?} in:\n{stderr}"
        );
    }

    // The load errors are printed the way master/main.cpp prints them.
    let (_, _, stderr) = run_to_exit(
        mesos(root, "mesos-master", &["--foo=bar"]),
        logs.path(),
        "usage",
    );
    assert!(stderr.contains("Failed to load unknown flag 'foo'\n\nSee `mesos-master --help` for a list of supported flags."));
}

#[test]
fn master_binding_a_foreign_ip_fails() {
    let packages = Packages::build();
    let root = packages.extract(MESOS_DEB);
    let logs = tempfile::tempdir().unwrap();
    // TEST-NET-1 is never a local address: like Mesos, no bind, no master.
    let port = format!("--port={}", free_port());
    let work = format!("--work_dir={}", logs.path().join("work").display());
    let cmd = mesos(
        root.path(),
        "mesos-master",
        &["--ip=192.0.2.1", &port, &work],
    );
    let (status, _, stderr) = run_to_exit(cmd, logs.path(), "master");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Failed to initialize: Failed to bind on 192.0.2.1:"),
        "{stderr}"
    );
}

#[test]
fn master_serves_the_flags_it_loaded() {
    let packages = Packages::build();
    let root = packages.extract(MESOS_DEB);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let work = dir.path().join("work");
    let log_dir = dir.path().join("log");
    let args = [
        "--ip=127.0.0.1".to_string(),
        format!("--port={port}"),
        "--zk=zk://127.0.0.1:2181/mesos".to_string(),
        "--quorum=1".to_string(),
        format!("--work_dir={}", work.display()),
        format!("--log_dir={}", log_dir.display()),
        "--cluster=from-command-line".to_string(),
        "--no-hostname_lookup".to_string(),
        "--slave_ping_timeout=30secs".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = mesos(root.path(), "mesos-master", &args);
    cmd.env("MESOS_CLUSTER", "from-environment") // loses to the command line
        .env("MESOS_logbufsecs", "5") // lower-case names work too
        .env("MESOS_REGISTRY_FETCH_TIMEOUT", "120secs")
        .env("MESOS_NATIVE_JAVA_LIBRARY", "/usr/lib/libmesos.so"); // not a flag: ignored
    let mut master = Proc::spawn(cmd, dir.path(), "master");

    // Like Mesos, it serves before any leader is elected (no ZooKeeper here).
    let (status, body) = master.wait_http(port, "/health");
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(http_get(port, "/master/health").unwrap().0, 200);
    // Leader-only endpoints answer 503 while no leader is known.
    for path in ["/state", "/master/state", "/redirect", "/master/slaves"] {
        assert_eq!(
            http_get(port, path).unwrap(),
            (503, "No leader elected".to_string()),
            "{path}"
        );
    }

    let flags = &get_json(port, "/master/flags")["flags"];
    assert_eq!(flags["zk"], "zk://127.0.0.1:2181/mesos");
    assert_eq!(flags["quorum"], "1");
    assert_eq!(flags["port"], port.to_string());
    assert_eq!(flags["work_dir"], work.display().to_string());
    assert_eq!(flags["cluster"], "from-command-line");
    assert_eq!(flags["logbufsecs"], "5");
    assert_eq!(flags["hostname_lookup"], "false");
    // Durations print like stout's: 120secs is 2mins.
    assert_eq!(flags["registry_fetch_timeout"], "2mins");
    // A deprecated alias shows under the name it was loaded by.
    assert_eq!(flags["slave_ping_timeout"], "30secs");
    assert!(flags.get("native_java_library").is_none());
    // Defaults are listed too, as in real Mesos.
    assert_eq!(flags["registry"], "replicated_log");
    assert_eq!(get_json(port, "/flags")["flags"], *flags);
    assert_eq!(http_get(port, "/nope").unwrap().0, 404);

    // Without --zk the standalone contender elects the master at once.
    let standalone_port = free_port();
    let args = [
        "--ip=127.0.0.1".to_string(),
        format!("--port={standalone_port}"),
        format!("--work_dir={}", dir.path().join("standalone").display()),
        "--cluster=standalone".to_string(),
        "--no-hostname_lookup".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut standalone = Proc::spawn(mesos(root.path(), "mesos-master", &args), dir.path(), "sa");
    standalone.wait_http(standalone_port, "/health");
    let state = get_json(standalone_port, "/master/state");
    assert_eq!(state["version"], "1.11.0");
    assert_eq!(state["standin"], true);
    assert_eq!(state["cluster"], "standalone");
    assert_eq!(
        state["hostname"], "127.0.0.1",
        "--no-hostname_lookup reports the IP"
    );
    let pid = format!("master@127.0.0.1:{standalone_port}");
    assert_eq!(state["pid"], pid);
    assert_eq!(state["leader"], pid);
    assert_eq!(state["leader_info"]["pid"], pid);
    assert_eq!(state["activated_slaves"], 0);
    assert_eq!(get_json(standalone_port, "/state")["flags"], state["flags"]);
    let (status, _) = http_get(standalone_port, "/master/redirect").unwrap();
    assert_eq!(status, 307);

    // The replicated log's work dir is created, and glog's files go to --log_dir.
    assert!(work.is_dir());
    let info = fs::read_to_string(log_dir.join("mesos-master.INFO")).expect("mesos-master.INFO");
    assert!(info.contains("Flags at startup: "), "{info}");
    // The argv is recorded for the journal.
    assert!(master
        .stderr()
        .contains("mesos-standin: mesos-master argv: [\"--ip=127.0.0.1\""));
}

#[test]
fn agent_needs_master_and_work_dir() {
    let packages = Packages::build();
    let root = packages.extract(MESOS_DEB);
    let dir = tempfile::tempdir().unwrap();
    let work = format!("--work_dir={}", dir.path().join("work").display());
    let port = format!("--port={}", free_port());

    let cmd = mesos(
        root.path(),
        "mesos-agent",
        &["--master=127.0.0.1:5050", &port],
    );
    let (status, _, stderr) = run_to_exit(cmd, dir.path(), "no-work-dir");
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("Flag 'work_dir' is required, but it was not provided"),
        "{stderr}"
    );
    assert!(stderr.contains("See `mesos-agent --help`"), "{stderr}");

    let cmd = mesos(root.path(), "mesos-agent", &[&work, &port]);
    let (status, _, stderr) = run_to_exit(cmd, dir.path(), "no-master");
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("Missing required option `--master` or `--master_detector`"),
        "{stderr}"
    );
}

#[test]
fn agent_docker_containerizer_needs_the_docker_cli() {
    let packages = Packages::build();
    let root = packages.extract(MESOS_DEB);
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-bin");
    fs::create_dir(&empty).unwrap();
    let port = free_port();
    let args = [
        "--master=zk://127.0.0.1:2181/mesos".to_string(),
        format!("--work_dir={}", dir.path().join("work").display()),
        "--ip=127.0.0.1".to_string(),
        format!("--port={port}"),
        "--containerizers=docker,mesos".to_string(),
        "--no-systemd_enable_support".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // A cgroup v1 host, whatever this one is.
    let sysroot = fake_sysroot(&dir.path().join("v1"), false, CGROUP_V1_MOUNTS);

    // No docker on PATH: the agent exits like Mesos.
    let mut cmd = mesos(root.path(), "mesos-agent", &args);
    cmd.env("PATH", &empty).env(SYSROOT_ENV, &sysroot);
    let (status, _, stderr) = run_to_exit(cmd, dir.path(), "no-docker");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "Failed to create a containerizer: Could not create DockerContainerizer: \
             Failed to create docker: Failed to get docker version: Failed to execute \
             'docker -H unix:///var/run/docker.sock --version': exited with status 127"
        ),
        "{stderr}"
    );

    // A docker CLI that is too old for Mesos.
    let old = dir.path().join("old-bin");
    write_executable(
        &old.join("docker"),
        "#!/bin/sh\necho 'Docker version 1.7.1, build 786b29d'\n",
    );
    let mut cmd = mesos(root.path(), "mesos-agent", &args);
    cmd.env("PATH", format!("{}:/usr/bin:/bin", old.display()))
        .env(SYSROOT_ENV, &sysroot);
    let (status, _, stderr) = run_to_exit(cmd, dir.path(), "old-docker");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Insufficient version '1.7.1' of Docker. Please upgrade to >=' 1.8.0'"),
        "{stderr}"
    );

    // A recent CLI but no Docker daemon: recovery (`docker ps -a`) fails and the agent
    // exits, as Mesos does (slave.cpp, "Failed to perform recovery").
    let down = dir.path().join("down-bin");
    write_executable(
        &down.join("docker"),
        "#!/bin/sh\ncase \"$*\" in *--version*) echo 'Docker version 20.10.24, build 297e128'; exit 0 ;; esac\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?' >&2\nexit 1\n",
    );
    let mut cmd = mesos(root.path(), "mesos-agent", &args);
    cmd.env("PATH", format!("{}:/usr/bin:/bin", down.display()))
        .env(SYSROOT_ENV, &sysroot);
    let (status, _, stderr) = run_to_exit(cmd, dir.path(), "no-daemon");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "Failed to perform recovery: Failed to run 'docker -H unix:///var/run/docker.sock ps -a': exited with status 1; stderr='Cannot connect to the Docker daemon"
        ),
        "{stderr}"
    );

    // A recent one: the agent comes up and reports the flags and attributes.
    let new = dir.path().join("new-bin");
    write_executable(
        &new.join("docker"),
        "#!/bin/sh\necho 'Docker version 20.10.24, build 297e128'\n",
    );
    let mut args = args.clone();
    args.push("--attributes=rack:r1;level:3");
    let mut cmd = mesos(root.path(), "mesos-agent", &args);
    cmd.env("PATH", format!("{}:/usr/bin:/bin", new.display()))
        .env(SYSROOT_ENV, &sysroot)
        .env("MESOS_EXECUTOR_REGISTRATION_TIMEOUT", "5mins");
    let mut agent = Proc::spawn(cmd, dir.path(), "agent");
    assert_eq!(agent.wait_http(port, "/slave(1)/health").0, 200);
    let state = get_json(port, "/slave(1)/state");
    assert_eq!(state["standin"], true);
    assert_eq!(state["version"], "1.11.0");
    assert_eq!(state["pid"], format!("slave(1)@127.0.0.1:{port}"));
    assert_eq!(state["flags"]["containerizers"], "docker,mesos");
    assert_eq!(state["flags"]["executor_registration_timeout"], "5mins");
    assert_eq!(state["flags"]["systemd_enable_support"], "false");
    assert_eq!(state["attributes"]["rack"], "r1");
    assert_eq!(state["attributes"]["level"], 3.0);
    assert_eq!(get_json(port, "/state")["flags"], state["flags"]);
    assert_eq!(get_json(port, "/flags")["flags"], state["flags"]);
}

// ---------------------------------------------------------------------------
// The Marathon daemon.
// ---------------------------------------------------------------------------

#[test]
fn marathon_reads_the_environment_like_marathon() {
    let packages = Packages::build();
    let root = packages.extract(MARATHON_DEB);
    let dir = tempfile::tempdir().unwrap();

    // --master is required.
    let (status, _, stderr) = run_to_exit(marathon(root.path(), &[]), dir.path(), "no-master");
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("[scallop] Error: Required option 'master' not found"),
        "{stderr}"
    );

    // The same option from the environment and the command line is an error.
    let mut cmd = marathon(root.path(), &["--master", "zk://127.0.0.1:2181/mesos"]);
    cmd.env("MARATHON_MASTER", "zk://127.0.0.1:2181/mesos");
    let (status, _, stderr) = run_to_exit(cmd, dir.path(), "twice");
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("[scallop] Error: Bad arguments for option 'master'"),
        "{stderr}"
    );

    // Unknown options are fatal, including ones that come from MARATHON_*.
    let mut cmd = marathon(root.path(), &["--master=zk://127.0.0.1:2181/mesos"]);
    cmd.env("MARATHON_HOME", "/opt/marathon");
    let (status, _, stderr) = run_to_exit(cmd, dir.path(), "unknown");
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("[scallop] Error: Unknown option 'home'"),
        "{stderr}"
    );

    // A toggle takes no value: MARATHON_HA=true leaves `true` over.
    let mut cmd = marathon(root.path(), &["--master=zk://127.0.0.1:2181/mesos"]);
    cmd.env("MARATHON_HA", "true");
    let (status, _, stderr) = run_to_exit(cmd, dir.path(), "toggle");
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("[scallop] Error: Excess arguments provided: 'true'"),
        "{stderr}"
    );

    // What /etc/default/marathon would hold, through systemd's EnvironmentFile.
    let port = free_port();
    let mut cmd = marathon(root.path(), &[]);
    cmd.env(
        "MARATHON_MASTER",
        "zk://10.0.0.11:2181,10.0.0.12:2181/mesos",
    )
    .env("MARATHON_ZK", "zk://10.0.0.11:2181,10.0.0.12:2181/marathon")
    .env("MARATHON_HOSTNAME", "marathon.test")
    .env("MARATHON_MESOS_USER", "root")
    .env("MARATHON_HTTP_ADDRESS", "127.0.0.1")
    .env("MARATHON_HTTP_PORT", port.to_string())
    .env("MARATHON_DISABLE_HA", "") // empty: a bare flag
    // Nothing answers at 10.0.0.11: without this Marathon would give up on
    // ZooKeeper (exit 100) after the default 10 s.
    .env("MARATHON_ZK_CONNECTION_TIMEOUT", "600000")
    .env("MARATHON_APP_ID", "/ignored"); // set by Marathon for its apps
    let mut daemon = Proc::spawn(cmd, dir.path(), "marathon");
    assert_eq!(daemon.wait_http(port, "/ping"), (200, "pong".to_string()));
    let info = get_json(port, "/v2/info");
    assert_eq!(info["standin"], true);
    assert_eq!(info["name"], "marathon");
    assert_eq!(info["version"], "1.10.17");
    assert_eq!(info["frameworkId"], Value::Null);
    assert_eq!(
        info["marathon_config"]["master"],
        "zk://10.0.0.11:2181,10.0.0.12:2181/mesos"
    );
    assert_eq!(info["marathon_config"]["hostname"], "marathon.test");
    assert_eq!(info["marathon_config"]["mesos_user"], "root");
    assert_eq!(info["marathon_config"]["ha"], false);
    assert_eq!(
        info["zookeeper_config"]["zk"],
        "zk://10.0.0.11:2181,10.0.0.12:2181/marathon"
    );
    assert_eq!(info["http_config"]["http_port"], port);
    // Marathon leads only once connected to ZooKeeper, even without --ha.
    assert_eq!(info["elected"], false);
    assert_eq!(info["leader"], Value::Null);
    assert_eq!(
        http_get(port, "/v2/leader").unwrap(),
        (404, r#"{"message": "There is no leader"}"#.to_string())
    );
    assert!(daemon.stderr().contains("marathon-standin: argv: "));
}

// ---------------------------------------------------------------------------
// The init wrappers, run against fixture config trees.
//
// The wrappers read absolute paths (/etc/default/mesos, /etc/mesos-master/...)
// and exec absolute paths (/usr/sbin/mesos-master). Each run happens in a
// private mount namespace in which read-only overlays put the extracted
// package, with the test's edits, over /etc and /usr; nothing on the host
// changes, and the namespace goes away with the process.
// ---------------------------------------------------------------------------

/// Why the wrapper tests cannot run here, if they cannot.
fn namespace_unsupported() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            let uid = Command::new("id").arg("-u").output().map(|o| o.stdout).unwrap_or_default();
            if String::from_utf8_lossy(&uid).trim() != "0" {
                return Some("not root: mount namespaces and overlay mounts need it".into());
            }
            if !Path::new("/usr/bin/python3").exists() {
                return Some("/usr/bin/python3, which the packaged launchers run, is missing".into());
            }
            let probe = match tempfile::tempdir() {
                Ok(dir) => dir,
                Err(e) => return Some(format!("no temporary directory: {e}")),
            };
            let lower = probe.path().join("etc");
            if let Err(e) = fs::create_dir_all(lower.join("mesobake-probe")) {
                return Some(format!("cannot create the probe directory: {e}"));
            }
            let script = "mount -t overlay overlay -o \"lowerdir=$1:/etc\" /etc && test -d /etc/mesobake-probe";
            match Command::new("unshare")
                .args(["--mount", "--propagation", "private", "/bin/sh", "-c", script, "probe"])
                .arg(&lower)
                .output()
            {
                Ok(out) if out.status.success() => None,
                Ok(out) => Some(format!(
                    "cannot overlay /etc in a mount namespace: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Some(format!("cannot run unshare: {e}")),
            }
        })
        .clone()
}

macro_rules! require_namespaces {
    () => {
        if let Some(reason) = namespace_unsupported() {
            eprintln!("SKIPPED: {reason}");
            return;
        }
    };
}

/// An extracted package that the test edits, then runs the wrapper against.
struct Fixture {
    _packages: Packages,
    root: TempDir,
    scratch: TempDir,
}

impl Fixture {
    fn new(deb: &str) -> Fixture {
        let packages = Packages::build();
        let root = packages.extract(deb);
        Fixture {
            _packages: packages,
            root,
            scratch: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes an /etc file of the fixture (path relative to /etc).
    fn etc(&self, path: &str, contents: &str) -> &Fixture {
        let file = self.root.path().join("etc").join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, contents).unwrap();
        self
    }

    fn remove_etc(&self, path: &str) {
        fs::remove_file(self.root.path().join("etc").join(path)).unwrap();
    }

    fn scratch(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// `mesos-init-wrapper ARGS` as the installed package would run it.
    /// PATH_DIR, if given, comes first in PATH (a fake logger).
    fn wrapper(&self, args: &[&str], path_dir: Option<&Path>) -> Command {
        let script = "set -euo pipefail\n\
                      root=$1; shift\n\
                      mount -t overlay overlay -o \"lowerdir=$root/etc:/etc\" /etc\n\
                      mount -t overlay overlay -o \"lowerdir=$root/usr:/usr\" /usr\n\
                      exec /usr/bin/mesos-init-wrapper \"$@\"";
        let mut path = String::new();
        if let Some(dir) = path_dir {
            path = format!("{}:", dir.display());
        }
        path.push_str("/usr/sbin:/usr/bin:/sbin:/bin");
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "/bin/bash",
            "-c",
            script,
            "standin-ns",
        ])
        .arg(self.root.path())
        .args(args)
        .env_clear()
        .env("PATH", path);
        cmd
    }

    fn spawn(&self, args: &[&str], path_dir: Option<&Path>, name: &str) -> Proc {
        Proc::spawn(self.wrapper(args, path_dir), self.scratch.path(), name)
    }

    fn run_to_exit(&self, args: &[&str], name: &str) -> (ExitStatus, String, String) {
        run_to_exit(self.wrapper(args, None), self.scratch.path(), name)
    }

    /// Points the package's master config at the scratch dir and a free port,
    /// and turns off logger(1); returns the port. The Mesosphere package's
    /// PORT=5050 would clash with the port file and its LOGS=/var/log/mesos
    /// would write to the host, so its defaults files are rewritten too.
    fn local_master(&self, dir: &str) -> u16 {
        let port = free_port();
        if self.root.path().join("etc/default/mesos").exists() {
            self.etc(
                "default/mesos",
                &format!(
                    "LOGS={}\nULIMIT=\"-n 8192\"\n",
                    self.scratch("log").display()
                ),
            )
            .etc("default/mesos-master", "ZK=`cat /etc/mesos/zk`\n");
        }
        self.etc(&format!("{dir}/ip"), "127.0.0.1\n")
            .etc(&format!("{dir}/port"), &format!("{port}\n"))
            .etc(
                &format!("{dir}/work_dir"),
                &format!("{}\n", self.scratch("master-work").display()),
            )
            .etc(&format!("{dir}/?no-logger"), "");
        port
    }
}

#[test]
fn wrapper_turns_master_files_into_flags() {
    require_namespaces!();
    let fx = Fixture::new(MESOS_DEB);
    let port = fx.local_master("mesos-master");
    fx.etc("mesos/zk", "zk://10.0.0.11:2181,10.0.0.12:2181/mesos\n")
        // The package's PORT=5050 would clash with the port file; clear it.
        .etc(
            "default/mesos-master",
            "ZK=`cat /etc/mesos/zk`\nCLUSTER=wrapped\n",
        )
        .etc(
            "default/mesos",
            &format!(
                "LOGS={}\nULIMIT=\"-n 8192\"\nMESOS_REGISTRY_STORE_TIMEOUT=30secs\n",
                fx.scratch("log").display()
            ),
        )
        .etc("mesos-master/quorum", "2\n\n")
        .etc("mesos-master/?no-hostname_lookup", "")
        .etc(
            "mesos-master/.hidden_flag",
            "dotfiles are skipped by the glob\n",
        )
        .etc("mesos-master/subdir/ignored", "directories are skipped\n");
    let mut master = fx.spawn(&["master"], None, "master");
    master.wait_http(port, "/master/health");
    // No ZooKeeper answers there, so no leader: /master/state would be 503.
    let flags = &get_json(port, "/master/flags")["flags"];
    assert_eq!(flags["zk"], "zk://10.0.0.11:2181,10.0.0.12:2181/mesos");
    assert_eq!(flags["quorum"], "2", "trailing newlines are stripped");
    assert_eq!(flags["cluster"], "wrapped");
    assert_eq!(flags["ip"], "127.0.0.1");
    assert_eq!(flags["port"], port.to_string());
    assert_eq!(flags["log_dir"], fx.scratch("log").display().to_string());
    assert_eq!(flags["hostname_lookup"], "false");
    assert_eq!(
        flags["work_dir"],
        fx.scratch("master-work").display().to_string()
    );
    // Exported by allexport, loaded by the daemon from MESOS_*.
    assert_eq!(flags["registry_store_timeout"], "30secs");
    assert!(flags.get("hidden_flag").is_none() && flags.get("subdir").is_none());
    // --no-logger is taken out before the daemon sees it.
    let stderr = master.stderr();
    assert!(!stderr.contains("--no-logger"), "{stderr}");
    assert!(
        stderr.contains("mesos-standin: mesos-master argv: "),
        "{stderr}"
    );
}

#[test]
fn wrapper_joins_slave_attributes_and_logs_through_logger() {
    require_namespaces!();
    let fx = Fixture::new(MESOS_DEB);
    let port = free_port();
    fx.etc("mesos/zk", "zk://127.0.0.1:2181/mesos\n")
        .etc("mesos-slave/ip", "127.0.0.1\n")
        .etc("mesos-slave/port", &format!("{port}\n"))
        .etc(
            "mesos-slave/work_dir",
            &format!("{}\n", fx.scratch("agent-work").display()),
        )
        .etc("mesos-slave/containerizers", "mesos\n")
        .etc("mesos-slave/?no-switch_user", "")
        .etc("mesos-slave/?no-systemd_enable_support", "")
        .etc("mesos-slave/attributes/rack", "r1\n")
        .etc("mesos-slave/attributes/zone", "z1\n")
        .etc("mesos-slave/attributes/empty", "")
        .etc("mesos-slave/resources/cpus", "2\n")
        .etc("mesos-slave/resources/mem", "512\n")
        .etc(
            "default/mesos",
            &format!("LOGS={}\nULIMIT=\"-n 8192\"\n", fx.scratch("log").display()),
        );
    // A logger(1) that records its arguments and what it is sent.
    let bin = fx.scratch("bin");
    let logged = fx.scratch("logger.log");
    write_executable(
        &bin.join("logger"),
        &format!(
            "#!/bin/sh\n{{ echo \"logger $*\"; cat; }} >>'{}'\n",
            logged.display()
        ),
    );
    let mut slave = fx.spawn(&["slave"], Some(&bin), "slave");
    slave.wait_http(port, "/slave(1)/health");
    let state = get_json(port, "/slave(1)/state");
    let flags = &state["flags"];
    assert_eq!(flags["master"], "zk://127.0.0.1:2181/mesos");
    assert_eq!(
        flags["attributes"], "rack:r1;zone:z1",
        "empty files are skipped"
    );
    assert_eq!(flags["resources"], "cpus:2;mem:512");
    assert_eq!(flags["switch_user"], "false");
    assert_eq!(flags["log_dir"], fx.scratch("log").display().to_string());
    assert_eq!(state["resources"]["cpus"], 2.0);

    // stdout went to user.info and stderr to user.err, tagged mesos-slave[PID].
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    loop {
        let text = fs::read_to_string(&logged).unwrap_or_default();
        if text.contains("Flags at startup") {
            assert!(
                text.contains("logger -p user.info -t mesos-slave["),
                "{text}"
            );
            assert!(
                text.contains("logger -p user.err -t mesos-slave["),
                "{text}"
            );
            assert!(text.contains("mesos-standin: mesos-slave argv: "), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing logged through logger:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn wrapper_passes_stray_files_on_and_mesos_refuses_them() {
    require_namespaces!();
    let fx = Fixture::new(MESOS_DEB);
    fx.local_master("mesos-master");
    // An editor backup next to the real file.
    fx.etc("mesos-master/quorum~", "1\n");
    let (status, _, stderr) = fx.run_to_exit(&["master"], "backup");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Failed to load unknown flag 'quorum~'"),
        "{stderr}"
    );

    // Mesosphere's wrapper does not skip dpkg leftovers either.
    fx.remove_etc("mesos-master/quorum~");
    fx.etc("mesos-master/zk.dpkg-dist", "zk://localhost:2181/mesos\n");
    let (status, _, stderr) = fx.run_to_exit(&["master"], "dpkg-dist");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Failed to load unknown flag 'zk.dpkg-dist'"),
        "{stderr}"
    );
}

#[test]
fn wrapper_ip_variable_and_ip_file_make_a_duplicate() {
    require_namespaces!();
    let fx = Fixture::new(MESOS_DEB);
    fx.local_master("mesos-master");
    fx.etc(
        "default/mesos-master",
        "ZK=`cat /etc/mesos/zk`\nIP=127.0.0.1\n",
    );
    let (status, _, stderr) = fx.run_to_exit(&["master"], "duplicate");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Flag 'ip' is already loaded via name 'ip'"),
        "{stderr}"
    );

    // PORT=5050 from the package's defaults plus a port file: the same story.
    fx.etc(
        "default/mesos-master",
        "ZK=`cat /etc/mesos/zk`\nPORT=5050\n",
    );
    let (status, _, stderr) = fx.run_to_exit(&["master"], "port");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Flag 'port' is already loaded via name 'port'"),
        "{stderr}"
    );
}

#[test]
fn wrapper_rejects_an_unknown_role() {
    require_namespaces!();
    let fx = Fixture::new(MESOS_DEB);
    // Mesosphere's wrapper predates the rename: `agent` is not a role there.
    let (status, _, stderr) = fx.run_to_exit(&["agent"], "agent");
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("Please use `master' or `slave'."),
        "{stderr}"
    );
}

#[test]
fn aventer_wrapper_reads_agent_dirs_and_skips_dpkg_files() {
    require_namespaces!();
    let fx = Fixture::new(AVENTER_DEB);
    // AVENTER ships no /etc at all: the tool writes everything, defaults files
    // are optional.
    let port = fx.local_master("mesos-master");
    fx.etc("mesos-master/zk", "zk://127.0.0.1:2181/mesos\n")
        .etc("mesos-master/quorum", "1\n")
        .etc("mesos-master/quorum.dpkg-dist", "3\n")
        .etc("mesos-master/zk.rpmnew", "zk://elsewhere:2181/mesos\n");
    let mut master = fx.spawn(&["master"], None, "master");
    master.wait_http(port, "/master/health");
    let flags = &get_json(port, "/flags")["flags"];
    assert_eq!(flags["zk"], "zk://127.0.0.1:2181/mesos");
    assert_eq!(flags["quorum"], "1");
    drop(master);

    // Unlike Mesosphere's glob, find(1) does not skip dotfiles.
    fx.etc("mesos-master/.quorum.swp", "x\n");
    let (status, _, stderr) = fx.run_to_exit(&["master"], "dotfile");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Failed to load unknown flag '.quorum.swp'"),
        "{stderr}"
    );

    // The agent: /etc/default/mesos-agent and /etc/mesos-agent/, /usr/bin/mesos-agent.
    let port = free_port();
    fx.etc("default/mesos-agent", "MASTER=zk://127.0.0.1:2181/mesos\n")
        .etc("mesos-agent/ip", "127.0.0.1\n")
        .etc("mesos-agent/port", &format!("{port}\n"))
        .etc(
            "mesos-agent/work_dir",
            &format!("{}\n", fx.scratch("agent-work").display()),
        )
        .etc("mesos-agent/?no-logger", "")
        .etc("mesos-agent/?no-systemd_enable_support", "")
        .etc("mesos-agent/attributes/rack", "r2\n")
        .etc("mesos-agent/attributes/os.dpkg-dist", "old\n");
    let mut agent = fx.spawn(&["agent"], None, "agent");
    agent.wait_http(port, "/slave(1)/health");
    let flags = &get_json(port, "/slave(1)/flags")["flags"];
    assert_eq!(flags["master"], "zk://127.0.0.1:2181/mesos");
    assert_eq!(flags["attributes"], "rack:r2");
    assert!(
        agent.stderr().contains("mesos-standin: mesos-agent argv: "),
        "{}",
        agent.stderr()
    );
}

// ---------------------------------------------------------------------------
// Flag tables, systemd, cgroups (through the stand-in's sysroot test hook).
// ---------------------------------------------------------------------------

/// The stand-in's test hook: /proc/mounts, /sys/fs/cgroup, /run/systemd/system
/// and /sbin/init are read under this directory instead.
const SYSROOT_ENV: &str = "MESOS_STANDIN_SYSROOT";

/// A cgroup v1 (hybrid) host's cgroup mounts, as /proc/mounts lists them.
const CGROUP_V1_MOUNTS: &str = "\
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
";

/// A cgroup v2-only host (Debian 12, Ubuntu 22.04 and later).
const CGROUP_V2_MOUNTS: &str = "\
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
";

/// Builds a fake root for the hook: a mount table, the directories it names,
/// and with `systemd` an /sbin/init that reports systemd 252 plus its runtime
/// directory (and, on v1, the executors slice's cgroup).
fn fake_sysroot(root: &Path, systemd: bool, mounts: &str) -> PathBuf {
    fs::create_dir_all(root.join("proc")).unwrap();
    fs::write(root.join("proc/mounts"), mounts).unwrap();
    for line in mounts.lines() {
        let dir = line.split_whitespace().nth(1).unwrap();
        fs::create_dir_all(root.join(dir.trim_start_matches('/'))).unwrap();
    }
    if systemd {
        write_executable(
            &root.join("sbin/init"),
            "#!/bin/sh\necho 'systemd 252 (252.22-1~deb12u1)'\necho '+PAM +AUDIT'\n",
        );
        fs::create_dir_all(root.join("run/systemd/system")).unwrap();
        if root.join("sys/fs/cgroup/systemd").is_dir() {
            fs::create_dir_all(root.join("sys/fs/cgroup/systemd/mesos_executors.slice")).unwrap();
        }
    }
    root.to_path_buf()
}

/// Runs a daemon that must fail; returns its stderr after checking status 1.
fn expect_failure(cmd: Command, dir: &Path, name: &str, expected: &str) -> String {
    let (status, _, stderr) = run_to_exit(cmd, dir, name);
    assert_eq!(status.code(), Some(1), "{name}: {stderr}");
    assert!(
        stderr.contains(expected),
        "{name}: expected {expected:?} in:\n{stderr}"
    );
    stderr
}

#[test]
fn flag_names_are_loaded_like_stout() {
    let packages = Packages::build();
    let root = packages.extract(MESOS_DEB);
    let root = root.path();
    let dir = tempfile::tempdir().unwrap();
    let work = format!("--work_dir={}", dir.path().join("work").display());
    let master = |args: &[&str]| {
        let mut cmd = mesos(root, "mesos-master", args);
        cmd.env("MESOS_PORT", free_port().to_string())
            .env("MESOS_IP", "127.0.0.1");
        cmd
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // stout lower-cases names: these are one flag given twice.
        (
            vec!["--Quorum=1", "--quorum=1", &work],
            "Flag 'quorum' is already loaded via name 'quorum'",
        ),
        // A deprecated alias and its flag are one flag too (walked in name order).
        (
            vec!["--user_sorter=drf", "--role_sorter=drf"],
            "Flag 'user_sorter' is already loaded via name 'role_sorter'",
        ),
        (
            vec!["--authenticate_http", "--no-authenticate_http_readwrite"],
            "Flag 'authenticate_http_readwrite' is already loaded via name 'authenticate_http'",
        ),
        // What a wrapper passes for stray files: unknown, and lower-cased.
        (
            vec!["--.mesobake.AbC123=x"],
            "Failed to load unknown flag '.mesobake.abc123'",
        ),
        (vec!["--quorum~=1"], "Failed to load unknown flag 'quorum~'"),
        // Validators of src/master/flags.cpp.
        (
            vec!["--registry_strict"],
            "Support for '--registry_strict' has been disabled and will be removed \
             in a future version of Mesos",
        ),
        (
            vec!["--agent_ping_timeout=20mins"],
            "Expected `--agent_ping_timeout` to be between 1secs and 15mins",
        ),
        (
            vec!["--max_slave_ping_timeouts=0"],
            "Expected `--max_agent_ping_timeouts` to be at least 1",
        ),
        // Flags of optional builds are not in a default build's table.
        (
            vec!["--max_executors_per_agent=10"],
            "Failed to load unknown flag 'max_executors_per_agent'",
        ),
    ];
    for (index, (args, expected)) in cases.into_iter().enumerate() {
        let stderr = expect_failure(master(&args), dir.path(), &format!("m{index}"), expected);
        assert!(stderr.contains("See `mesos-master --help`"), "{stderr}");
    }

    let agent = |args: &[&str]| {
        let mut cmd = mesos(root, "mesos-agent", args);
        cmd.env("MESOS_PORT", free_port().to_string())
            .env("MESOS_IP", "127.0.0.1")
            .env("MESOS_MASTER", "127.0.0.1:5050");
        cmd
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--slave_subsystems=cpu", "--agent_subsystems=cpu", &work],
            "Flag 'slave_subsystems' is already loaded via name 'agent_subsystems'",
        ),
        (
            vec!["--executor_reregistration_timeout=1mins", &work],
            "Expected `--executor_reregistration_timeout` to be not more than 15secs",
        ),
        (
            vec!["--domain={\"region\":\"x\"}", &work],
            "`domain` must define `fault_domain`",
        ),
        (
            vec!["--xfs_kill_containers", &work],
            "Failed to load unknown flag 'xfs_kill_containers'",
        ),
    ];
    for (index, (args, expected)) in cases.into_iter().enumerate() {
        expect_failure(agent(&args), dir.path(), &format!("a{index}"), expected);
    }

    // Flags that the old table lacked load, and aliases show under the name used.
    // (--authenticate_http, now --authenticate_http_readwrite, needs credentials.)
    let credentials = dir.path().join("credentials");
    fs::write(&credentials, "operator operator-secret\n").unwrap();
    fs::set_permissions(&credentials, fs::Permissions::from_mode(0o600)).unwrap();
    let port = free_port();
    let args = [
        "--ip=127.0.0.1".to_string(),
        format!("--port={port}"),
        work.clone(),
        format!("--credentials={}", credentials.display()),
        "--authenticate_http=true".to_string(),
        "--user_sorter=random".to_string(),
        "--authentication_v0_timeout=30secs".to_string(),
        "--allocator_recovery_timeout=2mins".to_string(),
        "--offer_constraints_re2_max_mem=8MB".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = Proc::spawn(mesos(root, "mesos-master", &args), dir.path(), "master");
    daemon.wait_http(port, "/health");
    let flags = &get_json(port, "/flags")["flags"];
    assert_eq!(flags["authenticate_http"], "true");
    assert_eq!(flags["user_sorter"], "random");
    assert_eq!(flags["authentication_v0_timeout"], "30secs");
    assert_eq!(flags["allocator_recovery_timeout"], "2mins");
    assert_eq!(flags["allocator_agent_recovery_factor"], "0.8");
    assert!(daemon
        .stderr()
        .contains("Loaded deprecated flag 'authenticate_http'"));
    drop(daemon);

    let port = free_port();
    let sysroot = fake_sysroot(&dir.path().join("none"), false, CGROUP_V1_MOUNTS);
    let args = [
        "--ip=127.0.0.1".to_string(),
        format!("--port={port}"),
        "--master=127.0.0.1:1".to_string(),
        work.clone(),
        "--allowed_capabilities={\"capabilities\":[\"NET_RAW\"]}".to_string(),
        "--http_command_executor".to_string(),
        "--executor_reregistration_retry_interval=1secs".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = mesos(root, "mesos-agent", &args);
    cmd.env(SYSROOT_ENV, &sysroot);
    let mut daemon = Proc::spawn(cmd, dir.path(), "agent");
    daemon.wait_http(port, "/health");
    let flags = &get_json(port, "/flags")["flags"];
    assert_eq!(
        flags["allowed_capabilities"],
        "{\"capabilities\":[\"NET_RAW\"]}"
    );
    assert_eq!(flags["http_command_executor"], "true");
}

#[test]
fn agent_systemd_support_needs_a_cgroup_v1_systemd_hierarchy() {
    let packages = Packages::build();
    let dir = tempfile::tempdir().unwrap();
    let v2 = fake_sysroot(&dir.path().join("v2"), true, CGROUP_V2_MOUNTS);
    let v1 = fake_sysroot(&dir.path().join("v1"), true, CGROUP_V1_MOUNTS);
    let no_systemd = fake_sysroot(&dir.path().join("sysv"), false, CGROUP_V2_MOUNTS);
    let work = format!("--work_dir={}", dir.path().join("work").display());
    for deb in [MESOS_DEB, AVENTER_DEB] {
        let root = packages.extract(deb);
        let agent = |sysroot: &Path, extra: &[&str]| -> (Command, u16) {
            let port = free_port();
            let mut args = vec![
                "--ip=127.0.0.1".to_string(),
                format!("--port={port}"),
                "--master=127.0.0.1:1".to_string(),
                work.clone(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut cmd = mesos(root.path(), "mesos-agent", &args);
            cmd.env(SYSROOT_ENV, sysroot);
            (cmd, port)
        };

        // The default, systemd_enable_support=true, on a systemd v2-only host.
        let (cmd, _) = agent(&v2, &[]);
        let stderr = expect_failure(
            cmd,
            dir.path(),
            "v2",
            "EXIT with status 1: Failed to initialize systemd: Failed to locate systemd \
             cgroups hierarchy: '/sys/fs/cgroup/systemd' is not a valid hierarchy",
        );
        assert!(stderr.contains("Initializing systemd state"), "{stderr}");
        // The runtime directory got its slice unit before the check failed.
        assert!(v2
            .join("run/systemd/system/mesos_executors.slice")
            .is_file());

        // Turned off on the command line, or by a file the wrapper passes on.
        for extra in [
            &["--no-systemd_enable_support"][..],
            &["--systemd_enable_support=false"][..],
        ] {
            let (cmd, port) = agent(&v2, extra);
            let mut daemon = Proc::spawn(cmd, dir.path(), "off");
            assert_eq!(daemon.wait_http(port, "/health").0, 200);
        }
        // A cgroup v1 systemd host, and a host without systemd: no problem.
        for sysroot in [&v1, &no_systemd] {
            let (cmd, port) = agent(sysroot, &[]);
            let mut daemon = Proc::spawn(cmd, dir.path(), "ok");
            assert_eq!(daemon.wait_http(port, "/health").0, 200);
        }
        // systemd without its runtime directory.
        fs::remove_dir_all(v1.join("run/systemd/system")).unwrap();
        let (cmd, _) = agent(&v1, &[]);
        expect_failure(
            cmd,
            dir.path(),
            "no-runtime",
            "Failed to initialize systemd: Failed to locate systemd runtime directory: \
             /run/systemd/system",
        );
        fs::create_dir_all(v1.join("run/systemd/system")).unwrap();
    }
}

#[test]
fn docker_containerizer_needs_cgroup_v1_cpu_except_on_aventer() {
    let packages = Packages::build();
    let dir = tempfile::tempdir().unwrap();
    let v2 = fake_sysroot(&dir.path().join("v2"), false, CGROUP_V2_MOUNTS);
    let bin = dir.path().join("bin");
    write_executable(
        &bin.join("docker"),
        "#!/bin/sh\necho 'Docker version 20.10.24+dfsg1, build 297e128'\n",
    );
    let work = format!("--work_dir={}", dir.path().join("work").display());
    let agent = |root: &Path| -> (Command, u16) {
        let port = free_port();
        let args = [
            "--ip=127.0.0.1".to_string(),
            format!("--port={port}"),
            "--master=127.0.0.1:1".to_string(),
            work.clone(),
            "--containerizers=docker,mesos".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = mesos(root, "mesos-agent", &args);
        cmd.env(SYSROOT_ENV, &v2)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()));
        (cmd, port)
    };

    // Apache Mesos 1.11 (Mesosphere's package) on a v2-only host.
    let mesosphere = packages.extract(MESOS_DEB);
    assert_eq!(
        read(mesosphere.path(), "/usr/lib/mesos-standin/flavour"),
        "apache\n"
    );
    let (cmd, _) = agent(mesosphere.path());
    expect_failure(
        cmd,
        dir.path(),
        "apache",
        "Failed to create a containerizer: Could not create DockerContainerizer: Failed to \
         create docker: Failed to find a mounted cgroups hierarchy for the 'cpu' subsystem; \
         you probably need to mount cgroups manually",
    );

    // AVENTER's build skips that check on cgroup v2.
    let aventer = packages.extract(AVENTER_DEB);
    assert_eq!(
        read(aventer.path(), "/usr/lib/mesos-standin/flavour"),
        "aventer\n"
    );
    let (cmd, port) = agent(aventer.path());
    let mut daemon = Proc::spawn(cmd, dir.path(), "aventer");
    assert_eq!(daemon.wait_http(port, "/health").0, 200);
    assert_eq!(
        get_json(port, "/flags")["flags"]["containerizers"],
        "docker,mesos"
    );
}

// ---------------------------------------------------------------------------
// Leader election and registration, through a real ZooKeeper.
// ---------------------------------------------------------------------------

/// Polls `check` until it gives Some, or fails after `timeout` with `what`.
fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A GET that returns the JSON body of a 200 answer, or None.
fn try_json(ip: &str, port: u16, path: &str) -> Option<Value> {
    let (status, body) = http_get_at(ip, port, path).ok()?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// A minimal HTTP/1.0 GET to ip:port: status, body and the Location header.
fn http_get_at(ip: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let (status, _, body) = http_get_full(ip, port, path)?;
    Ok((status, body))
}

fn http_get_full(ip: &str, port: u16, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect((ip, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {response:?}")))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("Location: "))
        .unwrap_or_default()
        .to_string();
    Ok((status, location, body.to_string()))
}

/// The children of a znode and their data, read with python3-kazoo.
fn znodes(zk_port: u16, path: &str) -> Vec<(String, Value)> {
    let script = "import json, sys\n\
                  from kazoo.client import KazooClient\n\
                  c = KazooClient(sys.argv[1]); c.start(timeout=10)\n\
                  out = [(n, json.loads(c.get(sys.argv[2] + '/' + n)[0].decode())) \
                  for n in sorted(c.get_children(sys.argv[2]))]\n\
                  c.stop(); print(json.dumps(out))\n";
    let output = kazoo_python()
        .args(["-c", script, &format!("127.0.0.1:{zk_port}"), path])
        .output()
        .expect("python3 with kazoo");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn masters_elect_a_leader_in_zookeeper_and_agents_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(dir.path());
    let packages = Packages::build();
    let root = packages.extract(MESOS_DEB);
    // No systemd, whatever this host runs.
    let sysroot = fake_sysroot(&dir.path().join("sysroot"), false, CGROUP_V1_MOUNTS);
    let zk_url = format!("zk://127.0.0.1:{}/mesos", zk.port);
    let port = free_port();
    let master = |ip: &str, name: &str| -> Proc {
        let args = [
            format!("--ip={ip}"),
            format!("--port={port}"),
            format!("--zk={zk_url}"),
            "--quorum=1".to_string(),
            format!("--work_dir={}", dir.path().join(name).display()),
            "--zk_session_timeout=2secs".to_string(),
            "--no-hostname_lookup".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn(mesos(root.path(), "mesos-master", &args), dir.path(), name)
    };
    let mut first = master("127.0.0.2", "master1");
    first.wait_http_at("127.0.0.2", port, "/health");
    // The first one in leads: let it join before the second.
    wait_for(Duration::from_secs(30), "a leader", || {
        try_json("127.0.0.2", port, "/master/state")
    });
    let mut second = master("127.0.0.3", "master2");
    second.wait_http_at("127.0.0.3", port, "/health");

    // The group: one ephemeral sequential json.info_ znode per master, holding
    // its MasterInfo as JSON; the lowest sequence leads.
    let members = wait_for(Duration::from_secs(30), "two members", || {
        let members = znodes(zk.port, "/mesos");
        (members.len() == 2).then_some(members)
    });
    assert!(members
        .iter()
        .all(|(name, _)| name.starts_with("json.info_")));
    assert_eq!(members[0].1["pid"], format!("master@127.0.0.2:{port}"));
    assert_eq!(members[0].1["address"]["ip"], "127.0.0.2");
    assert_eq!(members[1].1["pid"], format!("master@127.0.0.3:{port}"));

    // The non-leader redirects leader-only endpoints, and /redirect, to it.
    wait_for(
        Duration::from_secs(30),
        "the second master to see the leader",
        || {
            let (status, location, _) = http_get_full("127.0.0.3", port, "/master/state").ok()?;
            (status == 307).then_some(location)
        },
    );
    let (status, location, _) = http_get_full("127.0.0.3", port, "/master/state").unwrap();
    assert_eq!(
        (status, location.as_str()),
        (307, format!("//127.0.0.2:{port}/master/state").as_str())
    );
    let (status, location, _) = http_get_full("127.0.0.3", port, "/redirect").unwrap();
    assert_eq!(
        (status, location.as_str()),
        (307, format!("//127.0.0.2:{port}").as_str())
    );
    assert_eq!(http_get_at("127.0.0.3", port, "/health").unwrap().0, 200);
    assert_eq!(
        try_json("127.0.0.3", port, "/flags").unwrap()["flags"]["zk"],
        zk_url
    );

    // An agent finds the leader in the group and registers with it.
    let agent_port = free_port();
    let args = [
        "--ip=127.0.0.4".to_string(),
        format!("--port={agent_port}"),
        format!("--master={zk_url}"),
        format!("--work_dir={}", dir.path().join("agent").display()),
        "--zk_session_timeout=2secs".to_string(),
        "--no-hostname_lookup".to_string(),
        "--attributes=rack:r1".to_string(),
        "--resources=cpus:2;mem:512".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = mesos(root.path(), "mesos-agent", &args);
    cmd.env(SYSROOT_ENV, &sysroot);
    let mut agent = Proc::spawn(cmd, dir.path(), "agent");
    agent.wait_http_at("127.0.0.4", agent_port, "/health");
    let agent_state = wait_for(Duration::from_secs(30), "the agent to register", || {
        let state = try_json("127.0.0.4", agent_port, "/slave(1)/state")?;
        (state["id"] != "").then_some(state)
    });
    assert_eq!(agent_state["master_hostname"], "127.0.0.2");
    let agent_id = agent_state["id"].as_str().unwrap().to_string();

    let state = try_json("127.0.0.2", port, "/master/state").unwrap();
    let leader_pid = format!("master@127.0.0.2:{port}");
    assert_eq!(state["leader"], leader_pid);
    assert_eq!(state["pid"], leader_pid);
    assert_eq!(state["leader_info"]["pid"], leader_pid);
    assert_eq!(state["leader_info"]["id"], state["id"]);
    assert!(state["elected_time"].as_f64().is_some(), "{state}");
    assert!(agent_id.starts_with(&format!("{}-S", state["id"].as_str().unwrap())));
    assert_eq!(state["activated_slaves"], 1);
    let slave = &state["slaves"][0];
    assert_eq!(slave["id"], agent_id);
    assert_eq!(slave["pid"], format!("slave(1)@127.0.0.4:{agent_port}"));
    assert_eq!(slave["hostname"], "127.0.0.4");
    assert_eq!(slave["active"], true);
    assert!(slave["registered_time"].as_f64().is_some());
    assert_eq!(slave["resources"]["cpus"], 2.0);
    assert_eq!(slave["resources"]["mem"], 512.0);
    assert_eq!(slave["attributes"]["rack"], "r1");
    assert_eq!(
        try_json("127.0.0.2", port, "/state").unwrap()["slaves"][0]["id"],
        agent_id
    );

    // Marathon finds the leader in the same group and registers as a framework.
    let marathon_root = packages.extract(MARATHON_DEB);
    let marathon_port = free_port();
    let mut marathon_proc = Proc::spawn(
        marathon(
            marathon_root.path(),
            &[
                "--master",
                &zk_url,
                "--zk",
                &format!("zk://127.0.0.1:{}/marathon", zk.port),
                "--http_port",
                &marathon_port.to_string(),
                "--hostname",
                "127.0.0.1",
            ],
        ),
        dir.path(),
        "marathon",
    );
    marathon_proc.wait_http(marathon_port, "/ping");
    let framework_id = wait_for(Duration::from_secs(30), "Marathon to register", || {
        let info = try_json("127.0.0.1", marathon_port, "/v2/info")?;
        info["frameworkId"].as_str().map(str::to_string)
    });
    assert_eq!(
        try_json("127.0.0.2", port, "/frameworks").unwrap()["frameworks"][0]["id"],
        framework_id
    );

    // The leader dies; its session ends, the other master leads, and the
    // agent re-registers with it under the same ID.
    first.kill();
    let state = wait_for(Duration::from_secs(60), "the second master to lead", || {
        try_json("127.0.0.3", port, "/master/state")
    });
    assert_eq!(state["leader"], format!("master@127.0.0.3:{port}"));
    let state = wait_for(Duration::from_secs(60), "the agent to re-register", || {
        let state = try_json("127.0.0.3", port, "/master/state")?;
        (state["activated_slaves"] == 1).then_some(state)
    });
    assert_eq!(state["slaves"][0]["id"], agent_id);
    assert!(state["slaves"][0]["reregistered_time"].as_f64().is_some());
    let agent_state = try_json("127.0.0.4", agent_port, "/state").unwrap();
    assert_eq!(agent_state["master_hostname"], "127.0.0.3");
    assert_eq!(agent_state["id"], agent_id);
    assert_eq!(znodes(zk.port, "/mesos").len(), 1);
    assert!(second.stderr().contains("Elected as the leading master!"));
    // Marathon follows the new leader with the same framework ID.
    wait_for(Duration::from_secs(60), "Marathon to re-register", || {
        let frameworks = try_json("127.0.0.3", port, "/frameworks")?;
        (frameworks["frameworks"][0]["id"] == framework_id.as_str()).then_some(())
    });
}

#[test]
fn agent_reregisters_when_its_master_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let packages = Packages::build();
    let root = packages.extract(MESOS_DEB);
    let sysroot = fake_sysroot(&dir.path().join("sysroot"), false, CGROUP_V1_MOUNTS);
    let port = free_port();
    let master = |name: &str| -> Proc {
        let args = [
            "--ip=127.0.0.1".to_string(),
            format!("--port={port}"),
            "--registry=in_memory".to_string(),
            "--no-hostname_lookup".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn(mesos(root.path(), "mesos-master", &args), dir.path(), name)
    };
    let mut first = master("master1");
    first.wait_http(port, "/health");
    let agent_port = free_port();
    let args = [
        "--ip=127.0.0.1".to_string(),
        format!("--port={agent_port}"),
        format!("--master=127.0.0.1:{port}"),
        format!("--work_dir={}", dir.path().join("agent").display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = mesos(root.path(), "mesos-agent", &args);
    cmd.env(SYSROOT_ENV, &sysroot);
    let mut agent = Proc::spawn(cmd, dir.path(), "agent");
    agent.wait_http(agent_port, "/health");
    let id = wait_for(Duration::from_secs(30), "registration", || {
        let state = try_json("127.0.0.1", agent_port, "/state")?;
        (state["id"] != "").then(|| state["id"].clone())
    });
    first.kill();
    let mut second = master("master2");
    second.wait_http(port, "/health");
    // 60 s, not 30: once, on a machine with every core busy, 30 s was not enough; the
    // daemons' logs say why if it ever times out again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let state = loop {
        if let Some(state) = try_json("127.0.0.1", port, "/state") {
            if state["activated_slaves"] == 1 {
                break state;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for re-registration\nagent:\n{}\nmaster1:\n{}\nmaster2:\n{}",
            agent.stderr(),
            first.stderr(),
            second.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(state["slaves"][0]["id"], id);
}

/// The argv the stand-in recorded on stderr (`mesos-standin: PROGRAM argv: [...]`).
fn recorded_argv(stderr: &str, program: &str) -> Vec<String> {
    let marker = format!("mesos-standin: {program} argv: ");
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix(&marker))
        .unwrap_or_else(|| panic!("no argv recorded:\n{stderr}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn aventer_wrapper_lists_in_directory_order_and_reports_missing_dirs() {
    require_namespaces!();
    let fx = Fixture::new(AVENTER_DEB);
    let port = free_port();
    fx.etc("mesos-agent/ip", "127.0.0.1\n")
        .etc("mesos-agent/port", &format!("{port}\n"))
        .etc("mesos-agent/master", "127.0.0.1:1\n")
        .etc(
            "mesos-agent/work_dir",
            &format!("{}\n", fx.scratch("agent-work").display()),
        )
        .etc("mesos-agent/?no-logger", "")
        .etc("mesos-agent/?no-systemd_enable_support", "");
    // Several attribute files, created in name order; find lists them in the
    // directory's own order, which the wrapper keeps.
    let keys = ["a1", "b2", "c3", "d4", "e5", "f6", "g7", "h8"];
    for key in keys {
        fx.etc(
            &format!("mesos-agent/attributes/{key}"),
            &format!("v{key}\n"),
        );
    }
    let listed = |dir: &str| -> Vec<String> {
        fs::read_dir(fx.root.path().join("etc").join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let order = listed("mesos-agent/attributes");
    let expected_attributes = order
        .iter()
        .map(|key| format!("{key}:v{key}"))
        .collect::<Vec<_>>()
        .join(";");
    let expected_flags: Vec<String> = listed("mesos-agent")
        .into_iter()
        .filter(|name| fx.root.path().join("etc/mesos-agent").join(name).is_file())
        .filter(|name| name != "?no-logger")
        .map(|name| match name.strip_prefix('?') {
            Some(bare) => format!("--{bare}"),
            None => {
                let value =
                    fs::read_to_string(fx.root.path().join("etc/mesos-agent").join(&name)).unwrap();
                format!("--{name}={}", value.trim_end_matches('\n'))
            }
        })
        .collect();

    // The environment sets up the systemd-less fake root for the daemon.
    let sysroot = fake_sysroot(&fx.scratch("sysroot"), false, CGROUP_V1_MOUNTS);
    let mut cmd = fx.wrapper(&["agent"], None);
    cmd.env(SYSROOT_ENV, &sysroot);
    let mut agent = Proc::spawn(cmd, fx.scratch.path(), "agent");
    agent.wait_http(port, "/health");
    let stderr = agent.stderr();
    // resources/ does not exist: find says so on the wrapper's stderr, and
    // the agent starts all the same.
    assert!(
        stderr.contains("find: '/etc/mesos-agent/resources/': No such file or directory"),
        "{stderr}"
    );
    let argv = recorded_argv(&stderr, "mesos-agent");
    let mut expected = expected_flags;
    expected.push(format!("--attributes={expected_attributes}"));
    assert_eq!(argv, expected, "find's order, not sorted");
    assert_eq!(
        get_json(port, "/flags")["flags"]["attributes"],
        expected_attributes
    );
}

// ---------------------------------------------------------------------------
// Authentication (issue 15): credential files, agents, frameworks, HTTP.
// ---------------------------------------------------------------------------

/// RFC 4648 base64, for `Authorization: Basic` headers.
fn base64(data: &[u8]) -> String {
    const TABLE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An HTTP/1.0 request to 127.0.0.1 with optional basic credentials:
/// status, response head and body.
fn http_request(
    port: u16,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    if let Some((user, password)) = auth {
        let token = base64(format!("{user}:{password}").as_bytes());
        request.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {response:?}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_string(), body.to_string())
}

/// The value of a response header (case-insensitive name).
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

/// Writes a secret-bearing file the way an operator should: 0600.
fn write_secret(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// The credentials file of the tests: JSON, as Mesos documents it.
const CREDENTIALS_JSON: &str = r#"{"credentials": [
  {"principal": "agent", "secret": "agent-secret"},
  {"principal": "marathon", "secret": "marathon-secret"},
  {"principal": "operator", "secret": "operator-secret"},
  {"principal": "colon", "secret": "has:colon"}
]}"#;

fn master_args(port: u16, extra: &[String]) -> Vec<String> {
    let mut args = vec![
        "--ip=127.0.0.1".to_string(),
        format!("--port={port}"),
        "--registry=in_memory".to_string(),
        "--no-hostname_lookup".to_string(),
    ];
    args.extend(extra.iter().cloned());
    args
}

fn start_master(root: &Path, dir: &Path, name: &str, port: u16, extra: &[String]) -> Proc {
    let args = master_args(port, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut master = Proc::spawn(mesos(root, "mesos-master", &args), dir, name);
    master.wait_http(port, "/health");
    master
}

fn agent_command(
    root: &Path,
    sysroot: &Path,
    dir: &Path,
    name: &str,
    port: u16,
    master: &str,
    extra: &[String],
) -> Command {
    let mut args = vec![
        "--ip=127.0.0.1".to_string(),
        format!("--port={port}"),
        format!("--master={master}"),
        format!("--work_dir={}", dir.join(name).display()),
        "--no-hostname_lookup".to_string(),
    ];
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = mesos(root, "mesos-agent", &args);
    cmd.env(SYSROOT_ENV, sysroot);
    cmd
}

#[test]
fn credential_files_are_read_like_mesos() {
    let packages = Packages::build();
    let root = packages.extract(MESOS_DEB);
    let root = root.path();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sysroot = fake_sysroot(&d.join("sysroot"), false, CGROUP_V1_MOUNTS);
    let master = |name: &str, extra: &[&str]| -> Command {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let args = master_args(free_port(), &extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = name;
        mesos(root, "mesos-master", &args)
    };
    let missing = d.join("missing");
    write_secret(&d.join("empty"), "");
    write_secret(&d.join("three-words"), "agent agent-secret extra\n");
    write_secret(&d.join("tab"), "agent\tagent-secret\n");

    // Master: src/master/master.cpp Master::initialize() and
    // src/credentials/credentials.hpp.
    expect_failure(
        master("m-missing", &[&format!("--credentials={}", missing.display())]),
        d,
        "m-missing",
        &format!(
            "Failed to read credentials file '{}': No such file or directory (see --credentials flag)",
            missing.display()
        ),
    );
    // A Path flag is not fetched, but stout's Path drops file://.
    expect_failure(
        master(
            "m-missing-url",
            &[&format!("--credentials=file://{}", missing.display())],
        ),
        d,
        "m-missing-url",
        &format!("Failed to read credentials file '{}':", missing.display()),
    );
    // Nor is the value ever the file's contents: inline JSON is a path.
    expect_failure(
        master(
            "m-inline",
            &[r#"--credentials={"credentials":[{"principal":"a","secret":"b"}]}"#],
        ),
        d,
        "m-inline",
        r#"Failed to read credentials file '{"credentials":[{"principal":"a","secret":"b"}]}':"#,
    );
    expect_failure(
        master(
            "m-empty",
            &[&format!("--credentials={}", d.join("empty").display())],
        ),
        d,
        "m-empty",
        "Credentials file must contain at least one credential (see --credentials flag)",
    );
    expect_failure(
        master(
            "m-three",
            &[&format!(
                "--credentials={}",
                d.join("three-words").display()
            )],
        ),
        d,
        "m-three",
        "Invalid credential format at line 1 (see --credentials flag)",
    );
    // Only single spaces separate principal and secret.
    expect_failure(
        master(
            "m-tab",
            &[&format!("--credentials={}", d.join("tab").display())],
        ),
        d,
        "m-tab",
        "Invalid credential format at line 1 (see --credentials flag)",
    );
    // HTTP authentication without credentials is fatal...
    expect_failure(
        master("m-http", &["--authenticate_http_readonly"]),
        d,
        "m-http",
        "No credentials provided for the default 'basic' HTTP authenticator for realm \
         'mesos-master-readonly'",
    );
    expect_failure(
        master("m-http-rw", &["--authenticate_http_readwrite"]),
        d,
        "m-http-rw",
        "No credentials provided for the default 'basic' HTTP authenticator for realm \
         'mesos-master-readwrite'",
    );
    // ...but agent authentication without credentials only warns: the master
    // starts and refuses every agent.
    let port = free_port();
    let mut m = start_master(
        root,
        d,
        "m-agents",
        port,
        &["--authenticate_agents".to_string()],
    );
    let stderr = m.stderr();
    assert!(
        stderr.contains("Master only allowing authenticated agents to register")
            && stderr.contains("No credentials provided, authentication requests will be refused"),
        "{stderr}"
    );
    m.kill();
    // A world-readable file works, with a warning.
    let open = d.join("open.json");
    fs::write(&open, CREDENTIALS_JSON).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
    let port = free_port();
    let m = start_master(
        root,
        d,
        "m-open",
        port,
        &[format!("--credentials={}", open.display())],
    );
    assert!(
        m.stderr().contains(&format!(
            "Permissions on credentials file '{}' are too open. It is recommended that your \
             credentials file is NOT accessible by others.",
            open.display()
        )),
        "{}",
        m.stderr()
    );
    drop(m);

    // Agent: src/slave/slave.cpp Slave::initialize(), readCredential().
    let agent = |name: &str, extra: &[String]| {
        agent_command(root, &sysroot, d, name, free_port(), "127.0.0.1:1", extra)
    };
    expect_failure(
        agent("a-missing", &[format!("--credential={}", missing.display())]),
        d,
        "a-missing",
        &format!(
            "Failed to read credential file '{}': No such file or directory (see --credential flag)",
            missing.display()
        ),
    );
    expect_failure(
        agent(
            "a-empty",
            &[format!("--credential={}", d.join("empty").display())],
        ),
        d,
        "a-empty",
        &format!(
            "Empty credential file '{}' (see --credential flag)",
            d.join("empty").display()
        ),
    );
    write_secret(
        &d.join("two-lines"),
        "agent agent-secret\nother other-secret\n",
    );
    expect_failure(
        agent(
            "a-two",
            &[format!("--credential={}", d.join("two-lines").display())],
        ),
        d,
        "a-two",
        "Expecting only one credential (see --credential flag)",
    );
    expect_failure(
        agent(
            "a-three",
            &[format!("--credential={}", d.join("three-words").display())],
        ),
        d,
        "a-three",
        "Invalid credential format (see --credential flag)",
    );
    expect_failure(
        agent("a-http", &["--authenticate_http_readonly".to_string()]),
        d,
        "a-http",
        "No credentials provided for the default 'basic' HTTP authenticator for realm \
         'mesos-agent-readonly'",
    );
    expect_failure(
        agent(
            "a-http-creds",
            &[format!("--http_credentials={}", missing.display())],
        ),
        d,
        "a-http-creds",
        "(see --http_credentials flag)",
    );
}

#[test]
fn master_refuses_agents_without_valid_credentials() {
    let packages = Packages::build();
    let root = packages.extract(MESOS_DEB);
    let root = root.path();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sysroot = fake_sysroot(&d.join("sysroot"), false, CGROUP_V1_MOUNTS);
    let credentials = d.join("credentials.json");
    write_secret(&credentials, CREDENTIALS_JSON);
    let port = free_port();
    // file:// works for --credentials: stout's Path drops it.
    let master = start_master(
        root,
        d,
        "master",
        port,
        &[
            "--authenticate_agents".to_string(),
            format!("--credentials=file://{}", credentials.display()),
        ],
    );
    let leader = format!("127.0.0.1:{port}");

    // Without a credential: the master drops the registration, the agent
    // keeps trying and stays unregistered.
    let bare_port = free_port();
    let mut bare = Proc::spawn(
        agent_command(root, &sysroot, d, "bare", bare_port, &leader, &[]),
        d,
        "bare",
    );
    bare.wait_http(bare_port, "/health");
    let refusal = format!(
        "Refusing registration of agent at slave(1)@127.0.0.1:{bare_port} because it is not \
         authenticated"
    );
    wait_for(Duration::from_secs(15), "two refusals", || {
        (master.stderr().matches(&refusal).count() >= 2).then_some(())
    });
    assert_eq!(get_json(bare_port, "/state")["id"], "");

    // With the text form of the credential file: registered.
    let good = d.join("agent.credential");
    write_secret(&good, "agent agent-secret\n");
    let good_port = free_port();
    let mut agent = Proc::spawn(
        agent_command(
            root,
            &sysroot,
            d,
            "good",
            good_port,
            &leader,
            &[format!("--credential={}", good.display())],
        ),
        d,
        "good",
    );
    agent.wait_http(good_port, "/health");
    let id = wait_for(Duration::from_secs(30), "the agent to register", || {
        let state = try_json("127.0.0.1", good_port, "/state")?;
        (state["id"] != "").then(|| state["id"].clone())
    });
    assert!(agent.stderr().contains("Agent using credential for: agent"));
    let state = get_json(port, "/state");
    let pids: Vec<&str> = state["slaves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_str().unwrap())
        .collect();
    assert_eq!(pids, [format!("slave(1)@127.0.0.1:{good_port}")]);
    assert_eq!(state["slaves"][0]["id"], id);

    // JSON credential, wrong secret: the master refuses the authentication
    // and the agent exits (Slave::_authenticate()).
    let wrong = d.join("wrong.credential");
    write_secret(
        &wrong,
        r#"{"principal": "agent", "secret": "not-the-secret"}"#,
    );
    expect_failure(
        agent_command(
            root,
            &sysroot,
            d,
            "wrong",
            free_port(),
            &leader,
            &[format!("--credential={}", wrong.display())],
        ),
        d,
        "wrong",
        &format!("Master master@127.0.0.1:{port} refused authentication"),
    );
    // A trailing space is not part of the secret (tokenized), but a carriage
    // return is.
    let crlf = d.join("crlf.credential");
    write_secret(&crlf, "agent agent-secret\r\n");
    expect_failure(
        agent_command(
            root,
            &sysroot,
            d,
            "crlf",
            free_port(),
            &leader,
            &[format!("--credential={}", crlf.display())],
        ),
        d,
        "crlf",
        "refused authentication",
    );
    assert_eq!(get_json(bare_port, "/state")["id"], "");
    drop(master);

    // An agent with a credential authenticates whatever the master's flags:
    // a master without --credentials refuses it, and the agent exits.
    let open_port = free_port();
    let _open = start_master(root, d, "open-master", open_port, &[]);
    expect_failure(
        agent_command(
            root,
            &sysroot,
            d,
            "to-open",
            free_port(),
            &format!("127.0.0.1:{open_port}"),
            &[format!("--credential={}", good.display())],
        ),
        d,
        "to-open",
        &format!("Master master@127.0.0.1:{open_port} refused authentication"),
    );
}

#[test]
fn mesos_http_endpoints_need_basic_auth_in_their_realm() {
    let packages = Packages::build();
    let root = packages.extract(MESOS_DEB);
    let root = root.path();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let credentials = d.join("credentials.json");
    write_secret(&credentials, CREDENTIALS_JSON);
    let port = free_port();
    let _master = start_master(
        root,
        d,
        "master",
        port,
        &[
            "--authenticate_http_readonly".to_string(),
            "--authenticate_http_readwrite".to_string(),
            format!("--credentials={}", credentials.display()),
        ],
    );
    let operator = Some(("operator", "operator-secret"));
    for path in [
        "/state",
        "/master/state",
        "/flags",
        "/master/flags",
        "/slaves",
        "/frameworks",
    ] {
        let (status, head, body) = http_request(port, "GET", path, None, "");
        assert_eq!(status, 401, "{path}: {head}");
        assert_eq!(
            header(&head, "WWW-Authenticate").as_deref(),
            Some(r#"Basic realm="mesos-master-readonly""#),
            "{path}"
        );
        assert_eq!(body, "");
        let (status, _, _) = http_request(port, "GET", path, Some(("operator", "wrong")), "");
        assert_eq!(status, 401, "{path}");
        let (status, _, body) = http_request(port, "GET", path, operator, "");
        assert_eq!(status, 200, "{path}: {body}");
    }
    // libprocess splits user:password on every ':': such a secret never works.
    let (status, _, _) = http_request(port, "GET", "/state", Some(("colon", "has:colon")), "");
    assert_eq!(status, 401);
    // /health (and /redirect, /version) have no realm.
    assert_eq!(http_request(port, "GET", "/health", None, "").0, 200);
    assert_eq!(http_request(port, "GET", "/version", None, "").0, 200);

    // /teardown is read-write.
    let (status, head, _) = http_request(port, "POST", "/teardown", None, "");
    assert_eq!(status, 401);
    assert_eq!(
        header(&head, "WWW-Authenticate").as_deref(),
        Some(r#"Basic realm="mesos-master-readwrite""#)
    );
    let (status, _, body) = http_request(port, "POST", "/teardown", operator, "");
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            "Missing 'frameworkId' query parameter in the request body"
        )
    );
    let (status, _, body) = http_request(
        port,
        "POST",
        "/master/teardown",
        operator,
        "frameworkId=nope",
    );
    assert_eq!(
        (status, body.as_str()),
        (400, "No framework found with specified ID")
    );
    assert_eq!(http_request(port, "GET", "/teardown", operator, "").0, 405);

    // Only the read-only realm: read-write endpoints stay open.
    let ro_port = free_port();
    let _ro = start_master(
        root,
        d,
        "ro-master",
        ro_port,
        &[
            "--authenticate_http_readonly".to_string(),
            format!("--credentials={}", credentials.display()),
        ],
    );
    assert_eq!(http_request(ro_port, "GET", "/state", None, "").0, 401);
    assert_eq!(http_request(ro_port, "POST", "/teardown", None, "").0, 400);

    // The agent's own realms and --http_credentials.
    let sysroot = fake_sysroot(&d.join("sysroot"), false, CGROUP_V1_MOUNTS);
    let http_credentials = d.join("agent-http.json");
    write_secret(&http_credentials, "operator operator-secret\n");
    let agent_port = free_port();
    let mut agent = Proc::spawn(
        agent_command(
            root,
            &sysroot,
            d,
            "agent",
            agent_port,
            "127.0.0.1:1",
            &[
                "--authenticate_http_readonly".to_string(),
                format!("--http_credentials={}", http_credentials.display()),
            ],
        ),
        d,
        "agent",
    );
    agent.wait_http(agent_port, "/health");
    for path in ["/state", "/slave(1)/state", "/flags"] {
        let (status, head, _) = http_request(agent_port, "GET", path, None, "");
        assert_eq!(status, 401, "{path}");
        assert_eq!(
            header(&head, "WWW-Authenticate").as_deref(),
            Some(r#"Basic realm="mesos-agent-readonly""#)
        );
        assert_eq!(http_request(agent_port, "GET", path, operator, "").0, 200);
    }
}

#[test]
fn marathon_registers_as_a_framework_with_mesos_authentication() {
    let packages = Packages::build();
    let mesos_root = packages.extract(MESOS_DEB);
    let marathon_root = packages.extract(MARATHON_DEB);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Marathon runs the scheduler driver only once elected, and it needs
    // ZooKeeper for that (its leader latch).
    let zk = ZooKeeper::start(d);
    let marathon_zk = format!("zk://127.0.0.1:{}/marathon", zk.port);

    // Without any authentication flags Marathon registers and shows its
    // framework ID.
    let open_port = free_port();
    let _open = start_master(mesos_root.path(), d, "open-master", open_port, &[]);
    let http_port = free_port();
    let mut plain = Proc::spawn(
        marathon(
            marathon_root.path(),
            &[
                "--master",
                &format!("127.0.0.1:{open_port}"),
                "--zk",
                &marathon_zk,
                "--http_port",
                &http_port.to_string(),
                "--hostname",
                "127.0.0.1",
            ],
        ),
        d,
        "plain",
    );
    plain.wait_http(http_port, "/ping");
    let framework_id = wait_for(Duration::from_secs(30), "Marathon to register", || {
        let info = try_json("127.0.0.1", http_port, "/v2/info")?;
        info["frameworkId"].as_str().map(str::to_string)
    });
    let frameworks = get_json(open_port, "/frameworks");
    assert_eq!(frameworks["frameworks"][0]["id"], framework_id);
    assert_eq!(frameworks["frameworks"][0]["name"], "marathon");
    let master_id = get_json(open_port, "/state")["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(framework_id, format!("{master_id}-0000"));
    drop(plain);

    // A master that requires framework authentication.
    let credentials = d.join("credentials.json");
    write_secret(&credentials, CREDENTIALS_JSON);
    let port = free_port();
    let master = start_master(
        mesos_root.path(),
        d,
        "master",
        port,
        &[
            "--authenticate_frameworks".to_string(),
            format!("--credentials={}", credentials.display()),
        ],
    );
    let run_marathon = |name: &str, extra: &[&str]| -> Command {
        let http_port = free_port().to_string();
        let master = format!("127.0.0.1:{port}");
        let mut args = vec![
            "--master",
            &master,
            "--zk",
            &marathon_zk,
            "--http_port",
            &http_port,
            "--hostname",
            "127.0.0.1",
        ];
        args.extend_from_slice(extra);
        let _ = name;
        marathon(marathon_root.path(), &args)
    };

    // Without credentials: refused by the master, and Marathon crashes
    // (MarathonScheduler.error -> CrashStrategy.MesosSchedulerError).
    let (status, stdout, _) = run_to_exit(run_marathon("none", &[]), d, "none");
    assert_eq!(status.code(), Some(106), "{stdout}");
    assert!(
        stdout.contains("Error: Framework at scheduler-"),
        "{stdout}"
    );
    assert!(stdout.contains("is not authenticated"), "{stdout}");
    assert!(master
        .stderr()
        .contains("Refusing subscription of framework 'marathon' at scheduler-"));

    // A principal without --mesos_authentication sends no credential either.
    let secret = d.join("marathon.secret");
    write_secret(&secret, "marathon-secret");
    let (status, stdout, _) = run_to_exit(
        run_marathon(
            "no-toggle",
            &[
                "--mesos_authentication_principal",
                "marathon",
                "--mesos_authentication_secret_file",
                secret.to_str().unwrap(),
            ],
        ),
        d,
        "no-toggle",
    );
    assert_eq!(status.code(), Some(106), "{stdout}");
    assert!(stdout.contains("is not authenticated"), "{stdout}");

    // The secret file is read whole: a trailing newline is part of the secret.
    let newline = d.join("newline.secret");
    write_secret(&newline, "marathon-secret\n");
    let (status, stdout, _) = run_to_exit(
        run_marathon(
            "newline",
            &[
                "--mesos_authentication",
                "--mesos_authentication_principal",
                "marathon",
                "--mesos_authentication_secret_file",
                newline.to_str().unwrap(),
            ],
        ),
        d,
        "newline",
    );
    assert_eq!(status.code(), Some(106), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "Master master@127.0.0.1:{port} refused authentication"
        )) && stdout.contains("Error: Master refused authentication"),
        "{stdout}"
    );

    // --mesos_authentication needs a principal (scallop's dependsOnAll).
    let (status, _, stderr) = run_to_exit(
        run_marathon("no-principal", &["--mesos_authentication"]),
        d,
        "no-principal",
    );
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("[scallop] Error: When specifying 'mesos_authentication'"),
        "{stderr}"
    );

    // The right secret, from MARATHON_* variables as /etc/default/marathon
    // would set them: registered, with the principal.
    let http_port = free_port();
    let mut cmd = marathon(marathon_root.path(), &[]);
    cmd.env("MARATHON_MASTER", format!("127.0.0.1:{port}"))
        .env("MARATHON_ZK", &marathon_zk)
        .env("MARATHON_HTTP_PORT", http_port.to_string())
        .env("MARATHON_HOSTNAME", "127.0.0.1")
        .env("MARATHON_MESOS_AUTHENTICATION", "")
        .env("MARATHON_MESOS_AUTHENTICATION_PRINCIPAL", "marathon")
        .env("MARATHON_MESOS_AUTHENTICATION_SECRET_FILE", &secret);
    let mut good = Proc::spawn(cmd, d, "good");
    good.wait_http(http_port, "/ping");
    let framework_id = wait_for(Duration::from_secs(30), "Marathon to register", || {
        let info = try_json("127.0.0.1", http_port, "/v2/info")?;
        info["frameworkId"].as_str().map(str::to_string)
    });
    let state = get_json(port, "/state");
    assert_eq!(state["frameworks"][0]["id"], framework_id);
    assert_eq!(state["frameworks"][0]["principal"], "marathon");
    assert!(good
        .stdout()
        .contains("Authenticate with Mesos as marathon"));

    // A missing secret file stops Marathon.
    let (status, stdout, _) = run_to_exit(
        run_marathon(
            "missing",
            &[
                "--mesos_authentication",
                "--mesos_authentication_principal",
                "marathon",
                "--mesos_authentication_secret_file",
                d.join("missing").to_str().unwrap(),
            ],
        ),
        d,
        "missing",
    );
    assert_ne!(status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("FileNotFoundException"), "{stdout}");
}

#[test]
fn marathon_api_needs_http_basic_auth() {
    let packages = Packages::build();
    let root = packages.extract(MARATHON_DEB);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // No Mesos master and no ZooKeeper (port 1, and Marathon waits for it
    // long enough): Marathon keeps trying and serves its API meanwhile.
    let start = |name: &str, extra: &[&str], env: &[(&str, &str)]| -> (Proc, u16) {
        let port = free_port();
        let port_text = port.to_string();
        let mut args = vec![
            "--master",
            "127.0.0.1:1",
            "--zk",
            "zk://127.0.0.1:1/marathon",
            "--zk_connection_timeout",
            "600000",
            "--http_port",
            &port_text,
        ];
        args.extend_from_slice(extra);
        let mut cmd = marathon(root.path(), &args);
        for (key, value) in env {
            cmd.env(key, value);
        }
        let mut proc = Proc::spawn(cmd, d, name);
        proc.wait_http(port, "/v2/info");
        (proc, port)
    };

    let (_default_realm, port) = start("creds", &["--http_credentials", "admin:s3cret"], &[]);
    for path in ["/ping", "/v2/info", "/v2/apps", "/v2/leader"] {
        let (status, head, _) = http_request(port, "GET", path, None, "");
        assert_eq!(status, 401, "{path}");
        assert_eq!(
            header(&head, "WWW-Authenticate").as_deref(),
            Some(r#"basic realm="Mesosphere""#),
            "{path}"
        );
        assert_eq!(
            http_request(port, "GET", path, Some(("admin", "wrong")), "").0,
            401
        );
        // Past authentication; /v2/leader is 404 while no leader is known.
        let expected = if path == "/v2/leader" { 404 } else { 200 };
        assert_eq!(
            http_request(port, "GET", path, Some(("admin", "s3cret")), "").0,
            expected,
            "{path}"
        );
    }

    // --http_realm, and credentials from MARATHON_HTTP_CREDENTIALS.
    let (_realm, port) = start(
        "realm",
        &["--http_realm", "mesobake"],
        &[("MARATHON_HTTP_CREDENTIALS", "admin:pa:ss")],
    );
    let (status, head, _) = http_request(port, "GET", "/ping", None, "");
    assert_eq!(status, 401);
    assert_eq!(
        header(&head, "WWW-Authenticate").as_deref(),
        Some(r#"basic realm="mesobake""#)
    );
    // `(.+):(.+)` is greedy: the user name runs to the last colon (`admin:pa`),
    // while Jetty splits what a client sends at the first one: a password
    // with a colon locks everybody out.
    assert_eq!(
        http_request(port, "GET", "/ping", Some(("admin", "pa:ss")), "").0,
        401
    );
    assert_eq!(
        http_request(port, "GET", "/ping", Some(("admin:pa", "ss")), "").0,
        401
    );

    // MESOSPHERE_HTTP_CREDENTIALS is the default of --http_credentials.
    let (_env, port) = start(
        "env",
        &[],
        &[("MESOSPHERE_HTTP_CREDENTIALS", "admin:s3cret")],
    );
    assert_eq!(http_request(port, "GET", "/ping", None, "").0, 401);
    assert_eq!(
        http_request(port, "GET", "/ping", Some(("admin", "s3cret")), "").0,
        200
    );

    // A value without a colon is logged and leaves the API open.
    let (open, port) = start("malformed", &["--http_credentials", "admin"], &[]);
    assert_eq!(http_request(port, "GET", "/ping", None, "").0, 200);
    assert!(open
        .stdout()
        .contains("The HTTP credentials must be specified in the form of 'user:password'."));

    // Without credentials everything answers.
    let (_none, port) = start("none", &[], &[]);
    assert!(!http_request(port, "GET", "/ping", None, "").1.is_empty());
    assert_eq!(http_request(port, "GET", "/ping", None, "").0, 200);
}

// ---------------------------------------------------------------------------
// ZooKeeper digest authentication and ACLs (zk://user:password@...).
// ---------------------------------------------------------------------------

/// Runs OPS (JSON arrays) with python3-kazoo against the test's ZooKeeper,
/// authenticated with digest AUTH (`user:password`) or not at all. Each
/// result is `{"ok": value}` or `{"error": "<kazoo exception name>"}`.
/// Ops: `["get", path]` (data as text), `["children", path]` (sorted),
/// `["acls", path]` (sorted `scheme:id:perms`), `["create_digest_only", path,
/// "user:password"]` (like `setAcl path digest:user:hash:cdrwa`),
/// `["digest", "user:password"]` (the digest id of those credentials).
fn kazoo(zk_port: u16, auth: Option<&str>, ops: &[Value]) -> Vec<Value> {
    const SCRIPT: &str = r#"
import json, sys
from kazoo.client import KazooClient
from kazoo.security import make_digest_acl, make_digest_acl_credential
host, auth, ops = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = KazooClient(host, auth_data=[("digest", auth)] if auth else None)
client.start(timeout=15)
out = []
for op in ops:
    try:
        if op[0] == "get":
            out.append({"ok": client.get(op[1])[0].decode()})
        elif op[0] == "children":
            out.append({"ok": sorted(client.get_children(op[1]))})
        elif op[0] == "acls":
            acls = client.get_acls(op[1])[0]
            out.append({"ok": sorted("%s:%s:%d" % (a.id.scheme, a.id.id, a.perms)
                                     for a in acls)})
        elif op[0] == "create_digest_only":
            user, password = op[2].split(":", 1)
            client.create(op[1], b"", acl=[make_digest_acl(user, password, all=True)])
            out.append({"ok": None})
        elif op[0] == "digest":
            user, password = op[1].split(":", 1)
            out.append({"ok": make_digest_acl_credential(user, password)})
    except Exception as error:
        out.append({"error": type(error).__name__})
client.stop()
print(json.dumps(out))
"#;
    let ops = serde_json::to_string(ops).unwrap();
    let output = kazoo_python()
        .args([
            "-c",
            SCRIPT,
            &format!("127.0.0.1:{zk_port}"),
            auth.unwrap_or(""),
            &ops,
        ])
        .output()
        .expect("python3 with kazoo");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// One kazoo op that must succeed: its value.
fn kazoo_ok(zk_port: u16, auth: Option<&str>, op: Value) -> Value {
    let result = kazoo(zk_port, auth, std::slice::from_ref(&op)).remove(0);
    assert!(result.get("ok").is_some(), "{op} as {auth:?}: {result}");
    result["ok"].clone()
}

/// The ACL entries (`scheme:id:perms`) of a znode, read with the credentials.
fn acls(zk_port: u16, auth: &str, path: &str) -> Vec<String> {
    let value = kazoo_ok(zk_port, Some(auth), serde_json::json!(["acls", path]));
    serde_json::from_value(value).unwrap()
}

/// Checks that none of the texts holds the secret.
fn assert_no_secret(secret: &str, texts: &[(&str, String)]) {
    for (name, text) in texts {
        assert!(!text.contains(secret), "{name} logs the secret:\n{text}");
    }
}

/// The leading master among PORTS on 127.0.0.1 (the one whose /master/state
/// answers 200 rather than redirecting).
fn leading_master(ports: &[u16]) -> u16 {
    wait_for(Duration::from_secs(30), "a leading master", || {
        ports
            .iter()
            .copied()
            .find(|port| try_json("127.0.0.1", *port, "/master/state").is_some())
    })
}

/// What both ZooKeeper-ACL tests run against: a real ZooKeeper, both stand-in packages
/// and a cgroup v1 sysroot. ZooKeeper is a declared test dependency (ci/setup-host.sh),
/// so its absence fails these tests rather than skipping them.
struct AclScenario {
    zk: ZooKeeper,
    mesos_root: TempDir,
    marathon_root: TempDir,
    sysroot: PathBuf,
}

impl AclScenario {
    fn start(d: &Path) -> AclScenario {
        let zk = ZooKeeper::start(d);
        let packages = Packages::build();
        AclScenario {
            zk,
            mesos_root: packages.extract(MESOS_DEB),
            marathon_root: packages.extract(MARATHON_DEB),
            sysroot: fake_sysroot(&d.join("sysroot"), false, CGROUP_V1_MOUNTS),
        }
    }
}

#[test]
fn zookeeper_credentials_give_mesos_and_marathon_znodes_their_acls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let AclScenario {
        zk,
        mesos_root,
        marathon_root,
        sysroot,
    } = AclScenario::start(d);
    let secret = "Zk-s3cret-9f2";
    let creds = format!("mesobake:{secret}");
    let mesos_url = format!("zk://{creds}@127.0.0.1:{}/cluster/mesos", zk.port);
    let marathon_url = format!("zk://{creds}@127.0.0.1:{}/cluster/marathon", zk.port);

    // A master with credentials creates /cluster and /cluster/mesos (the
    // group's base path, recursively) and its json.info_ member.
    let port = free_port();
    let master = start_master(
        mesos_root.path(),
        d,
        "master",
        port,
        &[
            format!("--zk={mesos_url}"),
            "--zk_session_timeout=2secs".to_string(),
        ],
    );
    leading_master(&[port]);

    // Marathon with credentials: its storage root and leader latch, and the
    // scheduler driver follows the master through the credentialed URL.
    let http_port = free_port();
    let marathon_proc = Proc::spawn(
        marathon(
            marathon_root.path(),
            &[
                "--master",
                &mesos_url,
                "--zk",
                &marathon_url,
                "--http_port",
                &http_port.to_string(),
                "--hostname",
                "127.0.0.1",
            ],
        ),
        d,
        "marathon",
    );
    wait_for(Duration::from_secs(30), "Marathon to register", || {
        let info = try_json("127.0.0.1", http_port, "/v2/info")?;
        info["frameworkId"].as_str().map(str::to_string)
    });

    // Mesos: EVERYONE_READ_CREATOR_ALL on every znode it created.
    let digest = kazoo_ok(zk.port, None, serde_json::json!(["digest", creds]));
    let creator_all = format!("digest:{}:31", digest.as_str().unwrap());
    let everyone_read_creator_all = vec![creator_all.clone(), "world:anyone:1".to_string()];
    let members: Vec<String> = serde_json::from_value(kazoo_ok(
        zk.port,
        Some(&creds),
        serde_json::json!(["children", "/cluster/mesos"]),
    ))
    .unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    assert!(members[0].starts_with("json.info_"), "{members:?}");
    let member = format!("/cluster/mesos/{}", members[0]);
    for path in ["/cluster", "/cluster/mesos", member.as_str()] {
        assert_eq!(
            acls(zk.port, &creds, path),
            everyone_read_creator_all,
            "{path}"
        );
    }

    // Marathon: CREATOR_ALL_ACL, and world-readable leader-curator.
    for path in ["/cluster/marathon", "/cluster/marathon/state"] {
        assert_eq!(
            acls(zk.port, &creds, path),
            vec![creator_all.clone()],
            "{path}"
        );
    }
    assert_eq!(
        acls(zk.port, &creds, "/cluster/marathon/leader-curator"),
        everyone_read_creator_all
    );
    let latches: Vec<String> = serde_json::from_value(kazoo_ok(
        zk.port,
        Some(&creds),
        serde_json::json!(["children", "/cluster/marathon/leader-curator"]),
    ))
    .unwrap();
    assert_eq!(latches.len(), 1, "{latches:?}");
    assert!(
        latches[0].starts_with("_c_") && latches[0].contains("-latch-"),
        "{latches:?}"
    );
    let latch = format!("/cluster/marathon/leader-curator/{}", latches[0]);
    assert_eq!(acls(zk.port, &creds, &latch), vec![creator_all.clone()]);
    assert_eq!(
        kazoo_ok(zk.port, Some(&creds), serde_json::json!(["get", latch])),
        format!("127.0.0.1:{http_port}")
    );

    // Without credentials: nothing of Marathon's but the latch's names; the
    // masters' MasterInfo, world-readable, still.
    let anonymous = kazoo(
        zk.port,
        None,
        &[
            serde_json::json!(["get", "/cluster/marathon"]),
            serde_json::json!(["children", "/cluster/marathon"]),
            serde_json::json!(["get", "/cluster/marathon/state"]),
            serde_json::json!(["children", "/cluster/marathon/state"]),
            serde_json::json!(["get", latch]),
        ],
    );
    for result in &anonymous {
        assert_eq!(result["error"], "NoAuthError", "{anonymous:?}");
    }
    let readable = kazoo(
        zk.port,
        None,
        &[
            serde_json::json!(["children", "/cluster/marathon/leader-curator"]),
            serde_json::json!(["get", member]),
        ],
    );
    assert_eq!(readable[0]["ok"], serde_json::json!(latches));
    assert!(
        readable[1]["ok"]
            .as_str()
            .is_some_and(|info| info.contains(&format!("master@127.0.0.1:{port}"))),
        "{readable:?}"
    );

    // An agent without credentials finds the leader all the same (the
    // members are world-readable) and registers.
    let agent_port = free_port();
    let no_creds_url = format!("zk://127.0.0.1:{}/cluster/mesos", zk.port);
    let _agent = Proc::spawn(
        agent_command(
            mesos_root.path(),
            &sysroot,
            d,
            "agent",
            agent_port,
            &no_creds_url,
            &["--zk_session_timeout=2secs".to_string()],
        ),
        d,
        "agent",
    );
    wait_for(Duration::from_secs(30), "the agent to register", || {
        let state = try_json("127.0.0.1", agent_port, "/state")?;
        (state["id"] != "").then_some(())
    });

    // A master without credentials cannot join: GroupProcess::doJoin()'s
    // NoAuth fails its candidacy (Master::contended()).
    let refused = free_port();
    let args = master_args(
        refused,
        &[
            format!("--zk={no_creds_url}"),
            "--zk_session_timeout=2secs".to_string(),
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = expect_failure(
        mesos(mesos_root.path(), "mesos-master", &args),
        d,
        "no-creds-master",
        "EXIT with status 1: Failed to contend: Failed to create ephemeral node at \
         '/cluster/mesos/json.info_' in ZooKeeper: not authenticated",
    );
    assert!(
        !stderr.contains("Authenticating with ZooKeeper"),
        "{stderr}"
    );

    // Marathon shows both URLs redacted (InfoResource); Mesos shows the flag
    // as given, but neither logs the password.
    let info = get_json(http_port, "/v2/info");
    assert_eq!(
        info["zookeeper_config"]["zk"],
        format!(
            "zk://xxxxxxxx:xxxxxxxx@127.0.0.1:{}/cluster/marathon",
            zk.port
        )
    );
    assert_eq!(
        info["marathon_config"]["master"],
        format!("zk://xxxxxxxx:xxxxxxxx@127.0.0.1:{}/cluster/mesos", zk.port)
    );
    assert_eq!(info["elected"], true);
    assert_eq!(get_json(port, "/flags")["flags"]["zk"], mesos_url);
    let master_log = master.stderr();
    assert!(
        master_log.contains("Authenticating with ZooKeeper using digest"),
        "{master_log}"
    );
    assert!(
        master_log.contains(&format!(
            "--zk=\"zk://xxxxxxxx:xxxxxxxx@127.0.0.1:{}/cluster/mesos\"",
            zk.port
        )),
        "{master_log}"
    );
    assert_no_secret(
        secret,
        &[
            ("master stderr", master_log),
            ("master stdout", master.stdout()),
            ("marathon stdout", marathon_proc.stdout()),
            ("marathon stderr", marathon_proc.stderr()),
        ],
    );
}

#[test]
fn digest_only_paths_admit_only_the_right_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let AclScenario {
        zk,
        mesos_root,
        marathon_root,
        sysroot,
    } = AclScenario::start(d);
    let secret = "Pre-created-7c1";
    let creds = format!("mesobake:{secret}");
    let url = |auth: &str, path: &str| format!("zk://{auth}127.0.0.1:{}{path}", zk.port);
    let mesos_url = url(&format!("{creds}@"), "/mesos");
    let marathon_url = url(&format!("{creds}@"), "/marathon");
    let wrong_mesos_url = url("mesobake:wrong@", "/mesos");

    // What the masters' first-boot job does with zkCli.sh: both paths exist
    // before any daemon starts, readable and writable by mesobake only.
    for path in ["/mesos", "/marathon"] {
        kazoo_ok(
            zk.port,
            Some(&creds),
            serde_json::json!(["create_digest_only", path, creds]),
        );
    }
    let digest = kazoo_ok(zk.port, None, serde_json::json!(["digest", creds]));
    let creator_all = format!("digest:{}:31", digest.as_str().unwrap());

    // With the credentials: two masters elect a leader, an agent registers
    // with it and Marathon registers as a framework.
    let zk_flags = |url: &str| vec![format!("--zk={url}"), "--zk_session_timeout=2secs".into()];
    let ports = [free_port(), free_port()];
    let first = start_master(
        mesos_root.path(),
        d,
        "master1",
        ports[0],
        &zk_flags(&mesos_url),
    );
    let leader = leading_master(&ports[..1]);
    let second = start_master(
        mesos_root.path(),
        d,
        "master2",
        ports[1],
        &zk_flags(&mesos_url),
    );
    wait_for(Duration::from_secs(30), "two members", || {
        let members = kazoo_ok(
            zk.port,
            Some(&creds),
            serde_json::json!(["children", "/mesos"]),
        );
        (members.as_array().unwrap().len() == 2).then_some(())
    });
    assert_eq!(leading_master(&ports), leader);
    let agent_port = free_port();
    let _agent = Proc::spawn(
        agent_command(
            mesos_root.path(),
            &sysroot,
            d,
            "agent",
            agent_port,
            &mesos_url,
            &["--zk_session_timeout=2secs".to_string()],
        ),
        d,
        "agent",
    );
    let agent_id = wait_for(Duration::from_secs(30), "the agent to register", || {
        let state = try_json("127.0.0.1", agent_port, "/state")?;
        state["id"]
            .as_str()
            .filter(|id| !id.is_empty())
            .map(str::to_string)
    });
    assert_eq!(
        get_json(leader, "/master/state")["slaves"][0]["id"],
        agent_id
    );
    // Marathon with a wrong --zk password, while /marathon is still empty:
    // its storage root and its latch are refused (Curator logs them), it is
    // never elected, and the leadership stream times out after
    // --zk_connection_timeout: exit 104.
    let (status, stdout, _) = run_to_exit(
        marathon(
            marathon_root.path(),
            &[
                "--master",
                &mesos_url,
                "--zk",
                &url("mesobake:wrong@", "/marathon"),
                "--zk_connection_timeout",
                "2000",
                "--http_port",
                &free_port().to_string(),
            ],
        ),
        d,
        "wrong-marathon",
    );
    assert_eq!(status.code(), Some(104), "{stdout}");
    for expected in [
        "ERROR Ensure path threw exception\norg.apache.zookeeper.KeeperException$NoAuthException: \
         KeeperErrorCode = NoAuth for /marathon/state",
        "ERROR getChildren() failed. rc = -102",
        "Leadership ended with failure; exiting",
    ] {
        assert!(stdout.contains(expected), "{expected}\n{stdout}");
    }
    assert!(!stdout.contains("Elected as leader"), "{stdout}");
    assert_no_secret("wrong@", &[("wrong-marathon", stdout)]);

    let http_port = free_port();
    let marathon_proc = Proc::spawn(
        marathon(
            marathon_root.path(),
            &[
                "--master",
                &mesos_url,
                "--zk",
                &marathon_url,
                "--http_port",
                &http_port.to_string(),
                "--hostname",
                "127.0.0.1",
            ],
        ),
        d,
        "marathon",
    );
    let framework_id = wait_for(Duration::from_secs(30), "Marathon to register", || {
        let info = try_json("127.0.0.1", http_port, "/v2/info")?;
        info["frameworkId"].as_str().map(str::to_string)
    });
    assert_eq!(
        get_json(leader, "/frameworks")["frameworks"][0]["id"],
        framework_id
    );

    // Once a Marathon has created <path>/leader-curator (world-readable), a
    // Marathon with a wrong password can list the latch but not join it: it
    // stays in standby, leads nothing and never registers with Mesos.
    let standby_port = free_port();
    let mut standby = Proc::spawn(
        marathon(
            marathon_root.path(),
            &[
                "--master",
                &mesos_url,
                "--zk",
                &url("mesobake:wrong@", "/marathon"),
                "--zk_connection_timeout",
                "1000",
                "--http_port",
                &standby_port.to_string(),
            ],
        ),
        d,
        "standby-marathon",
    );
    wait_for(Duration::from_secs(30), "the standby Marathon", || {
        standby
            .stdout()
            .contains("Leader defeated. Current leader: -")
            .then_some(())
    });
    assert!(
        standby.child.try_wait().unwrap().is_none(),
        "{}",
        standby.stdout()
    );
    let info = get_json(standby_port, "/v2/info");
    assert_eq!(info["elected"], false, "{info}");
    assert_eq!(info["frameworkId"], Value::Null, "{info}");
    assert_eq!(http_get(standby_port, "/v2/leader").unwrap().0, 404);
    assert!(
        standby
            .stdout()
            .contains("ERROR getChildren() failed. rc = -102"),
        "{}",
        standby.stdout()
    );
    assert_eq!(
        get_json(leader, "/frameworks")["frameworks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    drop(standby);

    // The pre-created ACLs stay as they were; without credentials neither
    // path can be read or listed.
    for path in ["/mesos", "/marathon"] {
        assert_eq!(
            acls(zk.port, &creds, path),
            vec![creator_all.clone()],
            "{path}"
        );
    }
    let anonymous = kazoo(
        zk.port,
        None,
        &[
            serde_json::json!(["get", "/mesos"]),
            serde_json::json!(["children", "/mesos"]),
            serde_json::json!(["get", "/marathon"]),
            serde_json::json!(["children", "/marathon"]),
        ],
    );
    for result in &anonymous {
        assert_eq!(result["error"], "NoAuthError", "{anonymous:?}");
    }
    // A wrong password authenticates (digest always does) but is another
    // identity: the same NoAuth.
    let wrong = kazoo(
        zk.port,
        Some("mesobake:wrong"),
        &[serde_json::json!(["children", "/mesos"])],
    );
    assert_eq!(wrong[0]["error"], "NoAuthError");

    // Mesos daemons with a wrong password, or none, fail like Mesos: the
    // group's getChildren() is refused, which ZooKeeper::retryable() does not
    // retry; the detection fails and the process exits.
    let children_refused =
        "Non-retryable error attempting to get children of '/mesos' in ZooKeeper: not authenticated";
    let no_creds_mesos_url = url("", "/mesos");
    for (name, zk_url) in [
        ("wrong-master", &wrong_mesos_url),
        ("anonymous-master", &no_creds_mesos_url),
    ] {
        let args = master_args(free_port(), &zk_flags(zk_url));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let stderr = expect_failure(
            mesos(mesos_root.path(), "mesos-master", &args),
            d,
            name,
            &format!(
                "EXIT with status 1: Failed to detect the leading master: \
                 {children_refused}; committing suicide!"
            ),
        );
        assert!(
            stderr.contains(&format!("Group aborting: {children_refused}")),
            "{stderr}"
        );
        assert_no_secret("wrong@", &[(name, stderr)]);
    }
    let stderr = expect_failure(
        agent_command(
            mesos_root.path(),
            &sysroot,
            d,
            "wrong-agent",
            free_port(),
            &wrong_mesos_url,
            &[],
        ),
        d,
        "wrong-agent",
        &format!("EXIT with status 1: Failed to detect a master: {children_refused}"),
    );
    assert_no_secret("wrong@", &[("wrong-agent", stderr)]);
    // None of them joined.
    let members = kazoo_ok(
        zk.port,
        Some(&creds),
        serde_json::json!(["children", "/mesos"]),
    );
    assert_eq!(members.as_array().unwrap().len(), 2, "{members}");

    // Marathon elected, but its scheduler driver has a wrong password in
    // --master: libmesos's detector fails and takes the process down.
    let (status, _, stderr) = run_to_exit(
        marathon(
            marathon_root.path(),
            &[
                "--master",
                &wrong_mesos_url,
                "--zk",
                &marathon_url,
                "--http_port",
                &free_port().to_string(),
            ],
        ),
        d,
        "wrong-driver",
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "EXIT with status 1: Failed to detect a master: {children_refused}"
        )),
        "{stderr}"
    );

    assert_no_secret(
        secret,
        &[
            ("master1", first.stderr()),
            ("master2", second.stderr()),
            ("marathon stdout", marathon_proc.stdout()),
            ("marathon stderr", marathon_proc.stderr()),
        ],
    );
}
