//! The SBOM against the SPDX project's own validator (`pyspdxtools`, from spdx-tools,
//! which ci/setup-host.sh installs in /opt/mesobake-ci/spdx-tools).
//!
//! No root, no image: the document is made from a package list like a real Debian
//! image's (a source package with another name, epochs, binNMUs, `+` in names,
//! multi-arch, DEP-5 licences with and without SPDX ids, unknown licences) plus one
//! package for every DEP-5 name mesobake maps to an SPDX id, so the validator vouches
//! for each of them. Without the validator these tests fail under CI and are skipped
//! elsewhere.

mod common;

use std::path::Path;
use std::process::Command;

use mesobake::base::Family;
use mesobake::export::manifest::BuildRecord;
use mesobake::export::sbom::{self, SbomInput, DEP5_EXCEPTIONS, DEP5_TO_SPDX};
use mesobake::stage::provision::{Package, SourcePackage};

fn pkg(name: &str, version: &str, arch: &str, license: Option<&str>) -> Package {
    Package {
        name: name.into(),
        version: version.into(),
        architecture: arch.into(),
        source: None,
        license: license.map(String::from),
    }
}

fn from_source(mut p: Package, name: &str, version: &str) -> Package {
    p.source = Some(SourcePackage {
        name: name.into(),
        version: version.into(),
    });
    p
}

/// Packages as a Debian 12 image with ZooKeeper and Mesos has them.
fn realistic() -> Vec<Package> {
    let mut v = vec![
        from_source(
            pkg("bash", "5.2.15-2+b8", "amd64", Some("GPL-3+")),
            "bash",
            "5.2.15-2",
        ),
        pkg("base-files", "12.4+deb12u12", "amd64", None),
        from_source(
            pkg(
                "libc6",
                "2.36-9+deb12u14",
                "amd64",
                Some("GPL-2 and LGPL-2.1+"),
            ),
            "glibc",
            "2.36-9+deb12u14",
        ),
        from_source(
            pkg(
                "libc6",
                "2.36-9+deb12u14",
                "i386",
                Some("GPL-2 and LGPL-2.1+"),
            ),
            "glibc",
            "2.36-9+deb12u14",
        ),
        from_source(
            pkg("libssl3", "3.0.19-1~deb12u2", "amd64", Some("Apache-2.0")),
            "openssl",
            "3.0.19-1~deb12u2",
        ),
        from_source(
            pkg("libstdc++6", "12.2.0-14+deb12u1", "amd64", None),
            "gcc-12",
            "12.2.0-14+deb12u1",
        ),
        from_source(
            pkg("zlib1g", "1:1.2.13.dfsg-1", "amd64", Some("Zlib")),
            "zlib",
            "1:1.2.13.dfsg-1",
        ),
        pkg(
            "attr",
            "1:2.3-4",
            "amd64",
            Some("GPL-2+ or AFL-2.1, and Expat and Tcl-BSDish"),
        ),
        pkg(
            "perl-base",
            "5.36.0-7+deb12u1",
            "amd64",
            Some("Artistic or GPL-1+"),
        ),
        pkg(
            "libmariadb3",
            "1:10.11.6-0+deb12u1",
            "amd64",
            Some("GPL-2+ with OpenSSL exception"),
        ),
        pkg(
            "openjdk-17-jre-headless",
            "17.0.13+11-2~deb12u1",
            "amd64",
            Some("GPL-2 with Classpath exception"),
        ),
        pkg("tzdata", "2024a-0+deb12u1", "all", Some("public-domain")),
        pkg(
            "libxml2",
            "2.9.14+dfsg-1.3~deb12u1",
            "amd64",
            Some("MIT/X11"),
        ),
        pkg("oddity", "1.0-1", "amd64", Some("BSD (3 clause)")),
        from_source(
            pkg("zookeeper", "3.8.0-11+deb12u2", "all", Some("Apache-2.0")),
            "zookeeper",
            "3.8.0-11+deb12u2",
        ),
        pkg("zookeeperd", "3.8.0-11+deb12u2", "all", Some("Apache-2.0")),
        pkg("aventer-mesos", "1.11.0-0.1.standin", "amd64", None),
    ];
    // Every DEP-5 name the SBOM turns into an SPDX id, and every exception, so the
    // validator's licence list vouches for the whole table.
    for (i, (dep5, _)) in DEP5_TO_SPDX.iter().enumerate() {
        v.push(pkg(&format!("table-{i}"), "1.0", "all", Some(dep5)));
    }
    for gnu in [
        "GPL-1", "GPL-2+", "GPL-3.0", "LGPL-2", "LGPL-2.1", "LGPL-3+", "AGPL-3+", "GFDL-1.3",
    ] {
        v.push(pkg(
            &format!("gnu-{}", gnu.to_lowercase()),
            "1.0",
            "all",
            Some(gnu),
        ));
    }
    for (i, (exc, _)) in DEP5_EXCEPTIONS.iter().enumerate() {
        let l = format!("GPL-2+ with {exc} exception");
        v.push(pkg(&format!("exception-{i}"), "1.0", "all", Some(&l)));
    }
    v.sort();
    v
}

