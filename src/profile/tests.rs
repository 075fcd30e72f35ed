use super::*;
use std::fs;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, text).unwrap();
    p
}

const COMMON: &str = r#"
[base]
name = "debian-12"
[packages]
install = ["mesos", "zookeeperd"]
debs = ["debs"]
"#;

#[test]
fn include_merges_and_paths_are_relative_to_their_file() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "inc/common.toml", COMMON);
    let p = write(
        d.path(),
        "p.toml",
        "include = [\"inc/common.toml\"]\n[role]\nservices = [\"agent\"]\n",
    );
    let prof = load(&p, &[]).unwrap();
    assert_eq!(prof.base, "debian-12");
    assert_eq!(prof.services, vec![Service::Agent]);
    assert_eq!(
        prof.debs,
        vec![d.path().canonicalize().unwrap().join("inc/debs")]
    );
    assert_eq!(prof.sources.len(), 2);
}

#[test]
fn later_files_win_and_with_files_layer_last() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "common.toml", COMMON);
    let p = write(d.path(), "p.toml", "include = [\"common.toml\"]\n[role]\nservices = [\"agent\"]\n[base]\nname = \"ubuntu-22.04\"\n");
    assert_eq!(load(&p, &[]).unwrap().base, "ubuntu-22.04");
    let w = write(d.path(), "w.toml", "[packages]\ninstall = [\"other\"]\n");
    let prof = load(&p, &[w]).unwrap();
    assert_eq!(prof.packages, vec!["other"]);
    // Tables merge key by key: the debs from the include survive.
    assert_eq!(prof.debs.len(), 1);
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "bad.toml",
        "description = \"x\"\n[role]\nservices = [\"agent\"]\nservise = 1\n",
    );
    let msg = format!("{:#}", load(&p, &[]).unwrap_err());
    assert!(msg.contains("bad.toml"), "{msg}");
    assert!(msg.contains("line 4"), "{msg}");
    assert!(msg.contains("servise"), "{msg}");
}

#[test]
fn unknown_key_in_an_include_names_the_include() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "inc.toml", "[packages]\ninstal = [\"x\"]\n");
    let p = write(d.path(), "p.toml", "include = [\"inc.toml\"]\n");
    let msg = format!("{:#}", load(&p, &[]).unwrap_err());
    assert!(
        msg.contains("inc.toml") && msg.contains("line 2") && msg.contains("instal"),
        "{msg}"
    );
}

#[test]
fn malformed_toml_and_wrong_types_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "p.toml", "[role\n");
    assert!(format!("{:#}", load(&p, &[]).unwrap_err()).contains("line 1"));
    let p = write(
        d.path(),
        "q.toml",
        "[role]\nservices = [\"agent\", \"dancer\"]\n",
    );
    let msg = format!("{:#}", load(&p, &[]).unwrap_err());
    assert!(msg.contains("q.toml") && msg.contains("dancer"), "{msg}");
}

#[test]
fn include_cycle_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.toml", "include = [\"b.toml\"]\n");
    let b = write(d.path(), "b.toml", "include = [\"a.toml\"]\n");
    assert!(format!("{:#}", load(&b, &[]).unwrap_err()).contains("include cycle"));
}

