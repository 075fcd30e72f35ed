//! End-to-end tests of the first-boot configurator, the POSIX sh script baked
//! into every image (`src/stage/firstboot/mesobake-configure`).
//!
//! Each test builds a scratch guest root that copies a real package layout
//! (Mesosphere's or AVENTER's Mesos packages, Debian's zookeeper with its
//! absolute alternatives symlinks, Marathon's /etc/default file), runs the
//! script against it with `MESOBAKE_ROOT`, and inspects what it wrote, what it
//! started and what it printed. Every scenario runs under every POSIX shell
//! found on the machine (`sh`, which is dash on Debian, plus dash, bash
//! --posix, busybox sh and posh when installed).
//!
//! Invariants checked on every single run (see [`Fixture::run`]): stdout is
//! exactly one status line that agrees with the exit status, and nothing on
//! the host outside the scratch root was touched.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

#[path = "common/zookeeper.rs"]
mod zookeeper;
use zookeeper::ZooKeeper;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/stage/firstboot/mesobake-configure"
);
const UNIT: &str = include_str!("../src/stage/firstboot/mesobake-configure.service");
const JOB: &str = include_str!("../src/stage/firstboot/mesobake-configure.upstart.conf");

/// The address and name "detected" on a node unless a test says otherwise.
const IP: &str = "10.0.2.15";
const HOST: &str = "node1";

// --- shells -------------------------------------------------------------------

/// A shell to run the script with, as argv prefix.
#[derive(Clone, Debug)]
struct Shell(Vec<&'static str>);

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// Every POSIX shell available here. `sh` always; dash only when /bin/sh is
/// something else (on Debian and Ubuntu /bin/sh already is dash).
fn shells() -> Vec<Shell> {
    let mut shells = vec![Shell(vec!["sh"])];
    let sh_is_dash = fs::read_link("/bin/sh")
        .map(|target| target.ends_with("dash"))
        .unwrap_or(false);
    if !sh_is_dash && on_path("dash") {
        shells.push(Shell(vec!["dash"]));
    }
    if on_path("bash") {
        shells.push(Shell(vec!["bash", "--posix"]));
    }
    if on_path("busybox") {
        shells.push(Shell(vec!["busybox", "sh"]));
    }
    if on_path("posh") {
        shells.push(Shell(vec!["posh"]));
    }
    shells
}

// --- roles and package layouts -------------------------------------------------

/// Which Mesos packages the fixture imitates (mesos-packaging.md §1.1, §1.5).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// /etc/default/mesos-{master,slave} pass ZK/MASTER from /etc/mesos/zk;
    /// the agent is `mesos-slave` with flags in /etc/mesos-slave.
    Mesosphere,
    /// No /etc/default files at all; the agent is `mesos-agent` with flags in
    /// /etc/mesos-agent.
    Aventer,
}

impl Layout {
    fn agent(self) -> &'static str {
        match self {
            Layout::Mesosphere => "mesos-slave",
            Layout::Aventer => "mesos-agent",
        }
    }
}

/// A role profile as the builder bakes it into role.env. `services` names the
/// agent `AGENT`, which becomes the layout's agent service.
#[derive(Clone, Copy, Debug)]
struct Role {
    name: &'static str,
    services: &'static str,
}

const MASTER_SLAVE: Role = Role {
    name: "master-slave",
    services: "zookeeper mesos-master marathon AGENT",
};
const SLAVE_ONLY: Role = Role {
    name: "slave-only",
    services: "AGENT",
};
const MASTER: Role = Role {
    name: "master",
    services: "zookeeper mesos-master marathon",
};

const THREE_MASTERS: &str = "MESOBAKE_ZK_SERVERS='3=10.0.0.13 1=10.0.0.11 2=10.0.0.12'\n";

// --- the fixture ------------------------------------------------------------------

/// A scratch guest root plus a work dir (outside the root) for the fake
/// service command, the fake init tools and their log.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    shell: Shell,
    layout: Layout,
}

/// How one run of the script is set up.
#[derive(Clone, Debug)]
struct Boot {
    /// `MESOBAKE_DETECT_IP` / `MESOBAKE_DETECT_HOSTNAME`, the test hooks.
    ip: &'static str,
    hostname: &'static str,
    /// Set the detection hooks (true) or let the script run `ip` and
    /// `hostname`, which resolve to the fakes in the work dir.
    detect_hooks: bool,
    /// Go through `MESOBAKE_SERVICE_CMD` (true) or the real init commands,
    /// which resolve to the fake systemctl/start/service in the work dir.
    service_cmd: bool,
    /// Extra environment, e.g. for the fake tools.
    env: Vec<(&'static str, &'static str)>,
}

impl Default for Boot {
    fn default() -> Self {
        Boot {
            ip: IP,
            hostname: HOST,
            detect_hooks: true,
            service_cmd: true,
            env: Vec::new(),
        }
    }
}

/// What one run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    /// Lines logged by the fake service command / init tools, in call order.
    calls: Vec<String>,
}

impl Run {
    fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, 0, "script failed: {self:#?}");
        self
    }

    fn assert_failed(&self, reason_part: &str) -> &Self {
        assert_eq!(self.code, 1, "script should have failed: {self:#?}");
        assert!(
            self.stdout.starts_with("mesobake: configuration FAILED: ")
                && self.stdout.contains(reason_part),
            "FAILED line should mention {reason_part:?}: {self:#?}"
        );
        self
    }

    /// Services started through `MESOBAKE_SERVICE_CMD`, in order.
    fn started(&self) -> Vec<&str> {
        self.calls
            .iter()
            .map(|line| line.strip_prefix("start ").unwrap_or(line))
            .collect()
    }
}

/// One entry of a scratch tree, as much as a rerun could change.
#[derive(Debug, PartialEq)]
enum Entry {
    Dir {
        mtime: (i64, i64),
        ino: u64,
    },
    File {
        content: String,
        mode: u32,
        mtime: (i64, i64),
        ino: u64,
    },
    Link {
        target: PathBuf,
    },
}

type Snapshot = BTreeMap<PathBuf, Entry>;

impl Fixture {
    /// A guest root with `layout`'s packages installed and `role` baked.
    fn new(shell: &Shell, layout: Layout, role: Role) -> Fixture {
        Self::with_init(shell, layout, role, "systemd")
    }

    fn with_init(shell: &Shell, layout: Layout, role: Role, init: &str) -> Fixture {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().join("root");
        let work = tmp.path().join("work");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(work.join("bin")).unwrap();
        let fx = Fixture {
            _tmp: tmp,
            root,
            work,
            shell: shell.clone(),
            layout,
        };
        fx.install_packages();
        fx.install_fake_tools();
        fx.bake_role(role, init);
        fx
    }

    /// The files the packages lay down (mesos-packaging.md §1.1, §1.5, §2.1, §3.1).
    fn install_packages(&self) {
        self.write(
            "/etc/hosts",
            "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n\n::1 localhost ip6-localhost ip6-loopback\n",
        );
        // Debian's zookeeper: config behind an absolute alternatives chain,
        // and the data dir's myid linked back into it.
        self.write(
            "/etc/zookeeper/conf_example/zoo.cfg",
            "tickTime=2000\ninitLimit=10\nsyncLimit=5\ndataDir=/var/lib/zookeeper\nclientPort=2181\n\
             #server.1=zookeeper1:2888:3888\n#server.2=zookeeper2:2888:3888\n",
        );
        self.write(
            "/etc/zookeeper/conf_example/myid",
            "replace this text with the cluster-unique zookeeper's instance id (1-255)\n",
        );
        self.write(
            "/etc/zookeeper/conf_example/environment",
            "ZOOCFG=/etc/zookeeper/conf/zoo.cfg\nZOO_LOG_DIR=/var/log/zookeeper\n",
        );
        self.link(
            "/etc/alternatives/zookeeper-conf",
            "/etc/zookeeper/conf_example",
        );
        self.link("/etc/zookeeper/conf", "/etc/alternatives/zookeeper-conf");
        self.link("/var/lib/zookeeper/myid", "/etc/zookeeper/conf/myid");
        // Marathon >= 1.5 ships this one line.
        self.write("/etc/default/marathon", "MARATHON_MESOS_USER=root\n");
        // Its preinst adds the system user `marathon`, whom its unit runs as. Here the
        // test's own uid stands for it, so that the script can chown to it unprivileged.
        let (uid, gid) = self.owner();
        self.write(
            "/etc/passwd",
            &format!(
                "root:x:0:0:root:/root:/bin/bash
                 marathon:x:{uid}:{gid}::/home/marathon:/usr/sbin/nologin
"
            ),
        );
        match self.layout {
            Layout::Mesosphere => {
                self.write("/etc/mesos/zk", "zk://localhost:2181/mesos\n");
                self.write(
                    "/etc/default/mesos",
                    "LOGS=/var/log/mesos\nULIMIT=\"-n 8192\"\n",
                );
                self.write(
                    "/etc/default/mesos-master",
                    "PORT=5050\nZK=`cat /etc/mesos/zk`\n",
                );
                self.write("/etc/default/mesos-slave", "MASTER=`cat /etc/mesos/zk`\n");
                self.write("/etc/mesos-master/work_dir", "/var/lib/mesos\n");
                self.write("/etc/mesos-master/quorum", "1\n");
                self.write("/etc/mesos-slave/work_dir", "/var/lib/mesos\n");
            }
            Layout::Aventer => {
                self.mkdir("/etc/mesos-master");
                self.mkdir("/etc/mesos-agent");
            }
        }
    }

    /// role.env the way the builder writes it.
    fn bake_role(&self, role: Role, init: &str) {
        let agent = self.layout.agent();
        let services = role.services.replace("AGENT", agent);
        let (agent_dir, agent_defaults) = if services.contains(agent) {
            (format!("/etc/{agent}"), format!("/etc/default/{agent}"))
        } else {
            (String::new(), String::new())
        };
        self.write(
            "/etc/mesobake/role.env",
            &format!(
                "# Baked by mesobake.\nMESOBAKE_ROLE={}\nMESOBAKE_SERVICES='{services}'\n\
                 MESOBAKE_INIT={init}\nMESOBAKE_AGENT_DIR={agent_dir}\n\
                 MESOBAKE_AGENT_DEFAULTS={agent_defaults}\nMESOBAKE_CLUSTER=''\n",
                role.name
            ),
        );
    }

    /// Upstart job files and Marathon's SysV script, as on Ubuntu 14.04.
    fn install_upstart_jobs(&self) {
        for job in ["zookeeper", "mesos-master", "mesos-slave"] {
            self.write(&format!("/etc/init/{job}.conf"), "respawn\n");
        }
        self.write("/etc/init.d/marathon", "#!/bin/sh\n");
    }

    /// The fake service command and init tools. Each logs its argv; `start`
    /// answers like upstart for jobs listed in FAKE_RUNNING, and every tool
    /// fails for the service named in FAKE_FAIL. `ip` and `hostname` print
    /// canned iproute2 output from FAKE_ROUTE, FAKE_ROUTE_GET, FAKE_ADDR and
    /// FAKE_HOSTNAME instead of looking at the host.
    fn install_fake_tools(&self) {
        let log = self.work.join("calls.log");
        let tool = |name: &str, prefix: &str, body: &str| {
            let path = self.work.join("bin").join(name);
            fs::write(
                &path,
                format!(
                    "#!/bin/sh\n\
                     for arg; do last=$arg; done\n\
                     echo \"{prefix}$*\" >>'{}'\n\
                     if [ \"$last\" = \"${{FAKE_FAIL:-}}\" ] || [ \"$1\" = \"${{FAKE_FAIL:-}}\" ]; then echo \"failed: $*\" >&2; exit 1; fi\n\
                     {body}\n\
                     exit 0\n",
                    log.display()
                ),
            )
            .unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        };
        let canned = |name: &str, body: &str| {
            let path = self.work.join("bin").join(name);
            fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        };
        canned(
            "ip",
            "case \"$*\" in\n\
             '-4 route show default') printf '%b' \"${FAKE_ROUTE:-}\" ;;\n\
             '-4 route get '*) printf '%b' \"${FAKE_ROUTE_GET:-}\" ;;\n\
             '-4 -o addr show scope global') printf '%b' \"${FAKE_ADDR:-}\" ;;\n\
             *) echo \"fake ip: unexpected $*\" >&2; exit 1 ;;\n\
             esac",
        );
        canned("hostname", "echo \"${FAKE_HOSTNAME:-fake-host}\"");
        // nft: logged to nft.log, then run for real in a throwaway network namespace
        // of a throwaway user namespace, so the rules must load in the real nft.
        canned(
            "nft",
            &format!(
                "echo \"nft $*\" >>'{}'\nexec unshare -rn /usr/sbin/nft \"$@\"",
                self.work.join("nft.log").display()
            ),
        );
        tool("service-cmd", "", "");
        tool("systemctl", "systemctl ", "");
        tool("service", "service ", "");
        tool("initctl", "initctl ", "");
        tool(
            "start",
            "start ",
            "case \" ${FAKE_RUNNING:-} \" in *\" $1 \"*) echo \"start: Job is already running: $1\" >&2; exit 1;; esac\n\
             echo \"$1 start/running, process 4242\"",
        );
    }

    /// The uid and gid the test runs as (which own everything in the root).
    fn owner(&self) -> (u32, u32) {
        let meta = fs::metadata(&self.root).unwrap();
        (meta.uid(), meta.gid())
    }

    /// secrets.env the way cloud-init writes it: 0600, owned by the user running the
    /// script (root on a real node).
    fn secrets_env(&self, content: &str) {
        self.write("/etc/mesobake/secrets.env", content);
        self.chmod("/etc/mesobake/secrets.env", 0o600);
    }

