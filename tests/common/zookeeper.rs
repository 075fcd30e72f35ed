//! A throwaway ZooKeeper server for the test binaries that run daemons against a real
//! one (tests/standins.rs, tests/configurator.rs). Included with `#[path]`, since those
//! binaries do not use the rest of tests/common.
//!
//! ZooKeeper is a declared test dependency (ci/setup-host.sh installs Debian's
//! `zookeeper`), so a missing one fails the test: a skip could only hide a broken setup.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's ZooKeeper jar.
pub const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

/// A standalone ZooKeeper on 127.0.0.1 and a free port, with its data and log in a
/// directory of the caller's; killed on drop.
pub struct ZooKeeper {
    child: Child,
    /// The client port.
    pub port: u16,
    log: PathBuf,
}

impl ZooKeeper {
    /// Starts it in `dir` and waits (up to 60 s) until it serves.
    pub fn start(dir: &Path) -> ZooKeeper {
        assert!(
            Path::new(ZOOKEEPER_JAR).exists(),
            "{ZOOKEEPER_JAR} not found: run ci/setup-host.sh (apt-get install zookeeper)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.join("zk-data");
        std::fs::create_dir_all(&data).unwrap();
        let config = dir.join("zoo.cfg");
        // A short tick so that short session timeouts are allowed (2 ticks at least).
        std::fs::write(
            &config,
            format!(
                "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=srvr\n",
                data.display()
            ),
        )
        .unwrap();
        let log = dir.join("zookeeper.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("java")
            .arg("-cp")
            .arg(ZOOKEEPER_JAR)
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("java (ZooKeeper pulls in default-jre): {e}"));
        let mut zk = ZooKeeper { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !zk.serves() {
            if let Some(status) = zk.child.try_wait().unwrap() {
                panic!("ZooKeeper exited ({status}):\n{}", zk.log());
            }
            assert!(
                Instant::now() < deadline,
                "ZooKeeper did not serve within 60 s:\n{}",
                zk.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        zk
    }

    /// Whether it answers the `srvr` four-letter word with its mode.
    fn serves(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut answer = String::new();
        stream.write_all(b"srvr").is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.contains("Mode:")
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
