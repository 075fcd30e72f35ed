//! `mesobake verify IMAGE`: boot an image, wait for the first-boot configurator's line,
//! then check the role's services from the host through forwarded ports.
//!
//! Roles that run ZooKeeper boot with no seed at all, as an appliance would. Such a
//! master (or master+slave) generates its own secrets at first boot and says so on the
//! console ([`SECRETS_GENERATED_LINE`], never the secret), then runs authenticated:
//! Marathon's API wants a login that only the guest knows, so its 401 is the expected
//! answer there ([`marathon_unauthorized`]). The Mesos probes read only read-only
//! endpoints (`/flags`, `/state`, `/slaves`), which stay open, and are checked as always.
//!
//! A seed given with `--seed` is booted as it is: a node's seed from `mesobake seed` (or
//! the one inside its OVA) carries the node's secrets and names the node's NIC by MAC,
//! which the VM's NIC then takes ([`seed_nic`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

pub mod seed_nic;

use super::probe;
use super::qemu::{self, Accel, VmSpec};
use crate::export::manifest::Manifest;
use crate::nodeconf::{zk_userinfo, zk_without_credentials};
use crate::profile::Service;
use crate::seed::secrets::Credential;
use crate::seed::NodeSeed;
use crate::service::SERVICES;

/// Options for one verification boot.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The image.
    pub image: PathBuf,
    /// A seed ISO or a directory with user-data and meta-data.
    pub seed: Option<PathBuf>,
    /// The services to expect; read from the manifest beside the image when None.
    pub services: Option<Vec<Service>>,
    /// The Mesos ZooKeeper URL handed to agent-only images.
    pub zk: String,
    /// Forced acceleration (None: probe KVM, fall back to TCG).
    pub accel: Option<Accel>,
    /// How long to wait for the configured line.
    pub boot_timeout: Duration,
    /// How long each service check may keep retrying after that.
    pub service_timeout: Duration,
    /// Guest memory in MiB.
    pub memory_mb: u32,
}

/// One row of the result table.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

/// The outcome of a verification boot.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The image.
    pub image: String,
    /// The acceleration used.
    pub accel: String,
    /// Seconds from QEMU start to the configured line.
    pub boot_to_configured_s: Option<f64>,
    /// The checks in order.
    pub checks: Vec<Check>,
    /// Where the serial log was kept (on failure).
    pub serial_log: Option<String>,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    /// The pass/fail table.
    pub fn table(&self) -> String {
        let mut t = crate::output::Table::new(&["check", "result", "detail"]);
        for c in &self.checks {
            t.row(vec![
                c.name.clone(),
                if c.ok { "PASS" } else { "FAIL" }.into(),
                c.detail.clone(),
            ]);
        }
        t.render()
    }
}

/// The values the configurator reported in its line.
#[derive(Debug, Clone, PartialEq)]
pub struct Configured {
    /// Role name.
    pub role: String,
    /// Guest IP.
    pub ip: String,
    /// ZooKeeper URL.
    pub zk: String,
}

/// The configurator's console line when an image booted without user-data generated its
/// own secrets (it names the file, never a secret).
pub const SECRETS_GENERATED_LINE: &str = "mesobake: secrets generated: /etc/mesobake/secrets.env";

/// Whether the serial log at `serial` holds [`SECRETS_GENERATED_LINE`].
fn saw_secrets_generated(serial: &Path) -> bool {
    std::fs::read(serial)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .any(|l| l.contains(SECRETS_GENERATED_LINE))
        })
        .unwrap_or(false)
}