    fn chmod(&self, path: &str, mode: u32) {
        fs::set_permissions(self.guest(path), fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Permission bits and owner uid of a guest file (not following a last symlink).
    fn mode(&self, path: &str) -> (u32, u32) {
        let meta = fs::symlink_metadata(self.guest(path)).unwrap();
        (meta.mode() & 0o7777, meta.uid())
    }

    fn guest(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn mkdir(&self, path: &str) {
        fs::create_dir_all(self.guest(path)).unwrap();
    }

    fn write(&self, path: &str, content: &str) {
        let host = self.guest(path);
        fs::create_dir_all(host.parent().unwrap()).unwrap();
        fs::write(host, content).unwrap();
    }

    fn append(&self, path: &str, content: &str) {
        let old = fs::read_to_string(self.guest(path)).unwrap_or_default();
        self.write(path, &(old + content));
    }

    fn link(&self, path: &str, target: &str) {
        let host = self.guest(path);
        fs::create_dir_all(host.parent().unwrap()).unwrap();
        symlink(target, host).unwrap();
    }

    fn remove(&self, path: &str) {
        fs::remove_file(self.guest(path)).unwrap();
    }

    /// A guest file's content; symlinks are followed by hand, inside the root.
    fn read(&self, path: &str) -> String {
        let host = self.resolve(path);
        fs::read_to_string(&host).unwrap_or_else(|e| panic!("reading {path} ({host:?}): {e}"))
    }

    fn exists(&self, path: &str) -> bool {
        fs::symlink_metadata(self.guest(path)).is_ok()
    }

    /// `path` inside the root with absolute symlinks taken relative to the root
    /// (the fixture's links point at guest paths, not host ones).
    fn resolve(&self, path: &str) -> PathBuf {
        let mut done = PathBuf::from("/");
        let mut rest: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        rest.reverse();
        let mut hops = 0;
        while let Some(comp) = rest.pop() {
            let candidate = done.join(&comp);
            match fs::read_link(self.guest(candidate.to_str().unwrap())) {
                Ok(target) => {
                    hops += 1;
                    assert!(hops < 40, "symlink loop at {path}");
                    if target.is_absolute() {
                        done = PathBuf::from("/");
                    }
                    let mut parts: Vec<String> = target
                        .to_str()
                        .unwrap()
                        .split('/')
                        .filter(|c| !c.is_empty())
                        .map(String::from)
                        .collect();
                    parts.reverse();
                    rest.extend(parts);
                }
                Err(_) => done = candidate,
            }
        }
        self.guest(done.to_str().unwrap())
    }

    /// Names in a guest directory (dot-files included: a leftover temp file
    /// must show up).
    fn names(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.guest(dir))
            .unwrap_or_else(|e| panic!("listing {dir}: {e}"))
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// The Mesos init wrapper turns every regular file in a flag dir into a
    /// flag, and an unknown or duplicate flag kills Mesos: the dir must hold
    /// exactly these names.
    fn assert_flag_dir(&self, dir: &str, expected: &[&str]) {
        let files: Vec<String> = self
            .names(dir)
            .into_iter()
            .filter(|n| !self.guest(&format!("{dir}/{n}")).is_dir())
            .collect();
        assert_eq!(files, expected, "files in {dir} (shell {:?})", self.shell);
    }

    /// Replaces one `KEY=value` line of the baked role.env (the builder writes each
    /// key once; the configurator refuses a key given twice).
    fn set_role_env(&self, line: &str) {
        let key = line.split('=').next().unwrap();
        let old = self.read("/etc/mesobake/role.env");
        let mut new: String = old
            .lines()
            .filter(|l| l.split('=').next() != Some(key))
            .map(|l| format!("{l}\n"))
            .collect();
        new += line;
        new += "\n";
        self.write("/etc/mesobake/role.env", &new);
    }

    fn node_env(&self, content: &str) {
        self.write("/etc/mesobake/node.env", content);
    }

    fn run(&self) -> Run {
        self.boot(&Boot::default())
    }

    fn run_ip(&self, ip: &'static str) -> Run {
        self.boot(&Boot {
            ip,
            ..Boot::default()
        })
    }

    /// Run the script once. Checks the invariants every run must keep.
    fn boot(&self, boot: &Boot) -> Run {
        let log = self.work.join("calls.log");
        let _ = fs::remove_file(&log);
        let host_before = host_witness();
        let path = format!(
            "{}:{}",
            self.work.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new(self.shell.0[0]);
        cmd.args(&self.shell.0[1..])
            .arg(SCRIPT)
            .env_clear()
            .env("PATH", path)
            .env("MESOBAKE_ROOT", &self.root)
            .current_dir(&self.work);
        if boot.detect_hooks {
            cmd.env("MESOBAKE_DETECT_IP", boot.ip)
                .env("MESOBAKE_DETECT_HOSTNAME", boot.hostname);
        }
        if boot.service_cmd {
            cmd.env("MESOBAKE_SERVICE_CMD", self.work.join("bin/service-cmd"));
        }
        for (key, value) in &boot.env {
            cmd.env(key, value);
        }
        let out = cmd.output().expect("running the configurator");
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            calls: fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect(),
        };
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "stdout must be one status line ({:?}): {run:#?}",
            self.shell
        );
        let prefix = if run.code == 0 {
            "mesobake: configured role="
        } else {
            "mesobake: configuration FAILED: "
        };
        assert!(
            lines[0].starts_with(prefix),
            "status line vs exit status: {run:#?}"
        );
        assert_eq!(
            host_witness(),
            host_before,
            "the run touched the host outside its root"
        );
        run
    }

    /// Everything in the root: content, mode, link target, mtime and inode
    /// (a rename over a file changes the inode even within one clock tick).
    fn snapshot(&self) -> Snapshot {
        fn walk(dir: &Path, base: &Path, out: &mut Snapshot) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let key = path.strip_prefix(base).unwrap().to_path_buf();
                let mtime = (meta.mtime(), meta.mtime_nsec());
                if meta.file_type().is_symlink() {
                    out.insert(
                        key,
                        Entry::Link {
                            target: fs::read_link(&path).unwrap(),
                        },
                    );
                } else if meta.is_dir() {
                    out.insert(
                        key,
                        Entry::Dir {
                            mtime,
                            ino: meta.ino(),
                        },
                    );
                    walk(&path, base, out);
                } else {
                    let content = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
                    out.insert(
                        key,
                        Entry::File {
                            content,
                            mode: meta.mode(),
                            mtime,
                            ino: meta.ino(),
                        },
                    );
                }
            }
        }
        let mut out = Snapshot::new();
        walk(&self.root, &self.root, &mut out);
        out
    }

    /// Set every file and dir mtime in the root to a fixed past time, so any
    /// write (or temp file created and removed) by the next run shows.
    fn freeze_times(&self) {
        fn walk(dir: &Path, when: SystemTime) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                if meta.file_type().is_symlink() {
                    continue;
                }
                if meta.is_dir() {
                    walk(&path, when);
                }
                fs::File::open(&path).unwrap().set_modified(when).unwrap();
            }
        }
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        walk(&self.root, when);
        fs::File::open(&self.root)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    /// Run and assert that the run changed nothing at all in the root.
    fn assert_run_changes_nothing(&self, boot: &Boot) -> Run {
        self.freeze_times();
        let before = self.snapshot();
        let run = self.boot(boot);
        let after = self.snapshot();
        for (path, entry) in &after {
            assert_eq!(
                before.get(path),
                Some(entry),
                "{path:?} changed ({:?}): {run:#?}",
                self.shell
            );
        }
        assert_eq!(
            before.len(),
            after.len(),
            "entries appeared or vanished ({:?})",
            self.shell
        );
        run
    }
}

/// Size, mtime (s, ns) and inode of a path.
type Stamp = (u64, i64, i64, u64);

/// Host paths the script would hit if it ever escaped its root: existence,
/// size, mtime and inode. /etc/hosts exists on every host.
fn host_witness() -> Vec<(String, Option<Stamp>)> {
    [
        "/etc/hosts",
        "/etc/mesos",
        "/etc/mesos/zk",
        "/etc/mesos-master",
        "/etc/mesos-slave",
        "/etc/mesos-agent",
        "/etc/mesobake",
        "/etc/zookeeper",
        "/etc/zookeeper/conf_example/myid",
        "/etc/zookeeper/conf_example/zoo.cfg",
        "/etc/alternatives/zookeeper-conf",
        "/etc/default/marathon",
        "/var/lib/mesobake",
        "/var/lib/zookeeper",
    ]
    .iter()
    .map(|p| {
        let meta = fs::symlink_metadata(p).ok();
        (
            p.to_string(),
            meta.map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino())),
        )
    })
    .collect()
}

fn configured_line(role: &str, ip: &str, zk: &str) -> String {
    format!("mesobake: configured role={role} ip={ip} zk={zk}\n")
}

const ZOO_CFG_HEAD: &str =
    "# Written by mesobake-configure at every boot; edits are overwritten.\n\
tickTime=2000\ninitLimit=10\nsyncLimit=5\ndataDir=/var/lib/zookeeper\nclientPort=2181\n\
4lw.commands.whitelist=srvr,ruok,mntr,stat\nadmin.enableServer=false\n";

// --- scenarios ------------------------------------------------------------------------

#[test]
fn appliance_without_user_data_is_a_one_node_cluster() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        let run = fx.run();
        run.assert_ok();
        let zk = "zk://10.0.2.15:2181/mesos";
        assert_eq!(run.stdout, configured_line("master-slave", IP, zk));
        assert_eq!(
            run.started(),
            ["zookeeper", "mesos-master", "marathon", "mesos-slave"]
        );

        assert_eq!(fx.read("/etc/mesos/zk"), format!("{zk}\n"));
        assert_eq!(fx.read("/etc/mesos-master/ip"), "10.0.2.15\n");
        assert_eq!(fx.read("/etc/mesos-master/hostname"), "node1\n");
        assert_eq!(fx.read("/etc/mesos-master/quorum"), "1\n");
        assert_eq!(fx.read("/etc/mesos-master/work_dir"), "/var/lib/mesos\n");
        // The defaults pass ZK= and MASTER= already: no zk/master flag file.
        fx.assert_flag_dir(
            "/etc/mesos-master",
            &["hostname", "ip", "quorum", "work_dir"],
        );
        assert_eq!(fx.read("/etc/mesos-slave/ip"), "10.0.2.15\n");
        assert_eq!(fx.read("/etc/mesos-slave/hostname"), "node1\n");
        fx.assert_flag_dir("/etc/mesos-slave", &["hostname", "ip", "work_dir"]);

        // ZooKeeper: written through the alternatives chain, standalone.
        assert_eq!(fx.read("/etc/zookeeper/conf_example/myid"), "1\n");
        assert_eq!(fx.read("/var/lib/zookeeper/myid"), "1\n");
        assert_eq!(fx.read("/etc/zookeeper/conf/zoo.cfg"), ZOO_CFG_HEAD);

        assert_eq!(
            fx.read("/etc/default/marathon"),
            "# Written by mesobake-configure at every boot; edits are overwritten.\n\
             # Baked extra settings come from /etc/mesobake/marathon.env (appended below).\n\
             MARATHON_MASTER=zk://10.0.2.15:2181/mesos\nMARATHON_ZK=zk://10.0.2.15:2181/marathon\n\
             MARATHON_HOSTNAME=10.0.2.15\nMARATHON_MESOS_USER=mesos-task\nLIBPROCESS_IP=10.0.2.15\n"
        );
        assert_eq!(
            fx.read("/etc/hosts"),
            "# mesobake begin\n10.0.2.15 node1\n# mesobake end\n127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n\n\
             ::1 localhost ip6-localhost ip6-loopback\n"
        );
        assert_eq!(
            fx.read("/var/lib/mesobake/configured.env"),
            "MESOBAKE_ROLE=master-slave\nMESOBAKE_IP=10.0.2.15\nMESOBAKE_HOSTNAME=node1\n\
             MESOBAKE_ZK=zk://10.0.2.15:2181/mesos\nMESOBAKE_ZK_ID=1\nMESOBAKE_QUORUM=1\n"
        );
        // Temp files are dot-files beside their target; none may survive.
        for dir in [
            "/etc/mesos",
            "/etc/default",
            "/etc/zookeeper/conf_example",
            "/var/lib/mesobake",
            "/etc",
        ] {
            let leftovers: Vec<String> = fx
                .names(dir)
                .into_iter()
                .filter(|n| n.starts_with(".mesobake"))
                .collect();
            assert!(
                leftovers.is_empty(),
                "temp files left in {dir}: {leftovers:?}"
            );
        }
    }
}

#[test]
fn three_masters_from_user_data() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        fx.set_role_env("MESOBAKE_CLUSTER='lab cluster'");
        fx.node_env(&format!(
            "# written by cloud-init\nMESOBAKE_IP=10.0.0.12\nMESOBAKE_HOSTNAME=master2\nMESOBAKE_ZK_ID=2\n{THREE_MASTERS}"
        ));
        let run = fx.run();
        run.assert_ok();
        let zk = "zk://10.0.0.11:2181,10.0.0.12:2181,10.0.0.13:2181/mesos";
        assert_eq!(run.stdout, configured_line("master-slave", "10.0.0.12", zk));
        assert_eq!(fx.read("/etc/mesos/zk"), format!("{zk}\n"));
        assert_eq!(fx.read("/etc/mesos-master/quorum"), "2\n");
        assert_eq!(fx.read("/etc/mesos-master/ip"), "10.0.0.12\n");
        assert_eq!(fx.read("/etc/mesos-master/hostname"), "master2\n");
        assert_eq!(fx.read("/etc/mesos-master/cluster"), "lab cluster\n");
        fx.assert_flag_dir(
            "/etc/mesos-master",
            &["cluster", "hostname", "ip", "quorum", "work_dir"],
        );
        assert_eq!(fx.read("/etc/zookeeper/conf/myid"), "2\n");
        assert_eq!(
            fx.read("/etc/zookeeper/conf/zoo.cfg"),
            format!(
                "{ZOO_CFG_HEAD}server.1=10.0.0.11:2888:3888\nserver.2=10.0.0.12:2888:3888\n\
                 server.3=10.0.0.13:2888:3888\n"
            )
        );
        let marathon = fx.read("/etc/default/marathon");
        assert!(
            marathon.contains(&format!("\nMARATHON_MASTER={zk}\n")),
            "{marathon}"
        );
        assert!(
            marathon.contains(
                "\nMARATHON_ZK=zk://10.0.0.11:2181,10.0.0.12:2181,10.0.0.13:2181/marathon\n"
            ),
            "{marathon}"
        );
        assert!(
            marathon.contains("\nMARATHON_HOSTNAME=10.0.0.12\n"),
            "{marathon}"
        );
        assert!(fx
            .read("/etc/hosts")
            .starts_with("# mesobake begin\n10.0.0.12 master2\n# mesobake end\n"));
        assert!(fx
            .read("/var/lib/mesobake/configured.env")
            .contains("MESOBAKE_ZK_ID=2\nMESOBAKE_QUORUM=2\n"));
    }
}

#[test]
fn five_masters_need_a_quorum_of_three_and_an_explicit_quorum_wins() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER);
        let servers = "MESOBAKE_ZK_SERVERS='1=m1 2=m2 3=m3 4=m4 5=m5'\nMESOBAKE_ZK_ID=4\n";
        fx.node_env(servers);
        fx.run().assert_ok();
        assert_eq!(fx.read("/etc/mesos-master/quorum"), "3\n");
        assert_eq!(
            fx.read("/etc/mesos/zk"),
            "zk://m1:2181,m2:2181,m3:2181,m4:2181,m5:2181/mesos\n"
        );
        fx.node_env(&format!("{servers}MESOBAKE_QUORUM=2\n"));
        fx.run().assert_ok();
        assert_eq!(fx.read("/etc/mesos-master/quorum"), "2\n");
        assert!(
            !fx.exists("/etc/mesos-slave/ip"),
            "a master-only role configures no agent"
        );
    }
}

