//! Reading a service's health through its forwarded port, one probe per kind in
//! [`crate::service::Probe`]. `verify` checks what a reading says against the node's
//! configuration; `lab status` shows it.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::verify::{four_letter, http_get, http_json, http_json_as, master_view};
use crate::seed::secrets::Credential;
use crate::service::Probe;

/// What one probe saw.
#[derive(Debug, Clone)]
pub struct Reading {
    /// One line for people (`leader`, `zk=... quorum=2 leading, 2 agent(s)`, ...).
    pub detail: String,
    /// The daemon's flags (Mesos masters and agents).
    pub flags: Option<Value>,
    /// What the daemon says of itself: ZooKeeper's `mode`; a master's `leading`, `leader`,
    /// `pid` and `agents`; Marathon's `master`; an agent's `id`, `hostname` and
    /// `master_hostname`; an exporter's `samples`.
    pub state: Value,
}

/// ZooKeeper's mode from `srvr`: standalone, leader or follower.
pub fn zk_mode(port: u16) -> Result<String> {
    let out = four_letter(port, "srvr")?;
    out.lines()
        .find_map(|l| l.strip_prefix("Mode: "))
        .map(|m| m.trim().to_string())
        .ok_or_else(|| anyhow::anyhow!("srvr reply has no Mode line"))
}

/// Reads one service through `port` on 127.0.0.1, without credentials.
pub fn read(probe: Probe, port: u16) -> Result<Reading> {
    read_as(probe, port, None)
}

/// Reads one service through `port` on 127.0.0.1; `auth` (the operator credential) logs
/// in where the service asks for it. Marathon's API wants HTTP basic auth on a cluster
/// with secrets; the Mesos probes read only read-only endpoints (`/flags`, `/state`),
/// which stay open, so they go without.
pub fn read_as(probe: Probe, port: u16, auth: Option<&Credential>) -> Result<Reading> {
    match probe {
        Probe::ZkSrvr => {
            let mode = zk_mode(port)?;
            Ok(Reading {
                detail: mode.clone(),
                flags: None,
                state: json!({ "mode": mode }),
            })
        }
        Probe::MesosMaster => {
            let v = master_view(port)?;
            let role = if v.leading {
                format!("leading, {} agent(s)", v.agents.len())
            } else {
                format!("following {}", v.leader)
            };
            let agents: Vec<Value> = v
                .agents
                .iter()
                .map(|a| {
                    json!({
                        "id": a["id"], "hostname": a["hostname"], "active": a["active"], "pid": a["pid"],
                    })
                })
                .collect();
            Ok(Reading {
                detail: format!(
                    "zk={} quorum={} {role}",
                    crate::nodeconf::zk_without_credentials(v.flags["zk"].as_str().unwrap_or("?")),
                    v.flags["quorum"].as_str().unwrap_or("?")
                ),
                state: json!({
                    "leading": v.leading, "leader": v.leader, "pid": v.pid, "agents": agents,
                }),
                flags: Some(without_credentials(v.flags)),
            })
        }
        Probe::Marathon => {
            let info = http_json_as(port, "/v2/info", auth)?;
            // Marathon shows its --master as given, credentials included.
            let master = crate::nodeconf::zk_without_credentials(
                info["marathon_config"]["master"].as_str().unwrap_or("?"),
            );
            Ok(Reading {
                detail: format!("master={master}"),
                flags: None,
                state: json!({ "master": master }),
            })
        }
        Probe::MesosAgent => {
            let st = http_json(port, "/state")?;
            let f = st["flags"].clone();
            let id = st["id"].as_str().unwrap_or("");
            let reg = if id.is_empty() {
                "not registered".to_string()
            } else {
                format!(
                    "registered with {}",
                    st["master_hostname"].as_str().unwrap_or("?")
                )
            };
            Ok(Reading {
                detail: format!(
                    "master={} {} {reg}",
                    crate::nodeconf::zk_without_credentials(f["master"].as_str().unwrap_or("?")),
                    st["hostname"].as_str().unwrap_or("?")
                ),
                flags: Some(without_credentials(f)),
                state: json!({
                    "id": st["id"], "hostname": st["hostname"], "master_hostname": st["master_hostname"],
                }),
            })
        }
        Probe::Metrics => {
            let (status, body) = http_get(port, "/metrics")?;
            if !status.contains(" 200") {
                bail!("GET /metrics: {status}");
            }
            // Prometheus text format: one sample per line that is not a comment.
            let samples = body
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .count();
            if samples == 0 {
                bail!("GET /metrics: no samples");
            }
            Ok(Reading {
                detail: format!("/metrics: {samples} samples"),
                flags: None,
                state: json!({
                    "samples": samples,
                    "build_info": body.lines().any(|l| l.starts_with("node_exporter_build_info")),
                }),
            })
        }
    }
}

/// Mesos's /flags show `--zk` and `--master` as given: where the init wrapper passes the
/// URL itself (Mesosphere's `ZK=$(cat /etc/mesos/zk)`), with ZooKeeper's credentials.
/// Readings are printed and written as JSON, so those never stay in them.
fn without_credentials(mut flags: Value) -> Value {
    for key in ["zk", "master"] {
        if let Some(url) = flags.get(key).and_then(Value::as_str) {
            let shown = crate::nodeconf::zk_without_credentials(url);
            flags[key] = Value::String(shown);
        }
    }
    flags
}
