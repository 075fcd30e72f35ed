//! How a failed command ends: its exit status and, under `--json`, the error object
//! (`{"error": {"message", "kind", "file"?, "line"?}}`), both read from what the error's
//! chain holds. The statuses are in [`crate::output::exit`].

use std::path::PathBuf;

use crate::output::exit;

/// What kind of failure an error is, for the exit status and the JSON error's `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The exit status.
    pub status: i32,
    /// `invalid-profile`, `invalid-cluster`, `checksum-mismatch`, `command-failed`,
    /// `runtime`, `interrupted`.
    pub kind: &'static str,
    /// The file the problem is in, when known.
    pub file: Option<PathBuf>,
    /// Its line (1-based), when known.
    pub line: Option<usize>,
}

/// Classifies an error by what its chain holds.
pub fn classify(e: &anyhow::Error) -> Classified {
    let mut c = Classified {
        status: exit::RUNTIME,
        kind: "runtime",
        file: None,
        line: None,
    };
    if e.chain().any(|c| c.is::<crate::run::Interrupted>()) {
        c.status = exit::INTERRUPTED;
        c.kind = "interrupted";
        return c;
    }
    for cause in e.chain() {
        if let Some(inv) = cause.downcast_ref::<crate::validate::Invalid>() {
            c.status = exit::CHECK_FAILED;
            c.kind = inv.kind.error_kind();
            if let Some(p) = inv.problems.first() {
                c.file.clone_from(&p.file);
                c.line = p.line;
            }
            return c;
        }
        if let Some(pe) = cause.downcast_ref::<crate::profile::ProfileError>() {
            c.status = exit::CHECK_FAILED;
            c.kind = "invalid-profile";
            c.file = Some(pe.path.clone());
            c.line = pe.line;
            return c;
        }
        if let Some(ce) = cause.downcast_ref::<crate::cluster::ClusterError>() {
            c.status = exit::CHECK_FAILED;
            c.kind = "invalid-cluster";
            c.file = Some(ce.path.clone());
            c.line = Some(ce.line);
            return c;
        }
        if cause.is::<crate::base::fetch::ChecksumMismatch>() {
            c.kind = "checksum-mismatch";
            return c;
        }
        if cause.is::<crate::run::CommandFailed>() {
            c.kind = "command-failed";
        }
    }
    c
}

/// The `--json` form of an error: `{"error": {"message", "kind", "file"?, "line"?}}`,
/// plus `problems` when validation found several.
pub fn error_json(e: &anyhow::Error) -> serde_json::Value {
    let c = classify(e);
    let mut err = serde_json::json!({
        "message": format!("{e:#}"),
        "kind": c.kind,
        "status": c.status,
    });
    if let Some(f) = &c.file {
        err["file"] = f.display().to_string().into();
    }
    if let Some(l) = c.line {
        err["line"] = l.into();
    }
    if let Some(inv) = e
        .chain()
        .find_map(|c| c.downcast_ref::<crate::validate::Invalid>())
    {
        err["problems"] = serde_json::to_value(&inv.problems).unwrap_or_default();
    }
    serde_json::json!({ "error": err })
}

/// The `--json` form of a usage error (clap's message without its styling).
pub fn usage_error_json(message: &str) -> serde_json::Value {
    serde_json::json!({"error": {
        "message": message.trim_end(),
        "kind": "usage",
        "status": exit::USAGE,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_their_chain() {
        let e = anyhow::Error::new(crate::run::Interrupted).context("building");
        assert_eq!(classify(&e).status, exit::INTERRUPTED);
        let e = anyhow::anyhow!("download failed");
        assert_eq!(classify(&e).status, exit::RUNTIME);
        let e = anyhow::Error::new(crate::profile::ProfileError {
            path: "p.toml".into(),
            line: Some(3),
            message: "bad".into(),
        });
        let c = classify(&e);
        assert_eq!(
            (c.status, c.kind, c.line),
            (exit::CHECK_FAILED, "invalid-profile", Some(3))
        );
        let j = error_json(&e);
        assert_eq!(j["error"]["file"], "p.toml");
        assert_eq!(j["error"]["line"], 3);
    }
}