#[test]
fn zookeeper_id_is_found_from_the_nodes_own_address() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER);
        fx.node_env(THREE_MASTERS);
        fx.run_ip("10.0.0.13").assert_ok();
        assert_eq!(fx.read("/etc/zookeeper/conf/myid"), "3\n");
    }
}

#[test]
fn explicit_zk_url_wins_over_the_ensemble() {
    for sh in shells() {
        let zk = "zk://zk-a.example:2181,zk-b.example:2181/mesos";
        let fx = Fixture::new(&sh, Layout::Mesosphere, SLAVE_ONLY);
        fx.node_env(&format!("MESOBAKE_ZK={zk}\n{THREE_MASTERS}"));
        let run = fx.run();
        run.assert_ok();
        assert_eq!(run.stdout, configured_line("slave-only", IP, zk));
        assert_eq!(fx.read("/etc/mesos/zk"), format!("{zk}\n"));
        assert_eq!(run.started(), ["mesos-slave"]);

        // Marathon follows the explicit URL's hosts too.
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        fx.node_env(&format!("MESOBAKE_ZK={zk}\n"));
        fx.run().assert_ok();
        assert_eq!(fx.read("/etc/mesos/zk"), format!("{zk}\n"));
        let marathon = fx.read("/etc/default/marathon");
        assert!(
            marathon.contains(&format!("\nMARATHON_MASTER={zk}\n")),
            "{marathon}"
        );
        assert!(
            marathon.contains("\nMARATHON_ZK=zk://zk-a.example:2181,zk-b.example:2181/marathon\n"),
            "{marathon}"
        );
        // ZooKeeper itself still runs as the one-node default.
        assert_eq!(fx.read("/etc/zookeeper/conf/myid"), "1\n");
    }
}

#[test]
fn autoscaled_agent_shares_user_data_and_detects_its_address() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, SLAVE_ONLY);
        fx.node_env("MESOBAKE_ZK='zk://10.0.0.11:2181,10.0.0.12:2181,10.0.0.13:2181/mesos'\n");
        let run = fx.boot(&Boot {
            ip: "172.31.7.9",
            hostname: "ip-172-31-7-9",
            ..Boot::default()
        });
        run.assert_ok();
        assert_eq!(fx.read("/etc/mesos-slave/ip"), "172.31.7.9\n");
        assert_eq!(fx.read("/etc/mesos-slave/hostname"), "ip-172-31-7-9\n");
        fx.assert_flag_dir("/etc/mesos-slave", &["hostname", "ip", "work_dir"]);
        // A slave-only node gets no master or ZooKeeper config.
        fx.assert_flag_dir("/etc/mesos-master", &["quorum", "work_dir"]);
        assert!(fx
            .read("/etc/zookeeper/conf/myid")
            .starts_with("replace this text"));
        assert_eq!(
            fx.read("/var/lib/mesobake/configured.env").lines().nth(4),
            Some("MESOBAKE_ZK_ID=")
        );
    }
}

#[test]
fn agent_without_any_zookeeper_fails_and_changes_nothing() {
    for sh in shells() {
        for layout in [Layout::Mesosphere, Layout::Aventer] {
            let fx = Fixture::new(&sh, layout, SLAVE_ONLY);
            let run = fx.assert_run_changes_nothing(&Boot::default());
            run.assert_failed("MESOBAKE_ZK");
            assert!(run.stdout.contains("MESOBAKE_ZK_SERVERS"), "{run:#?}");
            assert!(run.calls.is_empty(), "nothing may be started: {run:#?}");
            // The same with a node.env that sets everything but the ensemble.
            fx.node_env("MESOBAKE_IP=10.0.0.21\nMESOBAKE_HOSTNAME=agent1\n");
            let run = fx.assert_run_changes_nothing(&Boot::default());
            run.assert_failed("MESOBAKE_ZK");
            assert!(run.calls.is_empty());
        }
    }
}

#[test]
fn aventer_layout_points_flag_files_at_etc_mesos_zk() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Aventer, MASTER_SLAVE);
        let run = fx.run();
        run.assert_ok();
        assert_eq!(
            run.started(),
            ["zookeeper", "mesos-master", "marathon", "mesos-agent"]
        );
        assert_eq!(fx.read("/etc/mesos/zk"), "zk://10.0.2.15:2181/mesos\n");
        // No /etc/default files: every flag comes from a flag file.
        assert_eq!(fx.read("/etc/mesos-master/zk"), "file:///etc/mesos/zk\n");
        assert_eq!(fx.read("/etc/mesos-master/ip"), "10.0.2.15\n");
        fx.assert_flag_dir(
            "/etc/mesos-master",
            &["hostname", "ip", "quorum", "work_dir", "zk"],
        );
        assert_eq!(fx.read("/etc/mesos-agent/master"), "file:///etc/mesos/zk\n");
        assert_eq!(fx.read("/etc/mesos-agent/ip"), "10.0.2.15\n");
        assert_eq!(fx.read("/etc/mesos-agent/work_dir"), "/var/lib/mesos\n");
        fx.assert_flag_dir(
            "/etc/mesos-agent",
            &["hostname", "ip", "master", "work_dir"],
        );
        assert!(
            !fx.exists("/etc/mesos-slave"),
            "AVENTER has no /etc/mesos-slave"
        );
        assert!(
            !fx.exists("/etc/default/mesos-agent"),
            "defaults are never created"
        );
    }
}

#[test]
fn one_mechanism_per_flag_when_defaults_preset_ip_and_cluster() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        fx.set_role_env("MESOBAKE_CLUSTER=lab");
        fx.run().assert_ok();
        fx.assert_flag_dir(
            "/etc/mesos-master",
            &["cluster", "hostname", "ip", "quorum", "work_dir"],
        );
        fx.assert_flag_dir("/etc/mesos-slave", &["hostname", "ip", "work_dir"]);

        // An operator moves ip/cluster into the defaults: the files must go,
        // or Mesos would see --ip twice and exit.
        fx.append(
            "/etc/default/mesos-master",
            "IP=10.0.2.15\nexport CLUSTER=\"lab\"\n",
        );
        fx.append("/etc/default/mesos-slave", "  IP=10.0.2.15\n");
        fx.run().assert_ok();
        fx.assert_flag_dir("/etc/mesos-master", &["hostname", "quorum", "work_dir"]);
        fx.assert_flag_dir("/etc/mesos-slave", &["hostname", "work_dir"]);

        // IP= in the shared /etc/default/mesos counts for both daemons;
        // commented or empty assignments do not.
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        fx.append("/etc/default/mesos", "IP=10.0.2.15\n");
        fx.append("/etc/default/mesos-master", "#CLUSTER=old\nCLUSTER=\n");
        fx.set_role_env("MESOBAKE_CLUSTER=lab");
        fx.run().assert_ok();
        fx.assert_flag_dir(
            "/etc/mesos-master",
            &["cluster", "hostname", "quorum", "work_dir"],
        );
        fx.assert_flag_dir("/etc/mesos-slave", &["hostname", "work_dir"]);

        // A defaults file that drops ZK=/MASTER= gets the flag files instead;
        // putting them back removes the files again.
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        fx.write("/etc/default/mesos-master", "PORT=5050\n");
        fx.write("/etc/default/mesos-slave", "# nothing\n");
        fx.run().assert_ok();
        assert_eq!(fx.read("/etc/mesos-master/zk"), "file:///etc/mesos/zk\n");
        assert_eq!(fx.read("/etc/mesos-slave/master"), "file:///etc/mesos/zk\n");
        fx.write(
            "/etc/default/mesos-master",
            "PORT=5050\nZK=`cat /etc/mesos/zk`\n",
        );
        fx.write("/etc/default/mesos-slave", "MASTER=`cat /etc/mesos/zk`\n");
        fx.run().assert_ok();
        fx.assert_flag_dir(
            "/etc/mesos-master",
            &["hostname", "ip", "quorum", "work_dir"],
        );
        fx.assert_flag_dir("/etc/mesos-slave", &["hostname", "ip", "work_dir"]);
    }
}

#[test]
fn cluster_file_follows_the_cluster_name() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Aventer, MASTER);
        fx.node_env("MESOBAKE_CLUSTER=prod-eu\n");
        fx.run().assert_ok();
        assert_eq!(fx.read("/etc/mesos-master/cluster"), "prod-eu\n");
        fx.remove("/etc/mesobake/node.env");
        fx.run().assert_ok();
        assert!(
            !fx.exists("/etc/mesos-master/cluster"),
            "no name, no cluster flag"
        );
        fx.assert_flag_dir(
            "/etc/mesos-master",
            &["hostname", "ip", "quorum", "work_dir", "zk"],
        );
    }
}

#[test]
fn operator_work_dir_is_kept() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        fx.write("/etc/mesos-master/work_dir", "/srv/mesos\n");
        fx.run().assert_ok();
        assert_eq!(fx.read("/etc/mesos-master/work_dir"), "/srv/mesos\n");
    }
}

#[test]
fn second_run_changes_nothing() {
    for sh in shells() {
        let setups: [(Layout, Role, &str); 4] = [
            (Layout::Mesosphere, MASTER_SLAVE, ""),
            (Layout::Aventer, MASTER_SLAVE, "MESOBAKE_CLUSTER=lab\n"),
            (
                Layout::Mesosphere,
                MASTER,
                "MESOBAKE_ZK_ID=1\nMESOBAKE_IP=10.0.0.11\n",
            ),
            (
                Layout::Aventer,
                SLAVE_ONLY,
                "MESOBAKE_ZK=zk://10.0.0.11:2181/mesos\n",
            ),
        ];
        for (layout, role, node_env) in setups {
            let fx = Fixture::new(&sh, layout, role);
            let node_env = if role.name == "master" {
                format!("{node_env}{THREE_MASTERS}")
            } else {
                node_env.to_string()
            };
            if !node_env.is_empty() {
                fx.node_env(&node_env);
            }
            fx.write("/etc/mesobake/marathon.env", "MARATHON_HTTP_PORT=8080\n");
            let first = fx.run();
            first.assert_ok();
            let second = fx.assert_run_changes_nothing(&Boot::default());
            second.assert_ok();
            assert_eq!(first.stdout, second.stdout);
            assert_eq!(
                first.calls, second.calls,
                "services are started on every boot"
            );
            assert!(!second.stderr.contains("wrote"), "{second:#?}");
        }
    }
}

#[test]
fn changed_address_reconfigures_the_appliance() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        fx.append("/etc/hosts", "192.168.1.5 fileserver\n");
        fx.run_ip("10.0.2.15").assert_ok();
        let run = fx.boot(&Boot {
            ip: "10.0.2.16",
            hostname: "node1b",
            ..Boot::default()
        });
        run.assert_ok();
        assert_eq!(
            run.stdout,
            configured_line("master-slave", "10.0.2.16", "zk://10.0.2.16:2181/mesos")
        );
        assert_eq!(fx.read("/etc/mesos/zk"), "zk://10.0.2.16:2181/mesos\n");
        assert_eq!(fx.read("/etc/mesos-master/ip"), "10.0.2.16\n");
        assert_eq!(fx.read("/etc/mesos-master/hostname"), "node1b\n");
        assert_eq!(fx.read("/etc/mesos-slave/ip"), "10.0.2.16\n");
        assert!(fx
            .read("/etc/default/marathon")
            .contains("\nLIBPROCESS_IP=10.0.2.16\n"));
        assert!(fx
            .read("/var/lib/mesobake/configured.env")
            .contains("MESOBAKE_IP=10.0.2.16\n"));
        // One block, the new one; the other lines stay as they were.
        assert_eq!(
            fx.read("/etc/hosts"),
            "# mesobake begin\n10.0.2.16 node1b\n# mesobake end\n127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n\n\
             ::1 localhost ip6-localhost ip6-loopback\n192.168.1.5 fileserver\n"
        );
    }
}

#[test]
fn hosts_block_is_replaced_wherever_it_is() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, SLAVE_ONLY);
        fx.node_env("MESOBAKE_ZK=zk://10.0.0.11:2181/mesos\n");
        fx.write(
            "/etc/hosts",
            "127.0.0.1 localhost\n# mesobake begin\n10.9.9.9 old\n# mesobake end\n10.1.1.1 db\n",
        );
        fx.run().assert_ok();
        assert_eq!(
            fx.read("/etc/hosts"),
            "# mesobake begin\n10.0.2.15 node1\n# mesobake end\n127.0.0.1 localhost\n10.1.1.1 db\n"
        );
        // A begin marker without an end is not ours to eat the file with.
        fx.write(
            "/etc/hosts",
            "127.0.0.1 localhost\n# mesobake begin\n10.1.1.1 db\n",
        );
        fx.run().assert_ok();
        assert_eq!(
            fx.read("/etc/hosts"),
            "# mesobake begin\n10.0.2.15 node1\n# mesobake end\n127.0.0.1 localhost\n# mesobake begin\n10.1.1.1 db\n"
        );
    }
}