/// Marathon's `/v2/info`, asked without a login, answered `status` (its status line).
/// None when that is not a 401: the usual checks apply. A 401 is a pass only when verify
/// gave the VM no seed (`no_seed`) and the configurator said it generated the
/// appliance's own secrets (`generated`): Marathon then rightly wants the operator's
/// login, which only the guest knows. Any other 401 is a failure.
pub fn marathon_unauthorized(
    status: &str,
    no_seed: bool,
    generated: bool,
) -> Option<Result<String>> {
    if status.split_whitespace().nth(1) != Some("401") {
        return None;
    }
    Some(match (no_seed, generated) {
        (true, true) => Ok(format!(
            "up; authentication on with the appliance's own secrets (/v2/info without a login: {status}; root reads them in /etc/mesobake/secrets.env)"
        )),
        (true, false) => Err(anyhow::anyhow!(
            "/v2/info: {status}, but the console has no {SECRETS_GENERATED_LINE:?} line: Marathon wants a login nobody was given"
        )),
        (false, _) => Err(anyhow::anyhow!(
            "/v2/info: {status}: Marathon wants a login (the operator's, from the seed's secrets/), and verify has none"
        )),
    })
}

/// Parses `mesobake: configured role=… ip=… zk=…`.
pub fn parse_configured(line: &str) -> Option<Configured> {
    let rest = &line[line.find("mesobake: configured ")? + "mesobake: configured ".len()..];
    let get = |k: &str| {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")).map(String::from))
    };
    Some(Configured {
        role: get("role")?,
        ip: get("ip")?,
        zk: get("zk")?,
    })
}

/// The seed ISO for the boot: the one given (an ISO, or a directory made into one), or
/// for an agent-only image a ZooKeeper URL alone; none for roles that run ZooKeeper.
fn seed_iso(opts: &VerifyOptions, services: &[Service], tmp: &Path) -> Result<Option<PathBuf>> {
    let iso = tmp.join("seed.iso");
    match &opts.seed {
        Some(p) if p.is_dir() => crate::seed::iso_from_dir(p, &iso)?,
        Some(p) => return Ok(Some(p.clone())),
        None if !services.contains(&Service::Zookeeper) => {
            // An agent-only image needs to be told where ZooKeeper is; this is exactly
            // what an autoscaling group's shared user-data does.
            let mut s = NodeSeed {
                instance_id: format!("mesobake-verify-{}", std::process::id()),
                ..Default::default()
            };
            s.node_env.insert("MESOBAKE_ZK".into(), opts.zk.clone());
            s.write_iso(&iso)?;
        }
        None => return Ok(None),
    }
    Ok(Some(iso))
}

/// Boots the image and checks it. A seed whose network-config names the node's NIC by
/// MAC boots with that MAC on the VM's NIC ([`seed_nic`]), or is refused before the boot
/// when QEMU's user network could not reach the address it gives.
pub fn verify(opts: &VerifyOptions) -> Result<Report> {
    let image = &opts.image;
    if !image.is_file() {
        bail!("{}: no such image", image.display());
    }
    let nic = match &opts.seed {
        Some(s) => seed_nic::from_seed(s)?,
        None => None,
    };
    let info = crate::export::qemu_info(image)?;
    let format = info["format"].as_str().unwrap_or("raw").to_string();
    let services = match &opts.services {
        Some(s) => s.clone(),
        None => services_from_manifest(image)?,
    };
    let tmp = tempfile::Builder::new()
        .prefix("mesobake-verify-")
        .tempdir()?;
    let seed = seed_iso(opts, &services, tmp.path())?;
    let no_seed = seed.is_none();
    let forwards: Vec<(u16, u16)> = qemu::free_ports(SERVICES.len())?
        .into_iter()
        .zip(SERVICES.iter().map(|s| s.port))
        .collect();
    let host_port = |g: u16| {
        forwards
            .iter()
            .find(|(_, p)| *p == g)
            .map(|(h, _)| *h)
            .expect("forwarded")
    };
    let spec = VmSpec {
        disk: image.clone(),
        disk_format: format,
        seed,
        memory_mb: opts.memory_mb,
        cpus: 1,
        forwards: forwards.clone(),
        serial_log: tmp.path().join("serial.log"),
        extra_args: Vec::new(),
        forward_to: nic.as_ref().and_then(|n| n.forward_to.clone()),
        nic0_mac: nic.as_ref().map(|n| n.mac.clone()),
        stderr_log: None,
        console_socket: None,
        qmp_socket: None,
        pidfile: None,
        data_disk: None,
    };
    let started = Instant::now();
    let mut vm = qemu::start_auto(&spec, opts.accel)?;
    let mut report = Report {
        image: image.display().to_string(),
        accel: vm.accel.name().into(),
        boot_to_configured_s: None,
        checks: Vec::new(),
        serial_log: None,
    };
    eprintln!(
        "mesobake: booting {} ({}{}), waiting for the configured line",
        image.display(),
        vm.accel.name(),
        nic.map(|n| format!(", {}", n.describe()))
            .unwrap_or_default()
    );
    let line = vm.wait_for_line(
        &["mesobake: configured ", "mesobake: configuration FAILED"],
        opts.boot_timeout,
    );
    match line.as_ref().ok().and_then(|l| parse_configured(l)) {
        Some(c) => {
            let secs = started.elapsed().as_secs_f64();
            report.boot_to_configured_s = Some(secs);
            report.checks.push(first_boot(&c, secs));
            let own_secrets_log = no_seed.then_some(spec.serial_log.as_path());
            run_checks(
                &mut report,
                &services,
                &c,
                host_port,
                opts.service_timeout,
                own_secrets_log,
            );
        }
        None => report.checks.push(Check {
            name: "first boot".into(),
            ok: false,
            detail: match line {
                Ok(l) => l,
                Err(e) => format!("{e:#}"),
            },
        }),
    }
    vm.stop();
    if !report.passed() {
        report.serial_log = Some(keep_serial_log(image, &spec.serial_log)?);
    }
    Ok(report)
}