#[test]
fn semantic_errors_name_the_key() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "common.toml", COMMON);
    let cases = [
        ("[role]\nservices = [\"master\"]\n", "without zookeeper"),
        ("[role]\nservices = []\n", "services is empty"),
        (
            "[role]\nservices = [\"agent\"]\n[mesos.agent-flags]\nip = \"1.2.3.4\"\n",
            "set per node",
        ),
        (
            "[role]\nservices = [\"agent\"]\n[base]\ndisk-size = \"lots\"\n",
            "disk-size",
        ),
        ("[role]\nservices = [\"agent\", \"agent\"]\n", "twice"),
        // Mesos lower-cases flag names: these are the configurator's ip, and one flag twice.
        (
            "[role]\nservices = [\"agent\"]\n[mesos.agent-flags]\nIP = \"1.2.3.4\"\n",
            "set per node",
        ),
        (
            "[role]\nservices = [\"master\", \"zookeeper\"]\n[mesos.master-flags]\nWork_Dir = \"/a\"\nwork_dir = \"/b\"\n",
            "\"Work_Dir\" and \"work_dir\" are the same flag",
        ),
        (
            "[role]\nservices = [\"agent\"]\n[mesos.agent-flags]\n\"?no-switch_user\" = \"\"\n\"?switch_user\" = \"\"\n",
            "same flag",
        ),
        (
            "[role]\nservices = [\"agent\"]\n[mesos.agent-flags]\n\"quorum~\" = \"2\"\n",
            "not a Mesos flag name",
        ),
    ];
    for (body, want) in cases {
        let p = write(
            d.path(),
            "p.toml",
            &format!("include = [\"common.toml\"]\n{body}"),
        );
        let msg = format!("{:#}", load(&p, &[]).unwrap_err());
        assert!(msg.contains(want), "{body}: {msg}");
    }
}

#[test]
fn shipped_profiles_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let all = list(&dir).unwrap();
    let names: Vec<_> = all.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["master", "master-slave", "slave-only"]);
    let so = load(&dir.join("slave-only.toml"), &[]).unwrap();
    assert_eq!(so.services, vec![Service::Agent]);
    assert_eq!(so.agent_flags["containerizers"], "docker,mesos");
    let off = load(
        &dir.join("master-slave.toml"),
        &[dir.join("include/offline-standins.toml")],
    )
    .unwrap();
    assert_eq!(off.base, "debian-12");
    assert!(off.apt_sources.is_empty());
    assert!(off.packages.contains(&"aventer-mesos".to_string()));
    // master+slave runs Docker tasks like node 1 of the hand-built procedure.
    assert_eq!(off.agent_flags["containerizers"], "docker,mesos");
    assert_eq!(off.cgroup, None);
    let meso = load(
        &dir.join("master-slave.toml"),
        &[
            dir.join("include/offline-standins.toml"),
            dir.join("include/offline-standins-mesosphere.toml"),
        ],
    )
    .unwrap();
    assert!(meso.packages.contains(&"mesos".to_string()));
    assert_eq!(meso.cgroup, Some(CgroupMode::V1));
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("6G").unwrap(), 6 << 30);
    assert_eq!(parse_size("512M").unwrap(), 512 << 20);
    assert!(parse_size("6X").is_err());
}

#[test]
fn only_regular_profile_files_of_bounded_size_are_read() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "inc/common.toml", COMMON);
    let mut big = String::from("[role]\nservices = [\"agent\"]\n");
    while big.len() <= MAX_CONFIG_BYTES as usize {
        big += "# a comment that pads the file past the limit, line after line...\n";
    }
    let p = write(
        d.path(),
        "big.toml",
        &format!("include = [\"inc/common.toml\"]\n{big}"),
    );
    let e = format!("{:#}", load(&p, &[]).unwrap_err());
    assert!(e.contains("big.toml") && e.contains("larger than"), "{e}");
    // An include of a device or a FIFO is refused before anything reads it.
    let fifo = d.path().join("fifo.toml");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for inc in ["/dev/zero", fifo.to_str().unwrap()] {
        let p = write(
            d.path(),
            "p.toml",
            &format!("include = [\"inc/common.toml\", {inc:?}]\n[role]\nservices = [\"agent\"]\n"),
        );
        let e = format!("{:#}", load(&p, &[]).unwrap_err());
        assert!(e.contains("not a regular file") && e.contains(inc), "{e}");
    }
    let e = format!(
        "{:#}",
        load(&fifo, &[PathBuf::from("/dev/zero")]).unwrap_err()
    );
    assert!(e.contains("not a regular file"), "{e}");
}