/// Invalid inputs: the FAILED line names the key, and nothing is written or
/// started.
#[test]
fn invalid_ip_duplicate_zk_id_and_other_bad_inputs_write_nothing() {
    let cases: &[(&str, &str, &str)] = &[
        // (node.env, detected ip, expected in the FAILED line)
        ("MESOBAKE_IP=10.0.0.256\n", IP, "MESOBAKE_IP"),
        ("MESOBAKE_IP=10.0.0\n", IP, "MESOBAKE_IP"),
        ("MESOBAKE_IP=010.0.0.1\n", IP, "MESOBAKE_IP"),
        ("MESOBAKE_IP='10.0.0.1 '\n", IP, "MESOBAKE_IP"),
        ("", "not-an-ip", "MESOBAKE_IP"),
        ("", "", "MESOBAKE_IP"),
        ("MESOBAKE_HOSTNAME=bad_name\n", IP, "MESOBAKE_HOSTNAME"),
        ("MESOBAKE_HOSTNAME=-dash\n", IP, "MESOBAKE_HOSTNAME"),
        (
            "MESOBAKE_ZK_SERVERS='1=10.0.0.11 1=10.0.0.12'\nMESOBAKE_ZK_ID=1\n",
            IP,
            "MESOBAKE_ZK_SERVERS: ZooKeeper id 1 appears twice",
        ),
        (
            "MESOBAKE_ZK_SERVERS='1=10.0.0.11 2=10.0.0.11'\nMESOBAKE_ZK_ID=1\n",
            IP,
            "MESOBAKE_ZK_SERVERS",
        ),
        (
            "MESOBAKE_ZK_SERVERS='0=10.0.0.11'\n",
            IP,
            "MESOBAKE_ZK_SERVERS",
        ),
        (
            "MESOBAKE_ZK_SERVERS='256=10.0.0.11'\n",
            IP,
            "MESOBAKE_ZK_SERVERS",
        ),
        (
            "MESOBAKE_ZK_SERVERS='10.0.0.11'\n",
            IP,
            "MESOBAKE_ZK_SERVERS",
        ),
        (
            "MESOBAKE_ZK_SERVERS='1=10.0.0.300'\n",
            IP,
            "MESOBAKE_ZK_SERVERS",
        ),
        ("MESOBAKE_ZK_ID=0\n", IP, "MESOBAKE_ZK_ID"),
        ("MESOBAKE_ZK_ID=256\n", IP, "MESOBAKE_ZK_ID"),
        ("MESOBAKE_ZK_ID=x\n", IP, "MESOBAKE_ZK_ID"),
        (THREE_MASTERS, IP, "MESOBAKE_ZK_ID"),
        (
            "MESOBAKE_ZK_ID=4\nMESOBAKE_ZK_SERVERS='1=a 2=b 3=c'\n",
            IP,
            "MESOBAKE_ZK_ID 4",
        ),
        ("MESOBAKE_QUORUM=two\n", IP, "MESOBAKE_QUORUM"),
        (
            "MESOBAKE_ZK=http://10.0.0.11:2181/mesos\n",
            IP,
            "MESOBAKE_ZK",
        ),
        ("MESOBAKE_ZK=zk://10.0.0.11:2181\n", IP, "MESOBAKE_ZK"),
        ("MESOBAKE_IP\n", IP, "expected KEY=value"),
    ];
    for sh in shells() {
        for (node_env, ip, reason) in cases {
            let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
            fx.node_env(node_env);
            let run = fx.assert_run_changes_nothing(&Boot {
                ip,
                ..Boot::default()
            });
            run.assert_failed(reason);
            assert!(
                run.calls.is_empty(),
                "{node_env:?}: nothing may be started: {run:#?}"
            );
        }
    }
}

#[test]
fn env_files_are_parsed_never_executed() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        let marker = fx.work.join("pwned");
        for line in [
            format!("MESOBAKE_HOSTNAME=$(touch {})\n", marker.display()),
            format!("MESOBAKE_HOSTNAME=`touch {}`\n", marker.display()),
            format!("MESOBAKE_HOSTNAME=\"$(touch {})\"\n", marker.display()),
            format!("MESOBAKE_HOSTNAME=a;touch {}\n", marker.display()),
        ] {
            fx.node_env(&line);
            let run = fx.assert_run_changes_nothing(&Boot::default());
            run.assert_failed("MESOBAKE_HOSTNAME");
            assert!(!marker.exists(), "{line:?} ran a command");
        }
        // Quoting the way shells and the seed generator write it is fine, as
        // are comments, blank lines, `export`, CRLF line ends and a missing
        // final newline; unknown keys and baked-only keys are ignored.
        fx.node_env(
            "# from user-data\r\n\r\nexport MESOBAKE_HOSTNAME=\"web-1\"\r\n  MESOBAKE_CLUSTER='it'\\''s ours'\r\n\
             MESOBAKE_SERVICES=mesos-slave\nMESOBAKE_SOMETHING=1\nMESOBAKE_ROOT=/\nMESOBAKE_IP='10.0.0.5'",
        );
        let run = fx.run();
        run.assert_ok();
        assert_eq!(
            run.stdout,
            configured_line("master-slave", "10.0.0.5", "zk://10.0.0.5:2181/mesos")
        );
        assert_eq!(fx.read("/etc/mesos-master/hostname"), "web-1\n");
        assert_eq!(fx.read("/etc/mesos-master/cluster"), "it's ours\n");
        assert_eq!(
            run.started(),
            ["zookeeper", "mesos-master", "marathon", "mesos-slave"]
        );
        assert!(
            run.stderr.contains("MESOBAKE_SOMETHING"),
            "unknown keys are reported: {run:#?}"
        );
    }
}

#[test]
fn configured_env_reads_back_in_sh() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, SLAVE_ONLY);
        fx.node_env("MESOBAKE_ZK=zk://u:p@10.0.0.11:2181/mesos\n");
        fx.run().assert_ok();
        let path = fx.guest("/var/lib/mesobake/configured.env");
        let out = Command::new("sh")
            .arg("-c")
            .arg(". \"$1\" && printf '%s|%s|%s|%s|%s|%s' \"$MESOBAKE_ROLE\" \"$MESOBAKE_IP\" \"$MESOBAKE_HOSTNAME\" \"$MESOBAKE_ZK\" \"$MESOBAKE_ZK_ID\" \"$MESOBAKE_QUORUM\"")
            .arg("sh")
            .arg(&path)
            .output()
            .unwrap();
        // configured.env is world-readable: the URL's credentials stay in the root-only
        // /etc/mesos/zk, which Mesos reads.
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "slave-only|10.0.2.15|node1|zk://10.0.0.11:2181/mesos||"
        );
        // Mesosphere's wrapper passes /etc/mesos/zk's content on the command line, so
        // that is a file:// pointer to the root-only copy.
        assert_eq!(fx.read("/etc/mesos/zk"), "file:///etc/mesos/zk-auth\n");
        assert_eq!(
            fx.read("/etc/mesos/zk-auth"),
            "zk://u:p@10.0.0.11:2181/mesos\n"
        );
        assert_eq!(fx.mode("/etc/mesos/zk-auth").0, 0o600);
    }
}

#[test]
fn zookeeper_writes_stay_inside_the_root() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER);
        fx.node_env(&format!("MESOBAKE_ZK_ID=3\n{THREE_MASTERS}"));
        // `boot` compares host paths like /etc/zookeeper/conf_example/myid
        // before and after every run; here the writes must also land in the
        // fixture's conf_example, with the links left as links.
        let run = fx.run_ip("10.0.0.13");
        run.assert_ok();
        let conf = fx.guest("/etc/zookeeper/conf_example");
        assert_eq!(fs::read_to_string(conf.join("myid")).unwrap(), "3\n");
        assert!(fs::read_to_string(conf.join("zoo.cfg"))
            .unwrap()
            .contains("\nserver.3=10.0.0.13:2888:3888\n"));
        assert_eq!(
            fs::read_to_string(conf.join("environment")).unwrap(),
            "ZOOCFG=/etc/zookeeper/conf/zoo.cfg\nZOO_LOG_DIR=/var/log/zookeeper\n",
            "other conf files are untouched"
        );
        for (link, target) in [
            ("/etc/zookeeper/conf", "/etc/alternatives/zookeeper-conf"),
            (
                "/etc/alternatives/zookeeper-conf",
                "/etc/zookeeper/conf_example",
            ),
            ("/var/lib/zookeeper/myid", "/etc/zookeeper/conf/myid"),
        ] {
            let found = fs::read_link(fx.guest(link))
                .unwrap_or_else(|e| panic!("{link} must stay a symlink: {e}"));
            assert_eq!(found, Path::new(target), "{link}");
        }
        // Nothing may exist in the temp dir outside root/ and work/.
        let mut top: Vec<String> = fs::read_dir(fx.root.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(top, ["root", "work"]);
        assert_eq!(fx.names("/etc/zookeeper"), ["conf", "conf_example"]);
    }
}

#[test]
fn data_dir_myid_is_written_when_it_is_not_linked_to_conf() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER);
        fx.remove("/var/lib/zookeeper/myid");
        fx.run().assert_ok();
        assert_eq!(fx.read("/var/lib/zookeeper/myid"), "1\n");
        assert_eq!(fx.read("/etc/zookeeper/conf/myid"), "1\n");
        // Without a data dir (no zookeeper package data) nothing is created there.
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER);
        fs::remove_dir_all(fx.guest("/var/lib/zookeeper")).unwrap();
        fx.run().assert_ok();
        assert!(!fx.exists("/var/lib/zookeeper"));
    }
}

#[test]
fn symlink_loops_fail_cleanly() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER);
        fs::remove_file(fx.guest("/etc/alternatives/zookeeper-conf")).unwrap();
        fx.link("/etc/alternatives/zookeeper-conf", "/etc/zookeeper/conf");
        fx.run().assert_failed("symlink");
    }
}

#[test]
fn marathon_defaults_carry_baked_extras() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        fx.write(
            "/etc/mesobake/marathon.env",
            "MARATHON_TASK_LAUNCH_TIMEOUT=600000\nJAVA_OPTS=\"-Xmx512m\"\n",
        );
        fx.run().assert_ok();
        let marathon = fx.read("/etc/default/marathon");
        assert!(
            marathon.starts_with("# Written by mesobake-configure"),
            "{marathon}"
        );
        assert!(
            marathon.ends_with(
                "LIBPROCESS_IP=10.0.2.15\n# from /etc/mesobake/marathon.env\n\
                 MARATHON_TASK_LAUNCH_TIMEOUT=600000\nJAVA_OPTS=\"-Xmx512m\"\n"
            ),
            "{marathon}"
        );
    }
}

#[test]
fn service_start_failure_is_reported_after_trying_all() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        let run = fx.boot(&Boot {
            env: vec![("FAKE_FAIL", "marathon")],
            ..Boot::default()
        });
        run.assert_failed("could not start: marathon");
        assert_eq!(
            run.started(),
            ["zookeeper", "mesos-master", "marathon", "mesos-slave"]
        );
        assert!(
            fx.exists("/etc/mesos-master/ip"),
            "config is written before services start"
        );
    }
}

#[test]
fn missing_role_env_fails() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        fx.remove("/etc/mesobake/role.env");
        let run = fx.assert_run_changes_nothing(&Boot::default());
        run.assert_failed("/etc/mesobake/role.env");
        // A role.env with a bad init system is refused as well.
        let fx = Fixture::with_init(&sh, Layout::Mesosphere, MASTER_SLAVE, "sysv");
        fx.assert_run_changes_nothing(&Boot::default())
            .assert_failed("MESOBAKE_INIT");
    }
}

#[test]
fn address_is_detected_from_the_default_route() {
    let addr = "2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global dynamic eth0\\       valid_lft 86000sec\\n\
                3: eth1    inet 192.168.56.10/24 brd 192.168.56.255 scope global eth1\\n";
    type Env = &'static [(&'static str, &'static str)];
    let cases: [(&str, Env, &str); 3] = [
        // systemd-networkd and NetworkManager put the source on the route.
        (
            "the route's src",
            &[(
                "FAKE_ROUTE",
                "default via 10.0.2.2 dev eth0 proto dhcp src 10.0.2.15 metric 100\\n",
            )],
            "10.0.2.15",
        ),
        // ifupdown/dhclient routes carry no src: ask the kernel which source
        // it uses towards the gateway.
        (
            "the source towards the gateway",
            &[
                ("FAKE_ROUTE", "default via 192.168.56.1 dev eth1\\n"),
                (
                    "FAKE_ROUTE_GET",
                    "192.168.56.1 dev eth1 src 192.168.56.10 uid 0\\n    cache\\n",
                ),
            ],
            "192.168.56.10",
        ),
        // No default route at all (an isolated lab network).
        ("the first global address", &[], "10.0.2.15"),
    ];
    for sh in shells() {
        for (what, env, expected) in cases {
            let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
            let mut env = env.to_vec();
            env.extend([("FAKE_ADDR", addr), ("FAKE_HOSTNAME", "lab-7")]);
            let run = fx.boot(&Boot {
                detect_hooks: false,
                env,
                ..Boot::default()
            });
            run.assert_ok();
            assert_eq!(
                fx.read("/etc/mesos-master/ip"),
                format!("{expected}\n"),
                "{what}"
            );
            assert_eq!(fx.read("/etc/mesos-master/hostname"), "lab-7\n", "{what}");
        }
    }
}

// --- real init commands (through fake tools on PATH) ---------------------------------

#[test]
fn systemd_starts_units_without_blocking() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        let run = fx.boot(&Boot {
            service_cmd: false,
            ..Boot::default()
        });
        run.assert_ok();
        assert_eq!(
            run.calls,
            [
                "systemctl start --no-block zookeeper",
                "systemctl start --no-block mesos-master",
                "systemctl start --no-block marathon",
                "systemctl start --no-block mesos-slave",
            ]
        );
        // Their chatter goes to stderr, never into the status line.
        let run = fx.boot(&Boot {
            service_cmd: false,
            env: vec![("FAKE_FAIL", "marathon")],
            ..Boot::default()
        });
        run.assert_failed("could not start: marathon");
    }
}

#[test]
fn upstart_starts_jobs_and_ignores_already_running() {
    for sh in shells() {
        let fx = Fixture::with_init(&sh, Layout::Mesosphere, MASTER_SLAVE, "upstart");
        fx.install_upstart_jobs();
        let run = fx.boot(&Boot {
            service_cmd: false,
            env: vec![("FAKE_RUNNING", "zookeeper")],
            ..Boot::default()
        });
        run.assert_ok();
        assert_eq!(
            run.stdout,
            configured_line("master-slave", IP, "zk://10.0.2.15:2181/mesos")
        );
        // Marathon ships a SysV script on 14.04, not an upstart job.
        assert_eq!(
            run.calls,
            [
                "start zookeeper",
                "start mesos-master",
                "service marathon start",
                "start mesos-slave"
            ]
        );
        assert!(
            !run.stdout.contains("start/running"),
            "job output stays off stdout"
        );
        // Any other failure of `start` is a failure.
        let run = fx.boot(&Boot {
            service_cmd: false,
            env: vec![("FAKE_FAIL", "mesos-slave")],
            ..Boot::default()
        });
        run.assert_failed("could not start: mesos-slave");
        // The environment's MESOBAKE_INIT (set by the unit or job) wins over role.env.
        let run = fx.boot(&Boot {
            service_cmd: false,
            env: vec![("MESOBAKE_INIT", "systemd")],
            ..Boot::default()
        });
        run.assert_ok();
        assert_eq!(run.calls[0], "systemctl start --no-block zookeeper");
    }
}

