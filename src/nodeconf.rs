//! The node-config contract: the one place that says which Mesos flags the first-boot
//! configurator owns, how Mesos matches flag names, what each package layout's init
//! wrapper already passes from `/etc/default`, the master quorum and how values are
//! quoted in the configurator's env files.
//!
//! Profile validation, `cluster.toml` validation and the configure stage all ask this
//! module. The POSIX-sh configurator that runs at first boot cannot link Rust, so it keeps
//! its own copy of these tables; a unit test below reads the script and proves the two
//! agree.
//!
//! Why it matters: real Mesos stops at start-up on a flag given twice (stout's
//! `FlagsBase::load` with `duplicates=false`, `3rdparty/stout/include/stout/flags/flags.hpp`)
//! and it lower-cases every name before matching, so `Quorum` and `quorum`, or `?switch_user`
//! and `?no-switch_user`, are the same flag.

use std::fmt;

/// Flags the configurator writes at first boot (or derives from `attributes/` and
/// `resources/`): a profile or a node must never set them again. The authentication flags
/// are written when the node's seed carries secrets (`/etc/mesobake/secrets.env`), and
/// owned always, with their deprecated names (`authenticate_slaves` and `authenticate`
/// are the same flags to Mesos 1.11 as `authenticate_agents` and
/// `authenticate_frameworks`, `src/master/flags.cpp`).
pub const OWNED_FLAGS: &[&str] = &[
    "ip",
    "hostname",
    "quorum",
    "zk",
    "master",
    "cluster",
    "attributes",
    "resources",
    "authenticate_agents",
    "authenticate_slaves",
    "authenticate_frameworks",
    "authenticate",
    "authenticate_http_readwrite",
    "credentials",
    "credential",
    "http_credentials",
];

/// The Mesos daemon a flag goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// `mesos-master`, flags in `/etc/mesos-master`.
    Master,
    /// `mesos-agent`/`mesos-slave`, flags in the layout's agent dir.
    Agent,
}

impl fmt::Display for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Daemon::Master => "master",
            Daemon::Agent => "agent",
        })
    }
}

/// The convenience variables the init wrapper turns into flags when `/etc/default/mesos*`
/// sets them, as (variable, flag). The same in Mesosphere's wrapper
/// (`mesosphere/mesos-deb-packaging:mesos-init-wrapper`), Apache's in-tree copy and AVENTER's
/// (`m3scluster/clusterd:support/packaging/common/mesos-init-wrapper.in`); only the
/// packages' shipped defaults files differ, so the configure stage reads the image's.
pub fn wrapper_vars(d: Daemon) -> &'static [(&'static str, &'static str)] {
    match d {
        Daemon::Master => &[
            ("ZK", "zk"),
            ("IP", "ip"),
            ("PORT", "port"),
            ("CLUSTER", "cluster"),
            ("LOGS", "log_dir"),
        ],
        Daemon::Agent => &[
            ("MASTER", "master"),
            ("IP", "ip"),
            ("LOGS", "log_dir"),
            ("ISOLATION", "isolation"),
        ],
    }
}

/// The `/etc/default` files the wrapper sources for a daemon, given the layout's agent
/// defaults file (`/etc/default/mesos-slave` or `/etc/default/mesos-agent`).
pub fn defaults_files(d: Daemon, agent_defaults: Option<&str>) -> Vec<String> {
    let mut v = vec!["/etc/default/mesos".to_string()];
    match d {
        Daemon::Master => v.push("/etc/default/mesos-master".into()),
        Daemon::Agent => v.extend(agent_defaults.map(String::from)),
    }
    v
}

/// A flag file's name as Mesos sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagName {
    /// The name stout matches: lower-cased, without `?` and `no-`.
    pub canonical: String,
    /// `?name`: the wrapper passes `--name` with no value.
    pub bare: bool,
    /// `no-name`: a boolean set to false.
    pub negated: bool,
}

/// Parses a flag file name (`quorum`, `?switch_user`, `?no-switch_user`, `Work_Dir`) the
/// way the wrapper and stout treat it. Fails on names the wrapper or Mesos cannot take.
pub fn flag_name(file: &str) -> Result<FlagName, String> {
    let (bare, rest) = match file.strip_prefix('?') {
        Some(r) => (true, r),
        None => (false, file),
    };
    // stout lower-cases before it matches (flags.hpp, `name = strings::lower(name)`).
    let lower = rest.to_ascii_lowercase();
    let (negated, canonical) = match lower.strip_prefix("no-") {
        Some(r) => (true, r.to_string()),
        None => (false, lower),
    };
    if canonical.is_empty()
        || canonical.starts_with('-')
        || !canonical
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "{file:?} is not a Mesos flag name (letters, digits, '_' and '-'; '?name' for a bare flag)"
        ));
    }
    Ok(FlagName {
        canonical,
        bare,
        negated,
    })
}