/// Keeps a failed boot's serial log in the temp directory, named after the image; returns
/// where.
fn keep_serial_log(image: &Path, log: &Path) -> Result<String> {
    let keep = std::env::temp_dir().join(format!(
        "mesobake-verify-{}-{}.serial.log",
        image.file_stem().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    Ok(qemu::keep_log(log, &keep)?.display().to_string())
}

/// The first-boot check: the configured line came. The console is no place for a
/// secret, so a ZooKeeper URL there with its credential fails (shown here without it).
fn first_boot(c: &Configured, secs: f64) -> Check {
    let leaked = zk_userinfo(&c.zk).is_some();
    Check {
        name: "first boot".into(),
        ok: !leaked,
        detail: format!(
            "configured role={} ip={} zk={} in {secs:.0} s{}",
            c.role,
            c.ip,
            zk_without_credentials(&c.zk),
            if leaked {
                "; but the configured line shows the ZooKeeper URL with its credential"
            } else {
                ""
            }
        ),
    }
}

/// The Mesos, Marathon, ZooKeeper and exporter checks. `own_secrets_log`: the serial log,
/// when verify gave the VM no seed (a role with ZooKeeper, booted as an appliance that
/// may generate its own secrets; see [`marathon_unauthorized`]).
fn run_checks(
    report: &mut Report,
    services: &[Service],
    c: &Configured,
    port: impl Fn(u16) -> u16,
    timeout: Duration,
    own_secrets_log: Option<&Path>,
) {
    let zk_hosts =
        c.zk.trim_start_matches("zk://")
            .split('/')
            .next()
            .unwrap_or("")
            .split(',')
            .count();
    let quorum = (zk_hosts / 2 + 1).to_string();
    for spec in SERVICES {
        let (svc, guest_port) = (spec.service, spec.port);
        let p = port(guest_port);
        let name = format!("{} :{guest_port}", svc.name());
        let (ok, detail) = if !services.contains(&svc) {
            match not_answering(svc, p) {
                Ok(()) => (true, "not running, as the role requires".to_string()),
                Err(e) => (false, format!("{e:#}")),
            }
        } else {
            // Ok(Err(..)): a failure no retry mends.
            let r = retry(timeout, || {
                if svc == Service::Marathon {
                    let (status, _) = http_get(p, "/v2/info")?;
                    let generated = own_secrets_log.is_some_and(saw_secrets_generated);
                    if let Some(v) =
                        marathon_unauthorized(&status, own_secrets_log.is_some(), generated)
                    {
                        return Ok(v);
                    }
                }
                let r = probe::read(spec.probe, p)?;
                expect(svc, &r, c, zk_hosts, &quorum).map(Ok)
            })
            .and_then(|r| r);
            match r {
                Ok(d) => (true, d),
                Err(e) => (false, format!("{e:#}")),
            }
        };
        report.checks.push(Check { name, ok, detail });
    }
    if services.contains(&Service::Master) && services.contains(&Service::Agent) {
        let r = retry(timeout, || registered(port(5050), port(5051)));
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(e) => (false, format!("{e:#}")),
        };
        report.checks.push(Check {
            name: "agent registered".into(),
            ok,
            detail,
        });
    }
}

/// Checks one service's reading against what the node reported in its configured line;
/// returns the check's detail.
fn expect(
    svc: Service,
    r: &probe::Reading,
    c: &Configured,
    zk_hosts: usize,
    quorum: &str,
) -> Result<String> {
    let null = serde_json::Value::Null;
    let flags = r.flags.as_ref().unwrap_or(&null);
    let st = &r.state;
    match svc {
        Service::Zookeeper => {
            let mode = st["mode"].as_str().unwrap_or("");
            if zk_hosts == 1 && mode != "standalone" {
                bail!("srvr says Mode: {mode}, expected standalone");
            }
            Ok(format!("srvr: Mode: {mode}"))
        }
        Service::Master => {
            expect_zk_flag(flags, "zk", &c.zk)?;
            expect_flag(flags, "quorum", quorum)?;
            expect_flag(flags, "ip", &c.ip)?;
            if flags["work_dir"].as_str().unwrap_or("").is_empty() {
                bail!("/state: work_dir is not set");
            }
            // One master: it must have won the election in ZooKeeper.
            let leader = st["leader"].as_str().unwrap_or("");
            if zk_hosts == 1 && st["leading"] != true {
                bail!(
                    "/state: not the leading master (leader {leader:?}); is ZooKeeper reachable at {}?",
                    c.zk
                );
            }
            Ok(format!(
                "/state: zk={} quorum={quorum} ip={} leader={leader}",
                c.zk, c.ip
            ))
        }
        Service::Marathon => {
            // Compared without a credential, which Marathon may show (masked) or not.
            let master = zk_without_credentials(st["master"].as_str().unwrap_or(""));
            let want = zk_without_credentials(&c.zk);
            if master != want {
                bail!("/v2/info: master is {master:?}, expected {want}");
            }
            Ok(format!("/v2/info: master={master}"))
        }
        Service::Agent => {
            expect_zk_flag(flags, "master", &c.zk)?;
            expect_flag(flags, "ip", &c.ip)?;
            let host = st["hostname"].as_str().unwrap_or("");
            if host.is_empty() || host.starts_with("localhost") {
                bail!(
                    "/state: the agent calls itself {host:?}; frameworks reach tasks by that name"
                );
            }
            Ok(format!(
                "/state: master={} containerizers={} hostname={host}",
                c.zk,
                flags["containerizers"].as_str().unwrap_or("(default)")
            ))
        }
        Service::NodeExporter => {
            if st["build_info"] != true {
                bail!("/metrics has no node_exporter_build_info: not the node exporter?");
            }
            Ok(r.detail.clone())
        }
    }
}

/// Whether the agent on `agent_port` is registered with, and active on, the master on
/// `master_port`: the agent has an ID from the master, and the master's `/state` lists it.
pub fn registered(master_port: u16, agent_port: u16) -> Result<String> {
    let agent = http_json(agent_port, "/state")?;
    let id = agent["id"].as_str().unwrap_or("");
    if id.is_empty() {
        bail!("the agent has no ID yet: it has not registered with a master");
    }
    let master = master_view(master_port)?;
    if !master.leading {
        bail!("the master does not lead (leader: {:?})", master.leader);
    }
    let slaves = master.agents;
    let Some(entry) = slaves.iter().find(|s| s["id"].as_str() == Some(id)) else {
        bail!(
            "the master's /state lists {} agent(s) but not {id}",
            slaves.len()
        );
    };
    if entry["active"].as_bool() != Some(true) {
        bail!("the master lists agent {id} but not as active");
    }
    Ok(format!(
        "master {} lists agent {id} ({}) as active",
        master.pid,
        entry["hostname"].as_str().unwrap_or("?")
    ))
}

/// A ZooKeeper URL flag: the URL itself, or (AVENTER's layout) `file:///etc/mesos/zk`, the
/// file the configurator writes the same URL into. Mesos shows such a flag by its path, and
/// the leader and registration checks prove the URL inside it works.
///
/// `/flags` is open to anyone, so a flag that shows a ZooKeeper credential fails the check
/// (the message leaves the credential out): the configurator must pass such a URL by its
/// file.
fn expect_zk_flag(flags: &serde_json::Value, name: &str, want: &str) -> Result<()> {
    let got = flags[name].as_str().unwrap_or("");
    // Mesos read the URL from that file (the configurator's /etc/mesos/zk or, where the
    // init wrapper passes /etc/mesos/zk's content, the root-only file it points to).
    if got.starts_with("file:///etc/mesos/") {
        return Ok(());
    }
    if zk_userinfo(got).is_some() {
        bail!(
            "/flags, which anyone may read, shows the ZooKeeper credential in flag {name} ({}); pass the URL as file:///etc/mesos/zk",
            zk_without_credentials(got)
        );
    }
    expect_flag(flags, name, &zk_without_credentials(want))
}

fn expect_flag(flags: &serde_json::Value, name: &str, want: &str) -> Result<()> {
    let got = flags[name].as_str().unwrap_or("");
    if got != want {
        bail!("/state: flag {name} is {got:?}, expected {want:?}");
    }
    Ok(())
}

fn retry<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        crate::run::check_interrupted()?;
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() > timeout => {
                return Err(e.context(format!("still failing after {} s", timeout.as_secs())))
            }
            Err(_) => std::thread::sleep(Duration::from_secs(3)),
        }
    }
}