#[test]
fn upstart_image_uses_the_same_test_hook() {
    for sh in shells() {
        let fx = Fixture::with_init(&sh, Layout::Mesosphere, SLAVE_ONLY, "upstart");
        fx.install_upstart_jobs();
        fx.node_env("MESOBAKE_ZK_SERVERS='1=10.0.0.11 2=10.0.0.12 3=10.0.0.13'\n");
        let run = fx.run();
        run.assert_ok();
        assert_eq!(run.started(), ["mesos-slave"]);
        assert_eq!(
            fx.read("/etc/mesos/zk"),
            "zk://10.0.0.11:2181,10.0.0.12:2181,10.0.0.13:2181/mesos\n"
        );
        // ZK_ID is only for nodes that run ZooKeeper.
        assert!(fx
            .read("/var/lib/mesobake/configured.env")
            .contains("MESOBAKE_ZK_ID=\nMESOBAKE_QUORUM=\n"));
    }
}

// --- the unit and the job --------------------------------------------------------------

/// The directive lines of a unit or job file, comments dropped.
fn directives(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn systemd_unit_orders_after_cloud_init_without_a_cycle() {
    let lines = directives(UNIT);
    for expected in [
        "Type=oneshot",
        "RemainAfterExit=yes",
        "Wants=network-online.target",
        "ExecStart=/usr/lib/mesobake/mesobake-configure",
        "StandardOutput=journal",
        "WantedBy=multi-user.target",
    ] {
        assert!(lines.contains(&expected), "unit lacks {expected}");
    }
    let after = lines
        .iter()
        .find(|l| l.starts_with("After="))
        .expect("After= line");
    for unit in [
        "cloud-init.service",
        "cloud-init-network.service",
        "network-online.target",
    ] {
        assert!(
            after.split(['=', ' ']).any(|u| u == unit),
            "After= lacks {unit}"
        );
    }
    // The config stage writes nothing the configurator reads; waiting for it only
    // delays the first boot.
    assert!(
        !after.split(['=', ' ']).any(|u| u == "cloud-config.service"),
        "{after}"
    );
    // cloud-final and cloud-init.target are ordered after multi-user.target:
    // naming them here would be an ordering cycle (mesos-packaging.md §7.6).
    for line in &lines {
        assert!(
            !line.contains("cloud-final") && !line.contains("cloud-init.target"),
            "cycle: {line}"
        );
    }
}

#[test]
fn upstart_job_runs_once_cloud_config_has_stopped() {
    let lines = directives(JOB);
    for expected in [
        "start on stopped cloud-config",
        "task",
        "env MESOBAKE_INIT=upstart",
        "exec /usr/lib/mesobake/mesobake-configure",
    ] {
        assert!(lines.contains(&expected), "job lacks {expected}");
    }
}

#[test]
fn script_is_strict_posix_sh() {
    // The installer sets the mode in the image; here only the text matters.
    let text = fs::read_to_string(SCRIPT).unwrap();
    assert!(text.starts_with("#!/bin/sh\n"));
    assert!(text.contains("\nset -euf"), "strict mode");
    for shell in shells() {
        let out = Command::new(shell.0[0])
            .args(&shell.0[1..])
            .arg("-n")
            .arg(SCRIPT)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell:?} -n: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// --- cluster extras (mesobake seed) -------------------------------------------------

/// node.env for master m2 of a 3-master cluster, as `mesobake seed` writes it.
const CLUSTER_M2: &str = "MESOBAKE_CLUSTER='lab'\nMESOBAKE_HOSTNAME='m2'\nMESOBAKE_IP='10.77.0.12'\n\
MESOBAKE_HOSTS='10.77.0.11=m1 10.77.0.12=m2 10.77.0.13=m3 10.77.0.21=a1'\nMESOBAKE_QUORUM='2'\n\
MESOBAKE_ZK='zk://m1:2181,m2:2181,m3:2181/mesos'\nMESOBAKE_ZK_ID='2'\nMESOBAKE_ZK_SERVERS='1=m1 2=m2 3=m3'\n";

#[test]
fn cluster_master_gets_hosts_for_every_node_and_named_servers() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER);
        fx.node_env(CLUSTER_M2);
        let run = fx.run();
        run.assert_ok();
        assert_eq!(
            run.stdout,
            configured_line("master", "10.77.0.12", "zk://m1:2181,m2:2181,m3:2181/mesos")
        );
        assert!(
            fx.read("/etc/hosts").starts_with(
                "# mesobake begin\n10.77.0.12 m2\n10.77.0.11 m1\n10.77.0.13 m3\n10.77.0.21 a1\n# mesobake end\n127.0.0.1"
            ),
            "{}",
            fx.read("/etc/hosts")
        );
        assert_eq!(fx.read("/etc/mesos-master/quorum"), "2\n");
        assert_eq!(fx.read("/etc/zookeeper/conf/myid"), "2\n");
        assert!(fx
            .read("/etc/zookeeper/conf/zoo.cfg")
            .ends_with("server.1=m1:2888:3888\nserver.2=m2:2888:3888\nserver.3=m3:2888:3888\n"));
        fx.assert_run_changes_nothing(&Boot::default()).assert_ok();
    }
}

#[test]
fn attributes_resources_and_extra_flags_become_files_and_follow_changes() {
    for sh in shells() {
        for layout in [Layout::Mesosphere, Layout::Aventer] {
            let fx = Fixture::new(&sh, layout, MASTER_SLAVE);
            let dir = format!("/etc/{}", layout.agent());
            fx.node_env(
                "MESOBAKE_ATTRIBUTES='rack:r1;zone:eu-1a'\nMESOBAKE_RESOURCES='cpus:2;ports:[31000-32000]'\n\
                 MESOBAKE_MASTER_FLAGS='max_agent_ping_timeouts=5'\nMESOBAKE_AGENT_FLAGS='?no-switch_user;isolation=posix/cpu,posix/mem'\n",
            );
            fx.run().assert_ok();
            assert_eq!(fx.read(&format!("{dir}/attributes/rack")), "r1\n");
            assert_eq!(fx.read(&format!("{dir}/attributes/zone")), "eu-1a\n");
            assert_eq!(
                fx.read(&format!("{dir}/resources/ports")),
                "[31000-32000]\n"
            );
            assert_eq!(fx.read("/etc/mesos-master/max_agent_ping_timeouts"), "5\n");
            assert!(fx.exists(&format!("{dir}/?no-switch_user")));
            assert_eq!(
                fx.read(&format!("{dir}/isolation")),
                "posix/cpu,posix/mem\n"
            );
            fx.assert_run_changes_nothing(&Boot::default()).assert_ok();
            // Dropped from the seed: the files go on the next boot, the others stay.
            fx.node_env("MESOBAKE_ATTRIBUTES='rack:r2'\n");
            fx.run().assert_ok();
            assert_eq!(fx.names(&format!("{dir}/attributes")), ["rack"]);
            assert_eq!(fx.read(&format!("{dir}/attributes/rack")), "r2\n");
            assert!(!fx.exists(&format!("{dir}/resources/cpus")));
            assert!(!fx.exists("/etc/mesos-master/max_agent_ping_timeouts"));
            assert!(!fx.exists(&format!("{dir}/?no-switch_user")));
            assert_eq!(
                fx.read("/var/lib/mesobake/node-files"),
                format!("{dir}/attributes/rack\n")
            );
            fx.node_env("");
            fx.run().assert_ok();
            assert!(!fx.exists("/var/lib/mesobake/node-files"));
            assert!(!fx.exists(&format!("{dir}/attributes/rack")));
        }
    }
}

#[test]
fn extra_flags_never_duplicate_a_flag() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        let cases = [
            // Owned by the configurator.
            (
                "MESOBAKE_AGENT_FLAGS='ip=1.2.3.4'\n",
                "--ip is written by mesobake-configure",
            ),
            (
                "MESOBAKE_MASTER_FLAGS='?no-hostname'\n",
                "--hostname is written by mesobake-configure",
            ),
            (
                "MESOBAKE_AGENT_FLAGS='attributes=a:b'\n",
                "--attributes is written",
            ),
            // Passed by the wrapper from /etc/default/mesos-master (PORT=5050).
            (
                "MESOBAKE_MASTER_FLAGS='port=5051'\n",
                "--port is already passed from PORT",
            ),
            (
                "MESOBAKE_AGENT_FLAGS='log_dir=/tmp'\n",
                "--log_dir is already passed from LOGS",
            ),
            // Baked by the image (profile or package).
            (
                "MESOBAKE_MASTER_FLAGS='work_dir=/srv'\n",
                "/etc/mesos-master/work_dir already exists in the image",
            ),
            // Twice in one list, bad names and values.
            ("MESOBAKE_AGENT_FLAGS='a=1;a=2'\n", "'a' is given twice"),
            ("MESOBAKE_AGENT_FLAGS='../x=1'\n", "is not a flag name"),
            ("MESOBAKE_ATTRIBUTES='.hidden:1'\n", "is not a valid name"),
            ("MESOBAKE_ATTRIBUTES='rack'\n", "is not key:value"),
        ];
        for (env, why) in cases {
            fx.node_env(env);
            fx.assert_run_changes_nothing(&Boot::default())
                .assert_failed(why);
        }
        // A role without the daemon refuses its flags and attributes.
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER);
        fx.node_env(&format!(
            "{THREE_MASTERS}MESOBAKE_ZK_ID=1\nMESOBAKE_ATTRIBUTES='rack:r1'\n"
        ));
        fx.assert_run_changes_nothing(&Boot::default())
            .assert_failed("MESOBAKE_ATTRIBUTES is set but role master runs no Mesos agent");
        let fx = Fixture::new(&sh, Layout::Mesosphere, SLAVE_ONLY);
        fx.node_env("MESOBAKE_ZK=zk://m1:2181/mesos\nMESOBAKE_MASTER_FLAGS='a=1'\n");
        fx.assert_run_changes_nothing(&Boot::default())
            .assert_failed("runs no Mesos master");
    }
}

#[test]
fn bad_hosts_entries_are_refused() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, SLAVE_ONLY);
        for (hosts, why) in [
            ("10.0.0.1", "is not ip=name"),
            ("10.0.0.256=m1", "is not an IPv4 address"),
            ("10.0.0.1=-m1", "is not a valid host name"),
        ] {
            fx.node_env(&format!(
                "MESOBAKE_ZK=zk://m1:2181/mesos\nMESOBAKE_HOSTS='{hosts}'\n"
            ));
            fx.assert_run_changes_nothing(&Boot::default())
                .assert_failed(why);
        }
    }
}

/// The autoscaling case: one user-data, two instances, two addresses. The node.env comes
/// from the user-data `mesobake seed` wrote for a group.
#[test]
fn one_group_user_data_configures_two_agents_with_their_own_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("cluster.toml");
    fs::write(
        &topo,
        "name = \"lab\"\n[network]\ncidr = \"10.77.0.0/24\"\n\
         [[node]]\nname = \"m1\"\nrole = \"master\"\nip = \"10.77.0.11\"\n\
         [[group]]\nname = \"workers\"\nrole = \"slave-only\"\nattributes = { pool = \"batch\" }\n",
    )
    .unwrap();
    let out = dir.path().join("seeds");
    let st = Command::new(env!("CARGO_BIN_EXE_mesobake"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("seed")
        .arg(&topo)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let ud = fs::read_to_string(out.join("workers.user-data")).unwrap();
    // write_files content is one JSON-quoted (hence YAML double-quoted) string.
    let content = ud
        .lines()
        .find_map(|l| l.trim().strip_prefix("content: "))
        .expect("write_files content");
    let node_env: String = serde_json::from_str(content).unwrap();
    assert!(!node_env.contains("MESOBAKE_IP"), "{node_env}");
    for sh in shells() {
        let mut seen = Vec::new();
        for (ip, host) in [
            ("10.77.0.201", "ip-10-77-0-201"),
            ("10.77.0.202", "ip-10-77-0-202"),
        ] {
            let fx = Fixture::new(&sh, Layout::Mesosphere, SLAVE_ONLY);
            fx.node_env(&node_env);
            let run = fx.boot(&Boot {
                ip,
                hostname: host,
                ..Boot::default()
            });
            run.assert_ok();
            assert_eq!(
                run.stdout,
                configured_line("slave-only", ip, "zk://m1:2181/mesos")
            );
            assert_eq!(fx.read("/etc/mesos-slave/ip"), format!("{ip}\n"));
            assert_eq!(fx.read("/etc/mesos-slave/hostname"), format!("{host}\n"));
            assert_eq!(fx.read("/etc/mesos-slave/attributes/pool"), "batch\n");
            assert!(fx.read("/etc/hosts").contains("\n10.77.0.11 m1\n"));
            seen.push(fx.read("/etc/mesos-slave/ip"));
        }
        assert_ne!(seen[0], seen[1]);
    }
}

/// 14.04-style images: upstart jobs, with the unused roles' jobs disabled by `manual`
/// overrides that the build wrote. A cluster master starts its jobs through upstart and
/// leaves the overrides alone.
#[test]
fn upstart_cluster_master_starts_jobs_and_keeps_overrides() {
    for sh in shells() {
        let fx = Fixture::with_init(&sh, Layout::Mesosphere, MASTER, "upstart");
        fx.install_upstart_jobs();
        fx.write("/etc/init/mesos-slave.override", "manual\n");
        fx.node_env(&format!(
            "{CLUSTER_M2}MESOBAKE_MASTER_FLAGS='max_agent_ping_timeouts=5'\n"
        ));
        let run = fx.boot(&Boot {
            service_cmd: false,
            ..Boot::default()
        });
        run.assert_ok();
        assert_eq!(
            run.calls,
            [
                "start zookeeper",
                "start mesos-master",
                "service marathon start"
            ]
        );
        assert_eq!(fx.read("/etc/init/mesos-slave.override"), "manual\n");
        assert_eq!(fx.read("/etc/mesos-master/quorum"), "2\n");
        assert_eq!(fx.read("/etc/mesos-master/max_agent_ping_timeouts"), "5\n");
        let again = fx.assert_run_changes_nothing(&Boot {
            service_cmd: false,
            ..Boot::default()
        });
        again.assert_ok();
        assert_eq!(again.calls, run.calls);
    }
}

// --- real-Mesos strictness (issue: defects 4, 6, 7, 8, 10) ----------------------

#[test]
fn flag_names_are_compared_the_way_mesos_compares_them() {
    for sh in shells() {
        // Mesos lower-cases names: Quorum is the quorum this script writes, IP its ip.
        for (env, what) in [
            (
                "MESOBAKE_MASTER_FLAGS='Quorum=3'\n",
                "--quorum is written by mesobake-configure",
            ),
            (
                "MESOBAKE_AGENT_FLAGS='IP=10.0.0.9'\n",
                "--ip is written by mesobake-configure",
            ),
            (
                "MESOBAKE_AGENT_FLAGS='?switch_user;?No-Switch_User'\n",
                "is the same Mesos flag as another one given",
            ),
            (
                "MESOBAKE_AGENT_FLAGS='Work_Dir=/srv/mesos'\n",
                "is the same Mesos flag as /etc/mesos-agent/work_dir",
            ),
        ] {
            let fx = Fixture::new(&sh, Layout::Aventer, MASTER_SLAVE);
            fx.run().assert_ok();
            let before = fx.snapshot();
            fx.node_env(env);
            let after_env = fx.snapshot();
            fx.run().assert_failed(what);
            assert_eq!(
                fx.snapshot(),
                after_env,
                "{env}: a refused input writes nothing"
            );
            assert_ne!(before, after_env);
        }
        // A baked flag (the profile's systemd_enable_support=false on cgroup v2) cannot
        // be turned back on per node under another spelling.
        let fx = Fixture::new(&sh, Layout::Aventer, SLAVE_ONLY);
        fx.write("/etc/mesos-agent/systemd_enable_support", "false\n");
        fx.node_env("MESOBAKE_ZK=zk://10.0.0.11:2181/mesos\nMESOBAKE_AGENT_FLAGS='?systemd_enable_support'\n");
        fx.run()
            .assert_failed("is the same Mesos flag as /etc/mesos-agent/systemd_enable_support");
    }
}

#[test]
fn temp_files_never_sit_in_flag_dirs_and_stale_ones_go() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Aventer, MASTER_SLAVE);
        // What a power cut during an older image's write left (AVENTER's wrapper would
        // pass it as --.mesobake.Ab12Cd and Mesos would stop), and one of ours.
        fx.write("/etc/mesos-agent/.mesobake.Ab12Cd", "10.0.2.15\n");
        fx.write("/etc/mesos-master/.mesobake.Zz99Yy", "1\n");
        fx.write("/etc/mesobake/tmp/put.QwErTy", "half");
        fx.run().assert_ok();
        for dir in ["/etc/mesos-agent", "/etc/mesos-master", "/etc/mesobake/tmp"] {
            let left: Vec<String> = fx
                .names(dir)
                .into_iter()
                .filter(|n| n.starts_with('.') || n.starts_with("put."))
                .collect();
            assert!(left.is_empty(), "{dir}: {left:?}");
        }
        // The writes go through the temp dir: without it nothing can be written.
        let fx = Fixture::new(&sh, Layout::Aventer, MASTER_SLAVE);
        fx.write("/etc/mesobake/tmp", "not a directory");
        fx.run().assert_failed("/etc/mesobake/tmp");
        assert!(
            !fx.exists("/etc/mesos-agent/ip"),
            "no write without the temp dir"
        );
    }
}