fn build_record() -> BuildRecord {
    BuildRecord {
        input_fingerprint: "5e".repeat(32),
        mesobake_version: env!("CARGO_PKG_VERSION").into(),
        mesobake_revision: "unknown".into(),
        time: "2023-11-14T22:13:20Z".into(),
        qemu_img: "7.2.22".into(),
    }
}

fn write_sbom(dir: &Path, name: &str, family: Family, packages: &[Package]) -> std::path::PathBuf {
    let build = build_record();
    let doc = sbom::document(&SbomInput {
        image: name,
        packages,
        build: &build,
        family: Some(family),
        codename: Some(if family == Family::Ubuntu {
            "noble"
        } else {
            "bookworm"
        }),
    });
    let p = dir.join(format!("{name}.spdx.json"));
    std::fs::write(&p, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    p
}

#[test]
fn a_realistic_sbom_passes_the_spdx_validator() {
    let Some(validator) = common::pyspdxtools() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let packages = realistic();
    let debian = write_sbom(d.path(), "master-slave", Family::Debian, &packages);
    common::assert_valid_spdx(&validator, &debian);
    let ubuntu = write_sbom(d.path(), "ubuntu-node", Family::Ubuntu, &packages);
    common::assert_valid_spdx(&validator, &ubuntu);

    // What the validator accepted is what the SBOM promises.
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&debian).unwrap()).unwrap();
    let pkgs = doc["packages"].as_array().unwrap();
    assert_eq!(pkgs.len(), packages.len() + 1, "the image and every deb");
    let by_name = |n: &str| pkgs.iter().find(|p| p["name"] == n).unwrap();
    let ssl = by_name("libssl3");
    assert_eq!(
        ssl["sourceInfo"],
        "built package from: openssl 3.0.19-1~deb12u2"
    );
    assert_eq!(ssl["licenseDeclared"], "Apache-2.0");
    let zlib = by_name("zlib1g");
    assert_eq!(
        zlib["externalRefs"][0]["referenceLocator"],
        "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&distro=bookworm"
    );
    assert_eq!(by_name("base-files")["licenseDeclared"], "NOASSERTION");
    assert_eq!(
        by_name("perl-base")["licenseDeclared"],
        "LicenseRef-Artistic OR GPL-1.0-or-later"
    );
    let refs: Vec<&str> = doc["hasExtractedLicensingInfos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["licenseId"].as_str().unwrap())
        .collect();
    assert!(
        refs.contains(&"LicenseRef-GPL-2-plus-with-OpenSSL-exception"),
        "{refs:?}"
    );
    let ubuntu: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ubuntu).unwrap()).unwrap();
    assert!(ubuntu["packages"][1]["externalRefs"][0]["referenceLocator"]
        .as_str()
        .unwrap()
        .starts_with("pkg:deb/ubuntu/"));
}

/// The validator is no rubber stamp: an unknown licence id without a LicenseRef entry,
/// and a bad SPDX id, are refused.
#[test]
fn the_validator_refuses_a_broken_sbom() {
    let Some(validator) = common::pyspdxtools() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let p = write_sbom(d.path(), "node", Family::Debian, &realistic());
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    doc["packages"][1]["licenseDeclared"] = "Not-A-Licence-Mesobake".into();
    doc["packages"][2]["SPDXID"] = "SPDXRef-not valid".into();
    std::fs::write(&p, doc.to_string()).unwrap();
    let out = Command::new(&validator).arg("-i").arg(&p).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted a broken SBOM");
    assert!(said.contains("Not-A-Licence-Mesobake"), "{said}");
}