/// A forwarded port with nothing listening behind it: QEMU accepts on the host side, then
/// closes once the guest refuses, so "nothing answers" means no bytes come back.
fn not_answering(svc: Service, port: u16) -> Result<()> {
    let reply = match svc {
        Service::Zookeeper => four_letter(port, "srvr"),
        _ => http_get(port, "/health").map(|(status, _)| status),
    };
    match reply {
        Ok(r) if !r.is_empty() => bail!(
            "something answers on this port but the role should not run it: {}",
            r.lines().next().unwrap_or("")
        ),
        _ => Ok(()),
    }
}

fn connect(port: u16) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Sends a ZooKeeper four-letter word and returns the reply.
pub fn four_letter(port: u16, word: &str) -> Result<String> {
    let mut s = connect(port)?;
    s.write_all(word.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok();
    if out.is_empty() {
        bail!("no reply to {word} on port {port}");
    }
    Ok(out)
}

/// A minimal HTTP/1.0 GET: returns the status line and the body.
pub fn http_get(port: u16, path: &str) -> Result<(String, String)> {
    http_get_as(port, path, None)
}

/// [`http_get`] with optional HTTP basic auth (`auth`: the principal and secret).
pub fn http_get_as(port: u16, path: &str, auth: Option<&Credential>) -> Result<(String, String)> {
    let (head, body) = http_get_head_as(port, path, auth)?;
    let status = head.lines().next().unwrap_or("").to_string();
    Ok((status, body))
}

/// The `Authorization` header line (with CRLF) for HTTP basic auth, or nothing.
fn auth_header(auth: Option<&Credential>) -> String {
    use base64::Engine;
    match auth {
        Some(c) => format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", c.principal, c.secret))
        ),
        None => String::new(),
    }
}