#[test]
fn agent_attribute_and_resource_dirs_exist_for_the_wrapper() {
    for sh in shells() {
        for layout in [Layout::Aventer, Layout::Mesosphere] {
            let fx = Fixture::new(&sh, layout, SLAVE_ONLY);
            fx.node_env("MESOBAKE_ZK=zk://10.0.0.11:2181/mesos\n");
            fx.run().assert_ok();
            for sub in ["attributes", "resources"] {
                let dir = format!("/etc/{}/{sub}", layout.agent());
                assert!(
                    fx.guest(&dir).is_dir(),
                    "{dir} missing: AVENTER's find would log an error"
                );
            }
            fx.assert_flag_dir(
                &format!("/etc/{}", layout.agent()),
                if layout == Layout::Aventer {
                    &["hostname", "ip", "master", "work_dir"]
                } else {
                    &["hostname", "ip", "work_dir"]
                },
            );
        }
    }
}

#[test]
fn marathon_mesos_user_is_written_once() {
    for sh in shells() {
        for (extra, user) in [
            ("MARATHON_MESOS_USER=root\n", "root"),
            ("MARATHON_MESOS_USER=mesos-tasks\n", "mesos-tasks"),
            ("MARATHON_TASK_LAUNCH_TIMEOUT=600000\n", "mesos-task"),
        ] {
            let fx = Fixture::new(&sh, Layout::Aventer, MASTER);
            fx.write("/etc/mesobake/marathon.env", extra);
            fx.run().assert_ok();
            let m = fx.read("/etc/default/marathon");
            let lines: Vec<&str> = m
                .lines()
                .filter(|l| l.starts_with("MARATHON_MESOS_USER="))
                .collect();
            assert_eq!(lines, [format!("MARATHON_MESOS_USER={user}")], "{m}");
        }
    }
}

/// Tasks run as the unprivileged user agent images create, unless the profile says
/// otherwise: `MARATHON_MESOS_USER = "root"` in `[marathon.env]` is the way back to root.
#[test]
fn marathon_runs_tasks_as_mesos_task_unless_the_profile_names_a_user() {
    for sh in shells() {
        for (extra, user) in [
            // No baked settings at all (a profile with no [marathon.env]).
            (None, "mesos-task"),
            // What profiles/include/common.toml bakes.
            (Some("MARATHON_MESOS_USER=mesos-task\n"), "mesos-task"),
            (Some("MARATHON_MESOS_USER=root\n"), "root"),
            (Some("MARATHON_MESOS_USER=builder\n"), "builder"),
        ] {
            let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
            if let Some(extra) = extra {
                fx.write("/etc/mesobake/marathon.env", extra);
            }
            fx.run().assert_ok();
            let m = fx.read("/etc/default/marathon");
            // The package's own MARATHON_MESOS_USER=root is gone: the file is ours.
            let users: Vec<&str> = m
                .lines()
                .filter_map(|l| l.strip_prefix("MARATHON_MESOS_USER="))
                .collect();
            assert_eq!(users, [user], "{extra:?}: {m}");
        }
    }
}

#[test]
fn unnamed_instances_get_a_unique_name_from_their_address() {
    for sh in shells() {
        let mut names = Vec::new();
        for (ip, detected) in [
            ("10.0.0.5", "localhost"),
            ("10.0.0.6", "localhost.localdomain"),
            ("10.0.0.7", "debian"),
        ] {
            let fx = Fixture::new(&sh, Layout::Aventer, SLAVE_ONLY);
            // The image's own name ("debian") is on every instance: it names none.
            fx.append("/etc/mesobake/role.env", "MESOBAKE_IMAGE_HOSTNAME=debian\n");
            fx.node_env("MESOBAKE_ZK=zk://10.0.0.11:2181/mesos\n");
            fx.boot(&Boot {
                ip,
                hostname: detected,
                ..Boot::default()
            })
            .assert_ok();
            let want = format!("ip-{}", ip.replace('.', "-"));
            assert_eq!(fx.read("/etc/mesos-agent/hostname"), format!("{want}\n"));
            assert_eq!(fx.read("/etc/hostname"), format!("{want}\n"));
            assert!(
                fx.read("/etc/hosts")
                    .starts_with(&format!("# mesobake begin\n{ip} {want}\n")),
                "resolvable: {}",
                fx.read("/etc/hosts")
            );
            // A later boot with a new address renames it; the name follows the address.
            fx.boot(&Boot {
                ip: "10.0.0.99",
                hostname: "ip-10-0-0-5",
                ..Boot::default()
            })
            .assert_ok();
            assert_eq!(fx.read("/etc/mesos-agent/hostname"), "ip-10-0-0-99\n");
            names.push(want);
        }
        names.dedup();
        assert_eq!(names.len(), 3, "{names:?}");
        // A name the datasource or the seed gave is kept.
        let fx = Fixture::new(&sh, Layout::Aventer, SLAVE_ONLY);
        fx.node_env("MESOBAKE_ZK=zk://10.0.0.11:2181/mesos\n");
        fx.boot(&Boot {
            ip: "10.0.0.5",
            hostname: "agent-a",
            ..Boot::default()
        })
        .assert_ok();
        assert_eq!(fx.read("/etc/mesos-agent/hostname"), "agent-a\n");
        assert!(!fx.exists("/etc/hostname") || fx.read("/etc/hostname") != "ip-10-0-0-5\n");
    }
}

#[test]
fn env_keys_are_matched_exactly_and_no_value_reaches_eval() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        let marker = fx.work.join("pwned");
        // Were the two key names taken as one known key, `eval` would run a command
        // named MESOBAKE_IP: put one on the PATH that leaves a mark.
        let cmd = fx.work.join("bin/MESOBAKE_IP");
        fs::write(&cmd, format!("#!/bin/sh\ntouch '{}'\n", marker.display())).unwrap();
        fs::set_permissions(&cmd, fs::Permissions::from_mode(0o755)).unwrap();
        for line in [
            "MESOBAKE_IP MESOBAKE_HOSTNAME=x\n",
            "MESOBAKE_IP\tMESOBAKE_HOSTNAME=x\n",
            "MESOBAKE_HOSTNAME MESOBAKE_ZK_ID=1\n",
        ] {
            fx.node_env(line);
            let run = fx.assert_run_changes_nothing(&Boot::default());
            run.assert_failed("line 1");
            run.assert_failed("is not a key name");
            assert!(!marker.exists(), "{sh:?}: {line:?} ran a command");
        }
        // A value that spells an assignment is a value, not a second assignment.
        fx.node_env("MESOBAKE_CLUSTER=a=b\"c \"'d'\\'e\nMESOBAKE_HOSTNAME=web-2\n");
        let run = fx.run();
        run.assert_ok();
        assert_eq!(fx.read("/etc/mesos-master/cluster"), "a=bc d'e\n", "{sh:?}");
        assert_eq!(fx.read("/etc/mesos-master/hostname"), "web-2\n");
    }
}

#[test]
fn a_key_given_twice_is_an_error_naming_both_lines() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        fx.node_env("# two values\nMESOBAKE_HOSTNAME=a\n\nexport MESOBAKE_HOSTNAME=b\n");
        let run = fx.assert_run_changes_nothing(&Boot::default());
        run.assert_failed("line 4: MESOBAKE_HOSTNAME is already set on line 2");
        // role.env then node.env is the documented layering, not a duplicate.
        fx.node_env("MESOBAKE_CLUSTER=ours\n");
        fx.run().assert_ok();
    }
}

#[test]
fn non_ascii_is_reported_as_not_ascii() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        for locale in ["C", "C.UTF-8"] {
            fx.node_env("MESOBAKE_CLUSTER='caf\u{e9}'\n");
            let boot = Boot {
                env: vec![("LC_ALL", locale)],
                ..Boot::default()
            };
            let run = fx.assert_run_changes_nothing(&boot);
            run.assert_failed("MESOBAKE_CLUSTER is not ASCII");
            assert!(!run.stdout.contains("control"), "{sh:?} {locale}: {run:#?}");
            fx.node_env("MESOBAKE_CLUSTER='a\u{7}b'\n");
            let run = fx.assert_run_changes_nothing(&boot);
            run.assert_failed("MESOBAKE_CLUSTER contains control characters");
        }
    }
}

// --- authentication (secrets.env from mesobake seed) ---------------------------------

const AGENT_SECRET: &str = "AgentSecret0123456789abcdefABCDEF";
const MARATHON_SECRET: &str = "MarathonSecret0123456789abcdefAB";
const OPERATOR_SECRET: &str = "OperatorSecret0123456789abcdefAB";

/// secrets.env for a master, as `mesobake seed` writes it.
fn master_secrets() -> String {
    format!(
        "# Written by cloud-init from mesobake's seed. Secrets: root only (0600).\n\
         MESOBAKE_AGENT_PRINCIPAL='agent'\nMESOBAKE_AGENT_SECRET='{AGENT_SECRET}'\n\
         MESOBAKE_MARATHON_PRINCIPAL='marathon'\nMESOBAKE_MARATHON_SECRET='{MARATHON_SECRET}'\n\
         MESOBAKE_OPERATOR_PRINCIPAL='operator'\nMESOBAKE_OPERATOR_SECRET='{OPERATOR_SECRET}'\n"
    )
}

/// secrets.env for an agent-only node: no Marathon credential.
fn agent_secrets() -> String {
    format!(
        "MESOBAKE_AGENT_PRINCIPAL='agent'\nMESOBAKE_AGENT_SECRET='{AGENT_SECRET}'\n\
         MESOBAKE_OPERATOR_PRINCIPAL='operator'\nMESOBAKE_OPERATOR_SECRET='{OPERATOR_SECRET}'\n"
    )
}

/// No secret may reach the status line or the notes.
fn assert_no_secret_printed(run: &Run) {
    for secret in [AGENT_SECRET, MARATHON_SECRET, OPERATOR_SECRET] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "a secret was printed: {run:#?}"
        );
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

const AUTH_FILES: [&str; 4] = [
    "/etc/mesos/credentials",
    "/etc/mesos/agent-credential",
    "/etc/mesos/http-credentials",
    "/etc/marathon/mesos-secret",
];

