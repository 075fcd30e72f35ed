//! The user's base directories, as the XDG Base Directory specification defines them:
//! `$XDG_CACHE_HOME`, `$XDG_CONFIG_HOME` and `$XDG_RUNTIME_DIR`, with the spec's
//! defaults under `$HOME`. A variable that is unset, empty or relative counts as unset:
//! the spec calls a relative value invalid, and honouring one would make the cache or
//! the profiles depend on the directory mesobake happens to be started from.

use std::ffi::OsString;
use std::path::PathBuf;

/// Where user cache files go: `$XDG_CACHE_HOME`, else `$HOME/.cache`.
pub fn cache_home() -> Option<PathBuf> {
    cache_home_in(&env)
}

/// Where user configuration goes: `$XDG_CONFIG_HOME`, else `$HOME/.config`.
pub fn config_home() -> Option<PathBuf> {
    config_home_in(&env)
}

/// The user's home directory: `$HOME` when it is an absolute path.
pub fn home() -> Option<PathBuf> {
    absolute(env("HOME"))
}

/// Where per-login runtime files go: `$XDG_RUNTIME_DIR`; the spec gives it no default.
pub fn runtime_dir() -> Option<PathBuf> {
    absolute(env("XDG_RUNTIME_DIR"))
}

fn env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

fn cache_home_in(get: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    home_or_default(get, "XDG_CACHE_HOME", ".cache")
}

fn config_home_in(get: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    home_or_default(get, "XDG_CONFIG_HOME", ".config")
}

fn home_or_default(
    get: &dyn Fn(&str) -> Option<OsString>,
    var: &str,
    under_home: &str,
) -> Option<PathBuf> {
    absolute(get(var)).or_else(|| absolute(get("HOME")).map(|h| h.join(under_home)))
}

/// The value as a path if it is an absolute one (empty is not).
fn absolute(v: Option<OsString>) -> Option<PathBuf> {
    v.map(PathBuf::from).filter(|p| p.is_absolute())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn the_variable_wins_over_home() {
        let get = with(&[
            ("XDG_CACHE_HOME", "/c"),
            ("XDG_CONFIG_HOME", "/f"),
            ("HOME", "/h"),
        ]);
        assert_eq!(cache_home_in(&get), Some(PathBuf::from("/c")));
        assert_eq!(config_home_in(&get), Some(PathBuf::from("/f")));
    }

    #[test]
    fn unset_empty_or_relative_falls_back_to_home() {
        for v in [None, Some(""), Some("relative/cache"), Some("./c")] {
            let mut vars = vec![("HOME", "/home/u")];
            if let Some(v) = v {
                vars.push(("XDG_CACHE_HOME", v));
                vars.push(("XDG_CONFIG_HOME", v));
            }
            let get = with(&vars);
            assert_eq!(
                cache_home_in(&get),
                Some(PathBuf::from("/home/u/.cache")),
                "{v:?}"
            );
            assert_eq!(
                config_home_in(&get),
                Some(PathBuf::from("/home/u/.config")),
                "{v:?}"
            );
        }
    }

    #[test]
    fn no_usable_home_means_no_directory() {
        assert_eq!(cache_home_in(&with(&[])), None);
        assert_eq!(cache_home_in(&with(&[("HOME", "")])), None);
        assert_eq!(config_home_in(&with(&[("HOME", "home")])), None);
        assert_eq!(
            cache_home_in(&with(&[("HOME", "home"), ("XDG_CACHE_HOME", "/c")])),
            Some(PathBuf::from("/c"))
        );
    }
}