/// What a Mesos master says about itself: its flags (`/flags`, which every master serves)
/// and, from `/state`, whether it leads and which agents it has. A master that does not
/// lead answers `/state` with a redirect to the leader, as real Mesos does.
#[derive(Debug, Clone)]
pub struct MasterView {
    /// The master's flags.
    pub flags: serde_json::Value,
    /// Whether this master is the elected leader.
    pub leading: bool,
    /// The leader: its PID (`master@ip:port`) when leading, else where it redirects.
    pub leader: String,
    /// The leader's `/state` `slaves` (empty on a follower).
    pub agents: Vec<serde_json::Value>,
    /// The master's own PID (leader only).
    pub pid: String,
}

/// Reads a master's [`MasterView`] through a forwarded port.
pub fn master_view(port: u16) -> Result<MasterView> {
    let flags = http_json(port, "/flags")?["flags"].clone();
    let (head, body) = http_get_head(port, "/state")?;
    let status = head.lines().next().unwrap_or("");
    if status.contains(" 200") {
        let st: serde_json::Value =
            serde_json::from_str(&body).context("GET /state: reply is not JSON")?;
        let leader = st["leader"].as_str().unwrap_or("").to_string();
        let pid = st["pid"].as_str().unwrap_or("").to_string();
        return Ok(MasterView {
            flags,
            leading: !leader.is_empty() && leader == pid,
            leader,
            agents: st["slaves"].as_array().cloned().unwrap_or_default(),
            pid,
        });
    }
    if status.contains(" 307") {
        let location = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("location")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        return Ok(MasterView {
            flags,
            leading: false,
            leader: location,
            agents: Vec::new(),
            pid: String::new(),
        });
    }
    bail!("GET /state: {status} (no leading master known yet?)")
}