#[test]
fn master_slave_with_secrets_authenticates_agents_frameworks_http_and_marathon() {
    for sh in shells() {
        for layout in [Layout::Mesosphere, Layout::Aventer] {
            let fx = Fixture::new(&sh, layout, MASTER_SLAVE);
            let agent_dir = format!("/etc/{}", layout.agent());
            let (uid, _) = fx.owner();
            fx.secrets_env(&master_secrets());
            let run = fx.run();
            run.assert_ok();
            assert_eq!(
                run.stdout,
                configured_line("master-slave", IP, "zk://10.0.2.15:2181/mesos")
            );
            assert_no_secret_printed(&run);

            // Master: every principal in Mesos's JSON credentials form, root-only.
            let creds = json(&fx.read("/etc/mesos/credentials"));
            assert_eq!(
                creds,
                serde_json::json!({"credentials": [
                    {"principal": "agent", "secret": AGENT_SECRET},
                    {"principal": "marathon", "secret": MARATHON_SECRET},
                    {"principal": "operator", "secret": OPERATOR_SECRET},
                ]})
            );
            assert_eq!(fx.mode("/etc/mesos/credentials"), (0o600, uid));
            for (flag, value) in [
                ("authenticate_agents", "true"),
                ("authenticate_frameworks", "true"),
                ("authenticate_http_readwrite", "true"),
                // A Path flag: a plain path (stout's Path would drop file:// too).
                ("credentials", "/etc/mesos/credentials"),
            ] {
                assert_eq!(
                    fx.read(&format!("/etc/mesos-master/{flag}")),
                    format!("{value}\n"),
                    "{layout:?}"
                );
            }
            let mut master_flags = vec![
                "authenticate_agents",
                "authenticate_frameworks",
                "authenticate_http_readwrite",
                "credentials",
                "hostname",
                "ip",
                "quorum",
                "work_dir",
            ];
            if layout == Layout::Aventer {
                master_flags.push("zk");
            }
            fx.assert_flag_dir("/etc/mesos-master", &master_flags);

            // Agent: its own credential, and the operator for its HTTP endpoints.
            assert_eq!(
                json(&fx.read("/etc/mesos/agent-credential")),
                serde_json::json!({"principal": "agent", "secret": AGENT_SECRET})
            );
            assert_eq!(
                json(&fx.read("/etc/mesos/http-credentials")),
                serde_json::json!({"credentials": [{"principal": "operator", "secret": OPERATOR_SECRET}]})
            );
            assert_eq!(fx.mode("/etc/mesos/agent-credential"), (0o600, uid));
            assert_eq!(fx.mode("/etc/mesos/http-credentials"), (0o600, uid));
            assert_eq!(
                fx.read(&format!("{agent_dir}/credential")),
                "/etc/mesos/agent-credential\n"
            );
            assert_eq!(
                fx.read(&format!("{agent_dir}/authenticate_http_readwrite")),
                "true\n"
            );
            assert_eq!(
                fx.read(&format!("{agent_dir}/http_credentials")),
                "/etc/mesos/http-credentials\n"
            );

            // Marathon: the secret file holds the secret and nothing else (Marathon reads
            // it byte for byte), readable by the marathon user only.
            assert_eq!(fx.read("/etc/marathon/mesos-secret"), MARATHON_SECRET);
            assert_eq!(fx.mode("/etc/marathon/mesos-secret"), (0o400, uid));
            let m = fx.read("/etc/default/marathon");
            assert!(
                m.ends_with(&format!(
                    "LIBPROCESS_IP=10.0.2.15\n# Authentication, from /etc/mesobake/secrets.env:\n\
                     MARATHON_MESOS_AUTHENTICATION=\n\
                     MARATHON_MESOS_AUTHENTICATION_PRINCIPAL=marathon\n\
                     MARATHON_MESOS_AUTHENTICATION_SECRET_FILE=/etc/marathon/mesos-secret\n\
                     MARATHON_HTTP_CREDENTIALS=operator:{OPERATOR_SECRET}\n"
                )),
                "{m}"
            );
            assert_eq!(fx.mode("/etc/default/marathon"), (0o600, uid));
            // node.env and configured.env stay secret-free and world-readable.
            assert!(!fx
                .read("/var/lib/mesobake/configured.env")
                .contains("Secret"));
            assert_eq!(fx.mode("/var/lib/mesobake/configured.env").0, 0o644);

            let again = fx.assert_run_changes_nothing(&Boot::default());
            again.assert_ok();
            assert_no_secret_printed(&again);
        }
    }
}

#[test]
fn agent_only_node_gets_its_credential_and_http_auth_only() {
    for sh in shells() {
        for layout in [Layout::Mesosphere, Layout::Aventer] {
            let fx = Fixture::new(&sh, layout, SLAVE_ONLY);
            let agent_dir = format!("/etc/{}", layout.agent());
            fx.node_env("MESOBAKE_ZK='zk://10.0.0.11:2181/mesos'\n");
            fx.secrets_env(&agent_secrets());
            let run = fx.run();
            run.assert_ok();
            assert_no_secret_printed(&run);
            assert_eq!(
                json(&fx.read("/etc/mesos/agent-credential"))["secret"],
                AGENT_SECRET
            );
            assert_eq!(fx.mode("/etc/mesos/agent-credential").0, 0o600);
            assert_eq!(fx.mode("/etc/mesos/http-credentials").0, 0o600);
            assert!(!fx.exists("/etc/mesos/credentials"));
            assert!(!fx.exists("/etc/marathon/mesos-secret"));
            let mut flags = vec![
                "authenticate_http_readwrite",
                "credential",
                "hostname",
                "http_credentials",
                "ip",
                "work_dir",
            ];
            if layout == Layout::Aventer {
                flags.insert(5, "master");
            }
            fx.assert_flag_dir(&agent_dir, &flags);
            assert_eq!(
                fx.read("/var/lib/mesobake/auth-files"),
                format!(
                    "/etc/mesos/agent-credential\n/etc/mesos/http-credentials\n\
                     {agent_dir}/credential\n{agent_dir}/authenticate_http_readwrite\n\
                     {agent_dir}/http_credentials\n"
                )
            );
            fx.assert_run_changes_nothing(&Boot::default()).assert_ok();
        }
    }
}

#[test]
fn without_secrets_nothing_authenticates_as_before() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Aventer, MASTER_SLAVE);
        fx.run().assert_ok();
        for f in AUTH_FILES {
            assert!(!fx.exists(f), "{f}");
        }
        assert!(!fx.exists("/var/lib/mesobake/auth-files"));
        fx.assert_flag_dir(
            "/etc/mesos-master",
            &["hostname", "ip", "quorum", "work_dir", "zk"],
        );
        fx.assert_flag_dir(
            "/etc/mesos-agent",
            &["hostname", "ip", "master", "work_dir"],
        );
        assert!(!fx.read("/etc/default/marathon").contains("AUTHENTICATION"));
        assert_eq!(fx.mode("/etc/default/marathon").0, 0o644);
    }
}

#[test]
fn secrets_that_disappear_take_their_files_with_them() {
    for sh in shells() {
        for layout in [Layout::Mesosphere, Layout::Aventer] {
            let fx = Fixture::new(&sh, layout, MASTER_SLAVE);
            let agent_dir = format!("/etc/{}", layout.agent());
            let before = fx.snapshot().into_keys().collect::<Vec<_>>();
            fx.secrets_env(&master_secrets());
            fx.run().assert_ok();
            assert!(fx.exists("/var/lib/mesobake/auth-files"));
            fx.remove("/etc/mesobake/secrets.env");
            let run = fx.run();
            run.assert_ok();
            for f in AUTH_FILES {
                assert!(!fx.exists(f), "{f} left behind ({layout:?})");
            }
            for flag in [
                "/etc/mesos-master/authenticate_agents",
                "/etc/mesos-master/authenticate_frameworks",
                "/etc/mesos-master/authenticate_http_readwrite",
                "/etc/mesos-master/credentials",
            ] {
                assert!(!fx.exists(flag), "{flag}");
            }
            for flag in [
                "credential",
                "authenticate_http_readwrite",
                "http_credentials",
            ] {
                assert!(!fx.exists(&format!("{agent_dir}/{flag}")), "{flag}");
            }
            assert!(!fx.exists("/var/lib/mesobake/auth-files"));
            let m = fx.read("/etc/default/marathon");
            assert!(
                !m.contains("AUTHENTICATION") && !m.contains("HTTP_CREDENTIALS"),
                "{m}"
            );
            assert_eq!(fx.mode("/etc/default/marathon").0, 0o644);
            // Nothing else either: what is left is what a run without secrets leaves.
            let fresh = Fixture::new(&sh, layout, MASTER_SLAVE);
            fresh.run().assert_ok();
            let strip = |fx: &Fixture| -> Vec<PathBuf> { fx.snapshot().into_keys().collect() };
            let mut left = strip(&fx);
            left.retain(|p| !before.contains(p));
            let mut want = strip(&fresh);
            want.retain(|p| !before.contains(p));
            // The tmp dir under /etc/mesobake stays from the secrets run (empty).
            left.retain(|p| !p.starts_with("etc/marathon") && !p.starts_with("etc/mesobake/tmp"));
            want.retain(|p| !p.starts_with("etc/mesobake/tmp"));
            assert_eq!(left, want, "{layout:?}");
        }
    }
}

#[test]
fn secrets_env_must_be_a_root_owned_0600_file() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        fx.secrets_env(&master_secrets());
        for mode in [0o644, 0o640, 0o604, 0o400, 0o700] {
            fx.chmod("/etc/mesobake/secrets.env", mode);
            let run = fx.assert_run_changes_nothing(&Boot::default());
            run.assert_failed("/etc/mesobake/secrets.env has mode");
            run.assert_failed("it must be 0600");
            assert_no_secret_printed(&run);
        }
        fx.chmod("/etc/mesobake/secrets.env", 0o600);
        // Owned by someone else than the user running the script (root on a node).
        let (uid, _) = fx.owner();
        let other: &'static str = Box::leak((uid + 1).to_string().into_boxed_str());
        let run = fx.assert_run_changes_nothing(&Boot {
            env: vec![("MESOBAKE_SELF_UID", other)],
            ..Boot::default()
        });
        run.assert_failed(&format!("is owned by uid {uid}, not root ({other})"));
        // A symlink, even to a good file, is not what cloud-init writes.
        fs::rename(
            fx.guest("/etc/mesobake/secrets.env"),
            fx.guest("/etc/mesobake/elsewhere"),
        )
        .unwrap();
        fx.link("/etc/mesobake/secrets.env", "elsewhere");
        fx.assert_run_changes_nothing(&Boot::default())
            .assert_failed("is a symlink");
    }
}

#[test]
fn missing_or_malformed_credentials_fail_without_showing_a_secret() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        // An agent's secrets on a master: Marathon's credential is missing.
        fx.secrets_env(&agent_secrets());
        fx.assert_run_changes_nothing(&Boot::default())
            .assert_failed("has no MESOBAKE_MARATHON_PRINCIPAL and MESOBAKE_MARATHON_SECRET, which role master-slave needs");
        for (bad, why) in [
            ("tooShort123", "MESOBAKE_AGENT_SECRET in /etc/mesobake/secrets.env must be 16 to 128 letters and digits"),
            ("has-a-dash-0123456789abcdef", "MESOBAKE_AGENT_SECRET in /etc/mesobake/secrets.env must be 16 to 128"),
        ] {
            fx.secrets_env(&master_secrets().replace(AGENT_SECRET, bad));
            let run = fx.assert_run_changes_nothing(&Boot::default());
            run.assert_failed(why);
            assert!(!run.stdout.contains(bad) && !run.stderr.contains(bad), "{run:#?}");
        }
        fx.secrets_env(&master_secrets().replace("='operator'", "='op erator'"));
        fx.assert_run_changes_nothing(&Boot::default())
            .assert_failed("MESOBAKE_OPERATOR_PRINCIPAL in /etc/mesobake/secrets.env must be");
        // Secrets in node.env are not taken (node.env is world-readable).
        fx.remove("/etc/mesobake/secrets.env");
        fx.node_env(&master_secrets());
        let run = fx.run();
        run.assert_ok();
        assert!(
            run.stderr
                .contains("MESOBAKE_AGENT_SECRET belongs in /etc/mesobake/secrets.env"),
            "{run:#?}"
        );
        assert_no_secret_printed(&run);
        assert!(!fx.exists("/etc/mesos/credentials"));
    }
}

#[test]
fn authentication_flags_the_image_already_has_are_refused() {
    for sh in shells() {
        // The deprecated name is the same flag to Mesos.
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        fx.write("/etc/mesos-master/authenticate_slaves", "true\n");
        fx.secrets_env(&master_secrets());
        fx.assert_run_changes_nothing(&Boot::default())
            .assert_failed("/etc/mesos-master/authenticate_slaves is already in the image");
        let fx = Fixture::new(&sh, Layout::Aventer, MASTER_SLAVE);
        fx.write("/etc/mesos-agent/?no-authenticate_http_readwrite", "");
        fx.secrets_env(&master_secrets());
        fx.assert_run_changes_nothing(&Boot::default())
            .assert_failed(
                "/etc/mesos-agent/?no-authenticate_http_readwrite is already in the image",
            );
        // Node extras may not set them either (owned flags), secrets or not.
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        fx.node_env("MESOBAKE_MASTER_FLAGS='Authenticate=true'\n");
        fx.assert_run_changes_nothing(&Boot::default())
            .assert_failed("--authenticate is written by mesobake-configure");
        // Nor the profile's Marathon extras.
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER_SLAVE);
        fx.write(
            "/etc/mesobake/marathon.env",
            "MARATHON_HTTP_CREDENTIALS=me:pw\n",
        );
        fx.secrets_env(&master_secrets());
        fx.assert_run_changes_nothing(&Boot::default())
            .assert_failed("/etc/mesobake/marathon.env sets Marathon's authentication");
    }
}

#[test]
fn marathon_secret_goes_to_the_marathon_user_or_stays_roots() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER);
        let (uid, gid) = fx.owner();
        fx.secrets_env(&master_secrets());
        fx.run().assert_ok();
        let meta = fs::metadata(fx.guest("/etc/marathon/mesos-secret")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (uid, gid, 0o400)
        );
        // An image without the user: root keeps it (Marathon then runs as root).
        let fx = Fixture::new(&sh, Layout::Mesosphere, MASTER);
        fx.write("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\n");
        fx.secrets_env(&master_secrets());
        let run = fx.run();
        run.assert_ok();
        assert!(
            run.stderr.contains("the image has no marathon user"),
            "{run:#?}"
        );
        assert_eq!(fx.mode("/etc/marathon/mesos-secret"), (0o400, uid));
    }
}

// --- ZooKeeper credentials, appliance secrets, network policy ------------------------

const ZK_SECRET: &str = "ZooKeeperSecret0123456789abcdefA";

fn zk_secrets() -> String {
    format!("MESOBAKE_ZK_PRINCIPAL='mesobake'\nMESOBAKE_ZK_SECRET='{ZK_SECRET}'\n")
}