/// Why a flag may not be set where someone tried to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// The configurator writes it per node.
    Owned(String),
    /// Two names in one set are the same flag to Mesos.
    Twice(String, String),
    /// The wrapper already passes it from an `/etc/default` variable.
    Wrapper {
        /// The flag.
        flag: String,
        /// The variable.
        var: String,
        /// The file that sets it.
        file: String,
    },
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::Owned(n) => write!(
                f,
                "{n:?} is written by the first-boot configurator (or comes from attributes/resources); setting it again would give Mesos the flag twice, and Mesos stops on that"
            ),
            Conflict::Twice(a, b) => write!(
                f,
                "{a:?} and {b:?} are the same flag to Mesos (it lower-cases names and reads ?no-x as x); keep one"
            ),
            Conflict::Wrapper { flag, var, file } => write!(
                f,
                "{flag:?} is already passed by the init wrapper from {var}= in {file}; a second --{flag} stops Mesos. Set {var} there or drop the flag"
            ),
        }
    }
}

/// Checks a set of flag file names (a profile table, a node's extras): each must parse,
/// none may be owned by the configurator, and no two may be the same flag.
pub fn check_flags<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), Conflict> {
    let mut seen: Vec<(String, &str)> = Vec::new();
    for n in names {
        let Ok(f) = flag_name(n) else { continue };
        if OWNED_FLAGS.contains(&f.canonical.as_str()) {
            return Err(Conflict::Owned(n.to_string()));
        }
        if let Some((_, first)) = seen.iter().find(|(c, _)| *c == f.canonical) {
            return Err(Conflict::Twice(first.to_string(), n.to_string()));
        }
        seen.push((f.canonical, n));
    }
    Ok(())
}

/// The variables a shell `/etc/default` file assigns a non-empty value, the way the
/// configurator's `defaults_set` reads them (`VAR=value`, `export VAR=value`).
pub fn assigned_vars(text: &str) -> Vec<String> {
    let mut v = Vec::new();
    for line in text.lines() {
        let l = line.trim_start();
        let l = l.strip_prefix("export ").map(str::trim_start).unwrap_or(l);
        let Some((k, val)) = l.split_once('=') else {
            continue;
        };
        let named = !k.is_empty()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !k.as_bytes()[0].is_ascii_digit();
        let empty = val.is_empty()
            || val.starts_with(char::is_whitespace)
            || val.starts_with('#')
            || val.starts_with("\"\"")
            || val.starts_with("''");
        if named && !empty {
            v.push(k.to_string());
        }
    }
    v
}