/// A minimal HTTP/1.0 GET: returns the response head (status line and headers) and body.
pub fn http_get_head(port: u16, path: &str) -> Result<(String, String)> {
    http_get_head_as(port, path, None)
}

/// [`http_get_head`] with optional HTTP basic auth.
pub fn http_get_head_as(
    port: u16,
    path: &str,
    auth: Option<&Credential>,
) -> Result<(String, String)> {
    let mut s = connect(port)?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{}Connection: close\r\n\r\n",
        auth_header(auth)
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP reply on port {port} for {path}"))?;
    Ok((head.to_string(), body.to_string()))
}

/// GET `path` and parse the 200 reply as JSON.
pub fn http_json(port: u16, path: &str) -> Result<serde_json::Value> {
    http_json_as(port, path, None)
}

/// [`http_json`] with optional HTTP basic auth.
pub fn http_json_as(port: u16, path: &str, auth: Option<&Credential>) -> Result<serde_json::Value> {
    let (status, body) = http_get_as(port, path, auth)?;
    if status.contains(" 401") {
        bail!(
            "GET {path}: {status} ({})",
            if auth.is_some() {
                "the credential was refused: do the seeds' secrets/ belong to this cluster?"
            } else {
                "it wants a login: the operator credential from the seeds' secrets/"
            }
        );
    }
    if !status.contains(" 200") {
        bail!("GET {path}: {status}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path}: reply is not JSON"))
}