#[test]
fn zookeeper_credentials_reach_mesos_and_marathon_and_stay_root_only() {
    for sh in shells() {
        for layout in [Layout::Mesosphere, Layout::Aventer] {
            let fx = Fixture::new(&sh, layout, MASTER_SLAVE);
            fx.secrets_env(&(master_secrets() + &zk_secrets()));
            let run = fx.run();
            run.assert_ok();
            // The status line and the world-readable configured.env never carry them.
            assert_eq!(
                run.stdout,
                configured_line("master-slave", IP, "zk://10.0.2.15:2181/mesos")
            );
            assert!(!run.stdout.contains(ZK_SECRET) && !run.stderr.contains(ZK_SECRET));
            assert!(!fx
                .read("/var/lib/mesobake/configured.env")
                .contains(ZK_SECRET));
            let url = format!("zk://mesobake:{ZK_SECRET}@10.0.2.15:2181");
            // Never on a command line: AVENTER's flag files say file:///etc/mesos/zk;
            // Mesosphere's wrapper passes /etc/mesos/zk's content, so that is a pointer.
            let holder = match layout {
                Layout::Aventer => "/etc/mesos/zk",
                Layout::Mesosphere => {
                    assert_eq!(fx.read("/etc/mesos/zk"), "file:///etc/mesos/zk-auth\n");
                    assert_eq!(fx.mode("/etc/mesos/zk").0, 0o644);
                    "/etc/mesos/zk-auth"
                }
            };
            assert_eq!(fx.read(holder), format!("{url}/mesos\n"));
            assert_eq!(fx.mode(holder).0, 0o600);
            let marathon = fx.read("/etc/default/marathon");
            assert!(
                marathon.contains(&format!("\nMARATHON_MASTER={url}/mesos\n"))
                    && marathon.contains(&format!("\nMARATHON_ZK={url}/marathon\n")),
                "{marathon}"
            );
            assert_eq!(fx.mode("/etc/default/marathon").0, 0o600);
            // The masters make /mesos and /marathon digest-only, after the services.
            assert_eq!(
                run.started(),
                [
                    "zookeeper",
                    "mesos-master",
                    "marathon",
                    layout.agent(),
                    "mesobake-zk-acl"
                ]
            );
            fx.assert_run_changes_nothing(&Boot::default()).assert_ok();
            // Secrets gone: the plain URL, readable, and no credential left behind.
            fx.remove("/etc/mesobake/secrets.env");
            fx.run().assert_ok();
            assert_eq!(fx.read("/etc/mesos/zk"), "zk://10.0.2.15:2181/mesos\n");
            assert_eq!(fx.mode("/etc/mesos/zk").0, 0o644);
            assert!(!fx.exists("/etc/mesos/zk-auth"));
        }

        // An agent of a group: the URL from user-data, the credentials from secrets.env.
        let fx = Fixture::new(&sh, Layout::Aventer, SLAVE_ONLY);
        fx.node_env("MESOBAKE_ZK=zk://10.0.0.11:2181,10.0.0.12:2181/mesos\n");
        fx.secrets_env(&(agent_secrets() + &zk_secrets()));
        let run = fx.run();
        run.assert_ok();
        assert_eq!(
            fx.read("/etc/mesos/zk"),
            format!("zk://mesobake:{ZK_SECRET}@10.0.0.11:2181,10.0.0.12:2181/mesos\n")
        );
        assert_eq!(fx.mode("/etc/mesos/zk").0, 0o600);
        assert_eq!(
            run.started(),
            ["mesos-agent"],
            "no ACL job without ZooKeeper"
        );

        // Credentials given twice would be a guess at which one wins.
        fx.node_env("MESOBAKE_ZK=zk://someone:else@10.0.0.11:2181/mesos\n");
        fx.assert_run_changes_nothing(&Boot::default())
            .assert_failed("give them once");

        // Without secrets the file is readable again, and the credentials are gone.
        fx.remove("/etc/mesobake/secrets.env");
        fx.node_env("MESOBAKE_ZK=zk://10.0.0.11:2181/mesos\n");
        fx.run().assert_ok();
        assert_eq!(fx.read("/etc/mesos/zk"), "zk://10.0.0.11:2181/mesos\n");
        assert_eq!(fx.mode("/etc/mesos/zk").0, 0o644);
    }
}

/// The secrets.env keys and values, parsed as the configurator's parser does.
fn env_values(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.trim_matches('\'').to_string())
        })
        .collect()
}

#[test]
fn an_appliance_booted_without_user_data_makes_its_own_secrets() {
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Aventer, MASTER_SLAVE);
        fx.set_role_env("MESOBAKE_APPLIANCE_SECRETS=generate");
        let run = fx.run();
        run.assert_ok();
        assert_eq!(fx.mode("/etc/mesobake/secrets.env").0, 0o600);
        let secrets = env_values(&fx.read("/etc/mesobake/secrets.env"));
        for (name, principal) in [
            ("AGENT", "agent"),
            ("MARATHON", "marathon"),
            ("OPERATOR", "operator"),
            ("ZK", "mesobake"),
        ] {
            assert_eq!(secrets[&format!("MESOBAKE_{name}_PRINCIPAL")], principal);
            let secret = &secrets[&format!("MESOBAKE_{name}_SECRET")];
            assert!(
                secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_alphanumeric()),
                "{name}: {secret:?}"
            );
            // The console line names the file; no secret is printed anywhere.
            assert!(!run.stdout.contains(secret.as_str()) && !run.stderr.contains(secret.as_str()));
        }
        assert!(
            run.stderr
                .contains("mesobake: secrets generated: /etc/mesobake/secrets.env"),
            "{run:#?}"
        );
        // ... and it runs authenticated with them.
        assert_eq!(fx.read("/etc/mesos-master/authenticate_agents"), "true\n");
        assert!(fx
            .read("/etc/mesos/credentials")
            .contains(&secrets["MESOBAKE_OPERATOR_SECRET"]));
        assert!(fx
            .read("/etc/mesos/zk")
            .contains(&secrets["MESOBAKE_ZK_SECRET"]));
        assert!(run.started().contains(&"mesobake-zk-acl"));

        // The next boot keeps them and says nothing about generating.
        let again = fx.assert_run_changes_nothing(&Boot::default());
        again.assert_ok();
        assert!(!again.stderr.contains("secrets generated"), "{again:#?}");

        // Another appliance gets other secrets.
        let other = Fixture::new(&sh, Layout::Aventer, MASTER_SLAVE);
        other.set_role_env("MESOBAKE_APPLIANCE_SECRETS=generate");
        other.run().assert_ok();
        let theirs = env_values(&other.read("/etc/mesobake/secrets.env"));
        assert_ne!(
            theirs["MESOBAKE_OPERATOR_SECRET"],
            secrets["MESOBAKE_OPERATOR_SECRET"]
        );

        // A node given user-data (a cluster member, or `[security] auth = false`), an
        // image baked without the key, and an agent-only role make none.
        for (role, baked, node_env) in [
            (MASTER_SLAVE, true, Some(THREE_MASTERS)),
            (MASTER_SLAVE, false, None),
            (
                SLAVE_ONLY,
                true,
                Some("MESOBAKE_ZK=zk://10.0.0.11:2181/mesos\n"),
            ),
        ] {
            let fx = Fixture::new(&sh, Layout::Aventer, role);
            if baked {
                fx.set_role_env("MESOBAKE_APPLIANCE_SECRETS=generate");
            }
            if let Some(env) = node_env {
                fx.node_env(&format!("MESOBAKE_IP=10.0.0.11\n{env}"));
            }
            fx.run().assert_ok();
            assert!(!fx.exists("/etc/mesobake/secrets.env"), "{}", role.name);
        }
    }
}

const ALL_PORTS: &str = "MESOBAKE_GUARDED_PORTS='2181 2888 3888 5050 8080 5051 31000-32000'";

fn nft_calls(fx: &Fixture) -> Vec<String> {
    fs::read_to_string(fx.work.join("nft.log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn the_network_policy_guards_the_roles_ports_for_the_cluster_networks_only() {
    assert!(
        Path::new("/usr/sbin/nft").exists(),
        "this test loads the rules into the real nft: apt-get install nftables"
    );
    for sh in shells() {
        let fx = Fixture::new(&sh, Layout::Aventer, MASTER_SLAVE);
        fx.set_role_env(ALL_PORTS);
        fx.write("/sys/class/net/ens3/address", "52:54:00:AA:BB:CC\n");
        fx.write("/sys/class/net/ens4/address", "52:54:00:11:22:33\n");
        fx.node_env(
            "MESOBAKE_CLUSTER_NETWORKS='10.77.0.0/24 192.168.56.0/24'\n\
             MESOBAKE_TRUSTED_MACS='52:54:00:aa:bb:cc'\n",
        );
        let run = fx.run();
        run.assert_ok();
        let rules = fx.read("/etc/mesobake/firewall.nft");
        for want in [
            "elements = { 10.77.0.0/24, 192.168.56.0/24 }",
            "meta l4proto { tcp, udp } th dport { 2181, 2888, 3888, 5050, 8080, 5051, 31000-32000 } jump guarded",
            "iif \"lo\" accept",
            "iifname { \"ens3\" } accept",
            "ip saddr @cluster_networks accept",
            "counter drop",
        ] {
            assert!(rules.contains(want), "{want:?} missing from:\n{rules}");
        }
        // Loaded (by the real nft, which accepted the file) before any service started.
        assert_eq!(
            nft_calls(&fx),
            [format!(
                "nft -f {}",
                fx.guest("/etc/mesobake/firewall.nft").display()
            )]
        );
        fx.assert_run_changes_nothing(&Boot::default()).assert_ok();

        // No networks in the seed: the node's own networks; an unknown MAC is no
        // interface (and no error: the NIC may be gone).
        fx.node_env("MESOBAKE_TRUSTED_MACS='52:54:00:de:ad:00'\n");
        let run = fx.boot(&Boot {
            env: vec![("MESOBAKE_DETECT_NETWORKS", "10.0.2.0/24")],
            ..Boot::default()
        });
        run.assert_ok();
        let rules = fx.read("/etc/mesobake/firewall.nft");
        assert!(rules.contains("elements = { 10.0.2.0/24 }"), "{rules}");
        assert!(!rules.contains("iifname"), "{rules}");
        assert!(
            run.stderr.contains("no interface has 52:54:00:de:ad:00"),
            "{run:#?}"
        );

        // Bad values are refused before anything is written.
        for (env, reason) in [
            (
                "MESOBAKE_CLUSTER_NETWORKS='10.77.0.5/24'\n",
                "'10.77.0.5/24' is not an IPv4 network",
            ),
            (
                "MESOBAKE_CLUSTER_NETWORKS='10.77.0.0/33'\n",
                "'10.77.0.0/33'",
            ),
            (
                "MESOBAKE_TRUSTED_MACS='52-54-00-aa-bb-cc'\n",
                "not a lower-case MAC",
            ),
            ("MESOBAKE_FIREWALL=maybe\n", "must be on or off"),
        ] {
            fx.node_env(env);
            fx.assert_run_changes_nothing(&Boot::default())
                .assert_failed(reason);
        }

        // Turned off: our table goes, and so does the file.
        fx.node_env("MESOBAKE_FIREWALL=off\n");
        let run = fx.run();
        run.assert_ok();
        assert!(!fx.exists("/etc/mesobake/firewall.nft"));
        assert!(nft_calls(&fx)
            .iter()
            .any(|c| c == "nft delete table inet mesobake"));

        // An image without nft cannot keep the promise: say so, start nothing.
        fx.node_env("");
        let run = fx.boot(&Boot {
            env: vec![("MESOBAKE_NFT", "/nonexistent/nft")],
            ..Boot::default()
        });
        run.assert_failed("nft not found");
        assert!(run.started().is_empty(), "{run:#?}");
    }
}

/// A throwaway ZooKeeper and its directory.
struct ZkServer {
    zk: ZooKeeper,
    _dir: tempfile::TempDir,
}

impl ZkServer {
    fn start() -> ZkServer {
        let dir = tempfile::tempdir().unwrap();
        ZkServer {
            zk: ZooKeeper::start(dir.path()),
            _dir: dir,
        }
    }

    /// Runs a python3-kazoo snippet with `zk` connected (anonymous), plus `auth` for
    /// a digest-authenticated client. Returns the exit code and stdout.
    fn kazoo(&self, body: &str) -> (i32, String) {
        let script = format!(
            "import sys\nfrom kazoo.client import KazooClient\nfrom kazoo.exceptions import NoAuthError\n\
             zk = KazooClient(hosts='127.0.0.1:{port}', timeout=5)\nzk.start(timeout=5)\n\
             auth = KazooClient(hosts='127.0.0.1:{port}', timeout=5, auth_data=[('digest', 'mesobake:{ZK_SECRET}')])\n\
             auth.start(timeout=5)\n{body}\n",
            port = self.zk.port
        );
        // Debian's python3 has python3-kazoo (a pyenv shim earlier on PATH may not).
        let out = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

/// `mesobake-configure zk-acl` against `server`, as the unit runs it.
fn zk_acl(fx: &Fixture, server: &str, tries: &str) -> std::process::Output {
    Command::new("sh")
        .arg(SCRIPT)
        .arg("zk-acl")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MESOBAKE_ROOT", &fx.root)
        .env("MESOBAKE_ZK_ACL_SERVER", server)
        .env("MESOBAKE_ZK_ACL_TRIES", tries)
        .env("MESOBAKE_ZK_ACL_PAUSE", "1")
        .output()
        .unwrap()
}

#[test]
fn masters_make_the_mesos_and_marathon_znodes_digest_only() {
    let zk = ZkServer::start();
    let server = format!("127.0.0.1:{}", zk.zk.port);
    let fx = Fixture::new(&Shell(vec!["sh"]), Layout::Aventer, MASTER_SLAVE);
    fx.secrets_env(&(master_secrets() + &zk_secrets()));
    // Mesos may have been first: its group znodes are EVERYONE_READ_CREATOR_ALL
    // (src/zookeeper/group.cpp), the base path included.
    let (code, out) = zk.kazoo(
        "from kazoo.security import ACL, Id, Permissions\n\
         acl = [ACL(Permissions.READ, Id('world', 'anyone')), ACL(Permissions.ALL, Id('auth', ''))]\n\
         auth.create('/mesos/json.info_0000000001', b'{}', acl=acl, makepath=True, ephemeral=False)\n\
         print(zk.get_children('/mesos'))",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("json.info_0000000001"),
        "world-readable before: {out}"
    );

    for _ in 0..2 {
        let out = zk_acl(&fx, &server, "5");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("ZooKeeper /mesos and /marathon are digest-only (principal mesobake)"),
            "{stderr}"
        );
        assert!(!stderr.contains(ZK_SECRET) && out.stdout.is_empty());
        // Without the digest: neither listed nor read. With it: both, and Mesos's own
        // znode is still there and still Mesos's.
        let (code, out) = zk.kazoo(
            "for call in (lambda: zk.get_children('/mesos'), lambda: zk.get('/mesos'),\n\
             lambda: zk.get_children('/marathon'), lambda: zk.get('/marathon')):\n\
             \ttry:\n\t\tcall(); print('READABLE')\n\texcept NoAuthError:\n\t\tprint('noauth')\n\
             print(auth.get_children('/mesos'), auth.get_children('/marathon'))\n\
             print(auth.get_acls('/mesos')[0])",
        );
        assert_eq!(code, 0, "{out}");
        assert_eq!(out.matches("noauth").count(), 4, "{out}");
        assert!(!out.contains("READABLE"), "{out}");
        assert!(out.contains("['json.info_0000000001'] []"), "{out}");
        assert!(
            out.contains("scheme='digest', id='mesobake:"),
            "one digest entry: {out}"
        );
        assert!(!out.contains("anyone"), "{out}");
    }

    // No ZooKeeper answering: it gives up after its tries and says so.
    drop(zk);
    let out = zk_acl(&fx, &server, "2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ZooKeeper ACLs NOT set"), "{stderr}");
}