/// Fails when the wrapper already passes `flag` from one of the defaults files, given as
/// (guest path, contents).
pub fn check_against_wrapper(
    d: Daemon,
    flag: &str,
    defaults: &[(String, String)],
) -> Result<(), Conflict> {
    let Ok(f) = flag_name(flag) else {
        return Ok(());
    };
    for (var, wflag) in wrapper_vars(d) {
        if *wflag != f.canonical {
            continue;
        }
        for (file, text) in defaults {
            if assigned_vars(text).iter().any(|v| v == var) {
                return Err(Conflict::Wrapper {
                    flag: flag.to_string(),
                    var: var.to_string(),
                    file: file.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The master quorum for an ensemble of `masters`: a majority.
pub fn quorum(masters: usize) -> usize {
    masters / 2 + 1
}

/// Quotes a value for a `KEY=value` line that the configurator parses (and never
/// evaluates): single quotes, with `'` written as `'\''`.
pub fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// The `user:password` of a `zk://user:password@hosts/path` URL, if it has one.
pub fn zk_userinfo(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("zk://")?;
    let authority = rest.split('/').next().unwrap_or("");
    authority.rsplit_once('@').map(|(u, _)| u)
}

/// A `zk://` URL without the `user:password@` Mesos and Marathon take: what may be shown
/// (status tables, verify reports) and compared with the configurator's status line,
/// which never carries credentials. Anything else is returned as it is.
pub fn zk_without_credentials(url: &str) -> String {
    match zk_userinfo(url) {
        Some(u) => url.replacen(&format!("{u}@"), "", 1),
        None => url.to_string(),
    }
}

/// The agent flag that keeps Mesos from needing the cgroup v1 systemd hierarchy.
pub const SYSTEMD_SUPPORT_FLAG: &str = "systemd_enable_support";

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = include_str!("stage/firstboot/mesobake-configure");

    #[test]
    fn zk_urls_are_shown_without_credentials() {
        assert_eq!(
            zk_without_credentials("zk://mesobake:S3cret@m1:2181,m2:2181/mesos"),
            "zk://m1:2181,m2:2181/mesos"
        );
        for same in ["zk://m1:2181/mesos", "file:///etc/mesos/zk", "?"] {
            assert_eq!(zk_without_credentials(same), same);
        }
    }

    /// The value of `NAME='…'` in the configurator script.
    fn script_list(name: &str) -> Vec<String> {
        let line = SCRIPT
            .lines()
            .find(|l| l.starts_with(&format!("{name}='")))
            .unwrap_or_else(|| panic!("{name} not in the configurator"));
        let v = line.split('\'').nth(1).unwrap();
        v.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn configurator_owns_the_same_flags() {
        let rust: Vec<String> = OWNED_FLAGS.iter().map(|s| s.to_string()).collect();
        assert_eq!(script_list("OWNED_FLAGS"), rust);
    }

    #[test]
    fn configurator_knows_the_same_wrapper_variables() {
        for (d, name) in [
            (Daemon::Master, "MASTER_WRAPPER_VARS"),
            (Daemon::Agent, "AGENT_WRAPPER_VARS"),
        ] {
            let rust: Vec<String> = wrapper_vars(d)
                .iter()
                .map(|(v, f)| format!("{v}={f}"))
                .collect();
            assert_eq!(script_list(name), rust, "{d}");
        }
    }

    #[test]
    fn configurator_computes_the_same_quorum() {
        assert!(
            SCRIPT.contains("QUORUM=$((SERVER_COUNT / 2 + 1))"),
            "the configurator's quorum formula changed; update nodeconf::quorum and this test"
        );
        for (n, q) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)] {
            assert_eq!(quorum(n), q);
        }
    }

    #[test]
    fn names_compare_like_stout() {
        let q = flag_name("Quorum").unwrap();
        assert_eq!(q.canonical, "quorum");
        let s = flag_name("?no-Switch_User").unwrap();
        assert_eq!(
            (s.canonical.as_str(), s.bare, s.negated),
            ("switch_user", true, true)
        );
        assert!(flag_name(".mesobake.AbC").is_err());
        assert!(flag_name("quorum~").is_err());
        assert!(flag_name("?").is_err());
    }

    #[test]
    fn owned_and_duplicate_flags_are_refused_in_any_case() {
        assert_eq!(check_flags(["IP"]), Err(Conflict::Owned("IP".into())));
        assert_eq!(
            check_flags(["?no-Hostname"]),
            Err(Conflict::Owned("?no-Hostname".into()))
        );
        assert_eq!(
            check_flags(["Work_Dir", "work_dir"]),
            Err(Conflict::Twice("Work_Dir".into(), "work_dir".into()))
        );
        assert_eq!(
            check_flags(["?switch_user", "?no-switch_user"]),
            Err(Conflict::Twice(
                "?switch_user".into(),
                "?no-switch_user".into()
            ))
        );
        assert!(check_flags(["work_dir", "containerizers", "?no-switch_user"]).is_ok());
    }

    #[test]
    fn wrapper_passed_flags_are_refused() {
        // Mesosphere's /etc/default/mesos and mesos-master (mesos-deb-packaging).
        let defaults = vec![
            (
                "/etc/default/mesos".to_string(),
                "LOGS=/var/log/mesos\nULIMIT=\"-n 8192\"\n".to_string(),
            ),
            (
                "/etc/default/mesos-master".to_string(),
                "PORT=5050\nZK=`cat /etc/mesos/zk`\n".to_string(),
            ),
        ];
        let e = check_against_wrapper(Daemon::Master, "Port", &defaults).unwrap_err();
        assert!(
            e.to_string().contains("PORT= in /etc/default/mesos-master"),
            "{e}"
        );
        let e = check_against_wrapper(Daemon::Master, "log_dir", &defaults).unwrap_err();
        assert!(e.to_string().contains("LOGS= in /etc/default/mesos"), "{e}");
        assert!(check_against_wrapper(Daemon::Master, "work_dir", &defaults).is_ok());
        // AVENTER ships no defaults files: nothing is passed.
        assert!(check_against_wrapper(Daemon::Master, "port", &[]).is_ok());
        // A commented or empty assignment passes nothing.
        let off = vec![("/etc/default/mesos".into(), "#LOGS=/x\nLOGS=\n".into())];
        assert!(check_against_wrapper(Daemon::Agent, "log_dir", &off).is_ok());
    }

    #[test]
    fn quoting_round_trips_through_sh() {
        let v = "it's a \"test\" $HOME `x`";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("V={}; printf %s \"$V\"", sh_quote(v)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), v);
    }
}