fn services_from_manifest(image: &Path) -> Result<Vec<Service>> {
    let dir = image.parent().unwrap_or(Path::new("."));
    let file = image.file_name().unwrap_or_default().to_string_lossy();
    let m = Manifest::load(dir)?;
    let Some((_, entry)) = m.find_output(&file) else {
        bail!("{}: no manifest.json beside it lists this image; say which role it is with --role (a profile name)", image.display());
    };
    entry
        .profile
        .services
        .iter()
        .map(|s| {
            serde_json::from_value(serde_json::Value::String(s.clone()))
                .context("reading services from the manifest")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_line_parses() {
        let c = parse_configured("[   42.1] mesobake: configured role=master-slave ip=10.0.2.15 zk=zk://10.0.2.15:2181/mesos").unwrap();
        assert_eq!(c.role, "master-slave");
        assert_eq!(c.ip, "10.0.2.15");
        assert_eq!(c.zk, "zk://10.0.2.15:2181/mesos");
        assert!(parse_configured("mesobake: configuration FAILED: no zk").is_none());
    }

    #[test]
    fn marathon_401_passes_only_for_an_appliance_that_made_its_own_secrets() {
        let unauthorized = "HTTP/1.1 401 Unauthorized";
        // Not a 401: the usual /v2/info checks apply, whatever the console says.
        for (no_seed, generated) in [(true, true), (true, false), (false, true)] {
            assert!(marathon_unauthorized("HTTP/1.1 200 OK", no_seed, generated).is_none());
            assert!(
                marathon_unauthorized("HTTP/1.1 503 Service Unavailable", no_seed, generated)
                    .is_none()
            );
        }
        // No seed, and the configurator said it generated the secrets: a pass.
        let d = marathon_unauthorized(unauthorized, true, true)
            .unwrap()
            .unwrap();
        assert!(
            d.starts_with("up; authentication on with the appliance's own secrets"),
            "{d}"
        );
        // A 401 without that line stays a failure.
        let e = marathon_unauthorized(unauthorized, true, false)
            .unwrap()
            .unwrap_err();
        assert!(format!("{e}").contains(SECRETS_GENERATED_LINE), "{e}");
        // So does one from a VM verify gave a seed (its secrets were not made there).
        assert!(marathon_unauthorized(unauthorized, false, true)
            .unwrap()
            .is_err());
        assert!(marathon_unauthorized("HTTP/1.0 401", false, false)
            .unwrap()
            .is_err());
    }

    #[test]
    fn the_secrets_line_is_found_in_a_serial_log() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("serial.log");
        assert!(!saw_secrets_generated(&log), "no log, no line");
        std::fs::write(&log, "[  9.1] cloud-init: ok\r\n[ 12.0] mesobake-configure[311]: mesobake: secrets generated: /etc/mesobake/secrets.env (root only; the console never shows them)\r\n").unwrap();
        assert!(saw_secrets_generated(&log));
        std::fs::write(&log, "mesobake: secrets generated: /tmp/elsewhere\n").unwrap();
        assert!(!saw_secrets_generated(&log));
    }

    #[test]
    fn zookeeper_credentials_are_never_shown_and_compare_without() {
        let c = |zk: &str| Configured {
            role: "master".into(),
            ip: "10.0.2.15".into(),
            zk: zk.into(),
        };
        assert!(first_boot(&c("zk://10.0.2.15:2181/mesos"), 40.0).ok);
        let leak = first_boot(&c("zk://mesobake:Abc123@10.0.2.15:2181/mesos"), 40.0);
        assert!(!leak.ok && !leak.detail.contains("Abc123"), "{leak:?}");
        let url = "zk://mesobake:Abc123@m1:2181,m2:2181/mesos";
        assert_eq!(zk_userinfo(url), Some("mesobake:Abc123"));
        assert_eq!(zk_without_credentials(url), "zk://m1:2181,m2:2181/mesos");
        assert_eq!(zk_userinfo("zk://m1:2181/mesos"), None);
        assert_eq!(
            zk_userinfo("zk://m1:2181/me@sos"),
            None,
            "an @ in the path is not"
        );
        assert_eq!(zk_userinfo("file:///etc/mesos/zk"), None);
        let flags = serde_json::json!({ "zk": url, "master": "zk://m1:2181,m2:2181/mesos" });
        let e = format!(
            "{:#}",
            expect_zk_flag(&flags, "zk", "zk://m1:2181,m2:2181/mesos").unwrap_err()
        );
        assert!(e.contains("anyone") && !e.contains("Abc123"), "{e}");
        assert!(expect_zk_flag(&flags, "master", "zk://m1:2181,m2:2181/mesos").is_ok());
        let flags = serde_json::json!({ "zk": "file:///etc/mesos/zk" });
        assert!(expect_zk_flag(&flags, "zk", url).is_ok());
    }

    #[test]
    fn basic_auth_is_base64_of_principal_and_secret() {
        // RFC 7617's example.
        let c = Credential {
            principal: "Aladdin".into(),
            secret: "open sesame".into(),
        };
        assert_eq!(
            auth_header(Some(&c)),
            "Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n"
        );
        assert_eq!(auth_header(None), "");
    }
}
