//! Output formats without root: conversions of a small disk made here with qemu-img, the
//! OVA (re-checked with `tar -tf` and `sha256sum`/`sha1sum`, not only with our own
//! reader), the EC2 kit, signing, and `mesobake check` on scratch directories.

use std::path::{Path, PathBuf};
use std::process::Command;

use mesobake::export::ova::{self, Appliance, GuestOs, MfDigest};
use mesobake::export::{self, ec2, pin, Format};
use mesobake::progress::PercentBar;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 64 MiB raw disk with a few MiB of fixed, non-zero data at scattered offsets, and
/// the same disk as compressed qcow2 (what `mesobake build` publishes).
fn small_disk(dir: &Path) -> (PathBuf, PathBuf) {
    let raw = dir.join("disk.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(SIZE).unwrap();
    use std::io::{Seek, SeekFrom, Write};
    let mut f = f;
    let mut x: u32 = 12345;
    for off in [0u64, 5, 17, 40, 63] {
        f.seek(SeekFrom::Start(off * MIB)).unwrap();
        let block: Vec<u8> = (0..MIB)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        f.write_all(&block).unwrap();
    }
    drop(f);
    let qcow2 = dir.join("disk.qcow2");
    sh(Command::new("qemu-img")
        .args(["convert", "-c", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    (raw, qcow2)
}

fn seed_iso(dir: &Path) -> PathBuf {
    let mut s = mesobake::seed::NodeSeed {
        instance_id: "node-1".into(),
        hostname: "node-1".into(),
        ..Default::default()
    };
    s.node_env.insert("MESOBAKE_ZK_ID".into(), "1".into());
    let iso = dir.join("node-1-seed.iso");
    s.write_iso(&iso).unwrap();
    iso
}

fn on_path(t: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
        .unwrap_or(false)
}

fn app(name: &str) -> Appliance {
    Appliance {
        name: name.into(),
        os: GuestOs::Debian64,
        cpus: 2,
        memory_mb: 2048,
        disk_capacity: 0,
    }
}

fn qemu_info(p: &Path) -> serde_json::Value {
    qemu_info_as(p, None)
}

fn qemu_info_as(p: &Path, format: Option<&str>) -> serde_json::Value {
    let mut c = Command::new("qemu-img");
    c.args(["info", "--output=json"]);
    if let Some(f) = format {
        c.args(["-f", f]);
    }
    serde_json::from_str(&sh(c.arg(p))).unwrap()
}

/// Converts like `mesobake build` does: the streamOptimized VMDK (OVA, EC2) with its own
/// writer, any other format with qemu-img convert; then pin the headers.
fn convert(raw: &Path, dir: &Path, f: Format) -> PathBuf {
    let dest = dir.join(format!("img.{}", f.ext()));
    if matches!(f, Format::Ova | Format::Ec2) {
        let cid = pin::derive_cid("test-seed");
        export::stream::from_image(raw, cid, &dir.join(".scratch"), &dest).unwrap();
        pin::pin(f.qemu_name(), &dest, "test-seed", 1_700_000_000).unwrap();
        return dest;
    }
    export::convert(
        raw,
        &dest,
        f.qemu_name(),
        f.qemu_options(),
        &PercentBar::hidden(),
    )
    .unwrap();
    pin::pin(f.qemu_name(), &dest, "test-seed", 1_700_000_000).unwrap();
    dest
}

#[test]
fn every_disk_format_converts_checks_and_reproduces() {
    let t = tempfile::tempdir().unwrap();
    let (raw, _) = small_disk(t.path());
    for f in [
        Format::Qcow2,
        Format::Raw,
        Format::Vmdk,
        Format::Vdi,
        Format::Vhdx,
        Format::Vhd,
        Format::VhdFixed,
        Format::Ec2,
    ] {
        let a = t.path().join("a");
        let b = t.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let pa = convert(&raw, &a, f);
        let pb = convert(&raw, &b, f);
        // qemu-img cannot probe a fixed VHD (its footer is at the end); say the format.
        let info = qemu_info_as(&pa, (f == Format::VhdFixed).then_some("vpc"));
        assert_eq!(info["format"], f.qemu_name(), "{f:?}");
        assert_eq!(info["virtual-size"].as_u64().unwrap(), SIZE, "{f:?}");
        if matches!(f.qemu_name(), "qcow2" | "vmdk" | "vdi" | "vhdx") {
            sh(Command::new("qemu-img")
                .args(["check", "-f", f.qemu_name()])
                .arg(&pa));
        }
        // The pinned headers still open cleanly (a wrong VHD checksum only warns).
        let o = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", f.qemu_name()])
            .arg(&raw)
            .arg(&pa)
            .output()
            .unwrap();
        assert!(o.status.success(), "{f:?}: {o:?}");
        assert!(
            !String::from_utf8_lossy(&o.stderr).contains("checksum"),
            "{f:?}: {o:?}"
        );
        let same = std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap();
        // VHDX keeps qemu-img's random GUIDs (see the README's reproducibility table).
        assert_eq!(same, f != Format::Vhdx, "{f:?} bit-identical");
    }
    let ec2 = qemu_info(&t.path().join("a/img.ec2.vmdk"));
    assert_eq!(
        ec2["format-specific"]["data"]["create-type"],
        "streamOptimized"
    );
    let vhd = std::fs::read(t.path().join("a/img.fixed.vhd")).unwrap();
    assert_eq!(vhd.len() as u64, SIZE + 512, "fixed VHD: data plus footer");
}

fn tar_list(ova: &Path) -> Vec<String> {
    sh(Command::new("tar").arg("-tf").arg(ova))
        .lines()
        .map(String::from)
        .collect()
}

/// Unpacks with GNU tar and checks each .mf line with sha256sum/sha1sum.
fn check_mf_independently(ova: &Path, name: &str, tool: &str, label: &str) -> PathBuf {
    let x = ova.with_extension("x");
    std::fs::create_dir_all(&x).unwrap();
    sh(Command::new("tar").arg("-xf").arg(ova).arg("-C").arg(&x));
    let mf = std::fs::read_to_string(x.join(format!("{name}.mf"))).unwrap();
    let members: Vec<String> = tar_list(ova)
        .into_iter()
        .filter(|m| !m.ends_with(".mf"))
        .collect();
    assert_eq!(mf.lines().count(), members.len(), "{mf}");
    for m in &members {
        let sum = sh(Command::new(tool).arg(m).current_dir(&x));
        let hex = sum.split_whitespace().next().unwrap();
        let line = format!("{label}({m})= {hex}");
        assert!(mf.lines().any(|l| l == line), "{line:?} not in:\n{mf}");
    }
    x
}

#[test]
fn ova_with_seed_cdrom_is_ordered_hashed_and_described() {
    let t = tempfile::tempdir().unwrap();
    let (_, qcow2) = small_disk(t.path());
    let iso = seed_iso(t.path());
    let dest = t.path().join("node-1.ova");
    ova::ova_from_disk(
        &qcow2,
        app("node-1"),
        Some(&iso),
        MfDigest::Sha256,
        "seed",
        &dest,
        &PercentBar::hidden(),
    )
    .unwrap();
    assert_eq!(
        tar_list(&dest),
        [
            "node-1.ovf",
            "node-1-disk1.vmdk",
            "node-1-seed.iso",
            "node-1.mf"
        ]
    );
    let x = check_mf_independently(&dest, "node-1", "sha256sum", "SHA256");

    // The descriptor, read as text and through the parser.
    let xml = std::fs::read_to_string(x.join("node-1.ovf")).unwrap();
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
    assert!(xml.contains("<VirtualSystem ovf:id=\"node-1\">"));
    assert!(xml.contains("<OperatingSystemSection ovf:id=\"96\">"));
    assert!(xml.contains("Debian_64"));
    assert!(!xml.contains("Eula"));
    let o = ova::parse_ovf(&xml).unwrap();
    assert_eq!(o.items_of(3)[0]["VirtualQuantity"], "2");
    assert_eq!(o.items_of(4)[0]["VirtualQuantity"], "2048");
    assert_eq!(o.items_of(4)[0]["AllocationUnits"], "byte * 2^20");
    assert_eq!(o.items_of(10).len(), 1, "one NIC");
    assert_eq!(o.items_of(5).len(), 2, "two IDE controllers");
    assert_eq!(o.disks[0].2, SIZE, "disk capacity");
    assert_eq!(o.disks[0].3, ova::VMDK_STREAM_URI);
    let cd = o.items_of(15);
    assert_eq!(cd.len(), 1, "one CD-ROM");
    assert_eq!(cd[0]["HostResource"], "/disk/vmdisk2");
    assert_eq!(o.disks[1].3, ova::ISO_URI);
    let iso_size = std::fs::metadata(&iso).unwrap().len();
    assert_eq!(
        o.files[1],
        ("file2".into(), "node-1-seed.iso".into(), Some(iso_size))
    );
    assert_eq!(
        std::fs::read(x.join("node-1-seed.iso")).unwrap(),
        std::fs::read(&iso).unwrap()
    );

    // The VMDK inside is a sound streamOptimized disk with the original content.
    let vmdk = x.join("node-1-disk1.vmdk");
    sh(Command::new("qemu-img").args(["check"]).arg(&vmdk));
    let info = qemu_info(&vmdk);
    assert_eq!(
        info["format-specific"]["data"]["create-type"],
        "streamOptimized"
    );
    sh(Command::new("qemu-img")
        .args(["compare"])
        .arg(&qcow2)
        .arg(&vmdk));

    // An independent OVF consumer, when the host has one: Debian's virt-v2v parses the
    // descriptor (--print-source stops before it would boot its appliance).
    if on_path("virt-v2v") {
        let o = Command::new("virt-v2v")
            .env("LIBGUESTFS_BACKEND", "direct")
            .args(["-i", "ova"])
            .arg(&dest)
            .arg("--print-source")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        for want in [
            "source name: node-1",
            "memory: 2147483648 (bytes)",
            "nr vCPUs: 2",
            "firmware: bios",
            "[virtio-net]",
        ] {
            assert!(
                text.contains(want),
                "virt-v2v --print-source lacks {want:?}:\n{text}"
            );
        }
        let media = text.split("removable media:").nth(1).unwrap_or("");
        assert!(media.contains("CD-ROM"), "the seed CD-ROM:\n{text}");
    } else {
        eprintln!("no virt-v2v on this host: skipping the independent OVF parse");
    }

    // Our reader agrees, and the same inputs give the same bytes.
    let c = ova::check(&dest).unwrap();
    assert_eq!(c.digest, MfDigest::Sha256);
    let again = t.path().join("again.ova");
    ova::ova_from_disk(
        &qcow2,
        app("node-1"),
        Some(&iso),
        MfDigest::Sha256,
        "seed",
        &again,
        &PercentBar::hidden(),
    )
    .unwrap();
    assert!(
        std::fs::read(&dest).unwrap() == std::fs::read(&again).unwrap(),
        "the OVA is reproducible"
    );
}

#[test]
fn ova_sha1_manifest_for_old_hosts() {
    let t = tempfile::tempdir().unwrap();
    let (raw, _) = small_disk(t.path());
    let dest = t.path().join("old.ova");
    ova::ova_from_disk(
        &raw,
        app("old"),
        None,
        MfDigest::Sha1,
        "seed",
        &dest,
        &PercentBar::hidden(),
    )
    .unwrap();
    assert_eq!(tar_list(&dest), ["old.ovf", "old-disk1.vmdk", "old.mf"]);
    check_mf_independently(&dest, "old", "sha1sum", "SHA1");
    assert_eq!(ova::check(&dest).unwrap().digest, MfDigest::Sha1);
}

fn mesobake(args: &[&str]) -> std::process::Output {
    Command::new(assert_cmd::cargo::cargo_bin("mesobake"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

fn write_sums(dir: &Path) {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !n.starts_with("SHA256SUMS"))
        .collect();
    files.sort();
    let mut s = String::new();
    for f in files {
        s += &format!(
            "{}  {f}\n",
            mesobake::base::cache::sha256_file(&dir.join(&f)).unwrap()
        );
    }
    std::fs::write(dir.join("SHA256SUMS"), s).unwrap();
}

#[test]
fn check_passes_a_good_directory_and_names_each_fault() {
    let t = tempfile::tempdir().unwrap();
    let (raw, _) = small_disk(t.path());
    let out = t.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    for f in [Format::Qcow2, Format::Vdi, Format::Vhd, Format::Ec2] {
        let p = convert(&raw, &out, f);
        std::fs::rename(&p, out.join(format!("node.{}", f.ext()))).unwrap();
    }
    ova::ova_from_disk(
        &raw,
        app("node"),
        None,
        MfDigest::Sha256,
        "s",
        &out.join("node.ova"),
        &PercentBar::hidden(),
    )
    .unwrap();
    write_sums(&out);
    let dir = out.to_string_lossy().into_owned();
    let o = mesobake(&["check", &dir]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("check: PASS"));
    assert!(text.contains("node.ova:node-disk1.vmdk"), "{text}");
    assert!(
        text.contains("order node.ovf, node-disk1.vmdk, node.mf"),
        "{text}"
    );

    // A manifest that disagrees on the virtual size is caught by qemu-img info.
    let outputs: Vec<serde_json::Value> = ["node.qcow2", "node.ova"]
        .iter()
        .map(|f| {
            let p = out.join(f);
            serde_json::json!({
                "file": f,
                "format": if f.ends_with(".ova") { "ova" } else { "qcow2" },
                "kind": if f.ends_with(".ova") { "appliance" } else { "disk" },
                "virtual_size": SIZE * 2,
                "size": std::fs::metadata(&p).unwrap().len(),
                "sha256": mesobake::base::cache::sha256_file(&p).unwrap(),
            })
        })
        .collect();
    let m = serde_json::json!({"mesobake": "0", "images": {"node": {
        "profile": {"name": "node", "services": [], "sha256": "", "files": []},
        "base": {"spec": "", "sha256": "", "family": null, "codename": null},
        "layout": null, "packages": [], "local_debs": {}, "outputs": outputs}}});
    std::fs::write(out.join("manifest.json"), m.to_string()).unwrap();
    write_sums(&out);
    let o = mesobake(&["--json", "check", &dir]);
    assert!(!o.status.success());
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let failed: Vec<String> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["ok"] == false)
        .map(|i| format!("{} {} {}", i["file"], i["check"], i["detail"]))
        .collect();
    assert_eq!(failed.len(), 3, "{failed:#?}");
    assert!(
        failed.iter().all(|f| f.contains("134217728")),
        "{failed:#?}"
    );
    std::fs::remove_file(out.join("manifest.json")).unwrap();

    // A flipped byte in the OVA's VMDK: the SHA256SUMS digest and the .mf both catch it.
    let ova_path = out.join("node.ova");
    let mut bytes = std::fs::read(&ova_path).unwrap();
    let e = ova::list(&ova_path).unwrap();
    let at = (e[1].offset + e[1].size / 2) as usize;
    bytes[at] ^= 0xff;
    std::fs::write(&ova_path, bytes).unwrap();
    std::fs::write(out.join("stray.txt"), "x").unwrap();
    write_sums(&out);
    std::fs::remove_file(out.join("stray.txt")).unwrap();
    std::fs::write(out.join("unlisted.bin"), "y").unwrap();
    let o = mesobake(&["check", &dir]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("check: FAIL"));
    assert!(
        text.contains("node-disk1.vmdk: SHA256 is"),
        "the .mf catches the flipped byte: {text}"
    );
    assert!(text.contains("stray.txt"), "{text}");
    assert!(text.contains("unlisted.bin") && text.contains("not in SHA256SUMS"));
}

#[test]
fn signature_is_written_and_verified() {
    if Command::new("gpg").arg("--version").output().is_err() {
        eprintln!("skipped: no gpg");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("gnupg");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    sh(Command::new("gpg").env("GNUPGHOME", &home).args([
        "--batch",
        "--passphrase",
        "",
        "--quick-gen-key",
        "mesobake test <test@mesobake.invalid>",
        "ed25519",
        "sign",
        "never",
    ]));
    let out = t.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("a.txt"), "hello\n").unwrap();
    write_sums(&out);
    let o = Command::new(assert_cmd::cargo::cargo_bin("mesobake"))
        .env("GNUPGHOME", &home)
        .arg("check")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    // What `build --sign` calls. No other test in this binary runs gpg, so pointing this
    // process's GNUPGHOME at the scratch keyring is safe.
    std::env::set_var("GNUPGHOME", &home);
    export::sign(&out.join("SHA256SUMS"), "test@mesobake.invalid").unwrap();
    assert!(std::fs::read_to_string(out.join("SHA256SUMS.asc"))
        .unwrap()
        .starts_with("-----BEGIN PGP SIGNATURE-----"));
    let check = |expect: bool| {
        let o = Command::new(assert_cmd::cargo::cargo_bin("mesobake"))
            .env("GNUPGHOME", &home)
            .arg("check")
            .arg(&out)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(o.status.success(), expect, "{text}");
        text
    };
    assert!(check(true).contains("good signature of SHA256SUMS"));
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    std::fs::write(out.join("SHA256SUMS"), sums.replace("a.txt", "a.txt ")).unwrap();
    std::fs::write(out.join("a.txt "), "hello\n").unwrap();
    assert!(check(false).contains("gpg --verify"));
}

#[test]
fn ec2_kit_has_containers_user_data_and_launch_notes() {
    let t = tempfile::tempdir().unwrap();
    let kit = ec2::Ec2Kit {
        image: "slave-only".into(),
        disk_file: "slave-only.ec2.vmdk".into(),
        disk_format: "vmdk".into(),
        nodes: vec![
            ec2::Ec2Node {
                name: "agent-1".into(),
                user_data: ec2::default_user_data(false),
            },
            ec2::Ec2Node {
                name: "agent-2".into(),
                user_data: ec2::default_user_data(false),
            },
        ],
        instance_type: "t3.medium".into(),
    };
    let files = kit.write(t.path()).unwrap();
    assert_eq!(
        files,
        [
            "slave-only.ec2.containers.json",
            "slave-only.ec2.LAUNCH.md",
            "slave-only.agent-1.ec2.user-data",
            "slave-only.agent-2.ec2.user-data"
        ]
    );
    let c: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t.path().join("slave-only.ec2.containers.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        c,
        serde_json::json!([{
            "Description": "mesobake slave-only",
            "Format": "vmdk",
            "UserBucket": {"S3Bucket": "YOUR-BUCKET", "S3Key": "mesobake/slave-only.ec2.vmdk"}
        }])
    );
    let md = std::fs::read_to_string(t.path().join("slave-only.ec2.LAUNCH.md")).unwrap();
    for want in [
        "aws ec2 import-image",
        "--disk-containers file://containers.json",
        "aws ec2 describe-import-image-tasks",
        "--user-data file://slave-only.agent-1.ec2.user-data",
        "--user-data file://slave-only.agent-2.ec2.user-data",
    ] {
        assert!(md.contains(want), "{want}\n{md}");
    }
    let ud = std::fs::read_to_string(t.path().join("slave-only.agent-1.ec2.user-data")).unwrap();
    assert!(ud.starts_with("#cloud-config\n"));
    assert!(ud.contains("/etc/mesobake/node.env"));
    // It is YAML cloud-init accepts, when python3-yaml is around to say so.
    let y = Command::new("python3")
        .args(["-c", "import sys,yaml; d=yaml.safe_load(open(sys.argv[1])); assert 'MESOBAKE_ZK=' in d['write_files'][0]['content']"])
        .arg(t.path().join("slave-only.agent-1.ec2.user-data"))
        .output();
    if let Ok(o) = y {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() || err.contains("No module named"),
            "{err}"
        );
    }
}

#[test]
fn cli_accepts_every_format_and_rejects_unknown_ones() {
    // The dry run validates the profile's files; a checkout has no repository key or
    // local .debs, so this layer drops both (the formats are what is under test).
    let t = tempfile::tempdir().unwrap();
    let w = t.path().join("no-key-no-debs.toml");
    std::fs::write(&w, "[apt]\nsources = []\n[packages]\ndebs = []\n").unwrap();
    let o = mesobake(&[
        "build",
        "profiles/master-slave.toml",
        "--with",
        w.to_str().unwrap(),
        "--format",
        "qcow2,vmdk,vdi,vhdx,vhd,raw,ova",
        "--format",
        "vhd-fixed,ec2",
        "--out",
        "out",
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for f in [
        "out/master-slave.qcow2",
        "out/master-slave.vmdk",
        "out/master-slave.vdi",
        "out/master-slave.vhdx",
        "out/master-slave.vhd",
        "out/master-slave.raw",
        "out/master-slave.ova",
        "out/master-slave.fixed.vhd",
        "out/master-slave.ec2.vmdk",
    ] {
        assert!(text.contains(f), "{f}: {text}");
    }
    let o = mesobake(&[
        "build",
        "profiles/master-slave.toml",
        "--format",
        "qed",
        "--dry-run",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("supported formats are qcow2, raw, vmdk"));
    let o = mesobake(&[
        "build",
        "profiles/master-slave.toml",
        "--ova-digest",
        "md5",
        "--dry-run",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("use sha256 or sha1"));
}
