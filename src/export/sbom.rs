//! The image's SBOM: an SPDX 2.3 JSON document (`NAME.spdx.json`) listing every
//! installed Debian package.
//!
//! The document DESCRIBES one package for the image, which CONTAINS one package per
//! installed deb: name, version, a purl (`pkg:deb/debian/NAME@VERSION?arch=ARCH`, or
//! `ubuntu` on an Ubuntu base), the source package it was built from, and the licence its
//! DEP-5 copyright file declares. DEP-5 short names become SPDX identifiers where the
//! meaning is the same ([`spdx_license`]); the others become `LicenseRef-` references
//! with an entry in `hasExtractedLicensingInfos`, and an unknown licence is NOASSERTION.
//! Nothing in it depends on the clock unless `SOURCE_DATE_EPOCH` is unset: the namespace
//! derives from the input fingerprint, so two builds from the same inputs agree.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::manifest::BuildRecord;
use super::pin::{derive_uuid, uuid_string};
use crate::base::Family;
use crate::stage::provision::Package;

/// What the document is made from.
#[derive(Debug, Clone)]
pub struct SbomInput<'a> {
    /// The image name (the profile's).
    pub image: &'a str,
    /// Its installed packages.
    pub packages: &'a [Package],
    /// The build record: fingerprint, time, mesobake version.
    pub build: &'a BuildRecord,
    /// The base's distribution family (the purl vendor; Debian when unknown).
    pub family: Option<Family>,
    /// The base's release codename (the purl's `distro`), when known.
    pub codename: Option<&'a str>,
}

/// The SPDX id of the image's own package.
pub const IMAGE_ID: &str = "SPDXRef-image";

/// DEP-5 short names (compared without case) and the SPDX licence they are. GNU
/// licences (`GPL-2+`, `LGPL-2.1`, ...) are handled by [`gnu_license`].
pub const DEP5_TO_SPDX: &[(&str, &str)] = &[
    ("Apache-1.0", "Apache-1.0"),
    ("Apache-1.1", "Apache-1.1"),
    ("Apache-2", "Apache-2.0"),
    ("Apache-2.0", "Apache-2.0"),
    ("Artistic-1.0", "Artistic-1.0"),
    ("Artistic-2.0", "Artistic-2.0"),
    ("BSD-2-clause", "BSD-2-Clause"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("BSD-4-clause", "BSD-4-Clause"),
    ("0BSD", "0BSD"),
    ("Bitstream-Vera", "Bitstream-Vera"),
    ("BSL-1.0", "BSL-1.0"),
    ("CC-BY-3.0", "CC-BY-3.0"),
    ("CC-BY-4.0", "CC-BY-4.0"),
    ("CC-BY-SA-3.0", "CC-BY-SA-3.0"),
    ("CC-BY-SA-4.0", "CC-BY-SA-4.0"),
    ("CC0-1.0", "CC0-1.0"),
    ("CDDL-1.0", "CDDL-1.0"),
    ("CDDL-1.1", "CDDL-1.1"),
    ("CPL-1.0", "CPL-1.0"),
    ("curl", "curl"),
    ("EPL-1.0", "EPL-1.0"),
    ("EPL-2.0", "EPL-2.0"),
    ("Expat", "MIT"),
    ("FSFAP", "FSFAP"),
    ("FSFUL", "FSFUL"),
    ("FSFULLR", "FSFULLR"),
    ("FTL", "FTL"),
    ("ICU", "ICU"),
    ("ISC", "ISC"),
    ("libpng", "Libpng"),
    ("MIT", "MIT"),
    ("MIT-0", "MIT-0"),
    ("MPL-1.1", "MPL-1.1"),
    ("MPL-2.0", "MPL-2.0"),
    ("NCSA", "NCSA"),
    ("NTP", "NTP"),
    ("OFL-1.1", "OFL-1.1"),
    ("OpenLDAP-2.8", "OLDAP-2.8"),
    ("OpenSSL", "OpenSSL"),
    ("PostgreSQL", "PostgreSQL"),
    ("Python-2.0", "Python-2.0"),
    ("Ruby", "Ruby"),
    ("Sleepycat", "Sleepycat"),
    ("Tcl", "TCL"),
    ("Unicode-DFS-2016", "Unicode-DFS-2016"),
    ("Unlicense", "Unlicense"),
    ("Vim", "Vim"),
    ("W3C", "W3C"),
    ("WTFPL", "WTFPL"),
    ("X11", "X11"),
    ("Zlib", "Zlib"),
    ("Zope-2.1", "ZPL-2.1"),
    ("ZPL-2.1", "ZPL-2.1"),
];

/// DEP-5 `with ... exception` phrases (without the word "exception", compared without
/// case) and the SPDX exception they are.
pub const DEP5_EXCEPTIONS: &[(&str, &str)] = &[
    ("Bison", "Bison-exception-2.2"),
    ("Classpath", "Classpath-exception-2.0"),
    ("Font", "Font-exception-2.0"),
    ("GCC-3.1", "GCC-exception-3.1"),
    ("GCC-exception-3.1", "GCC-exception-3.1"),
    ("Libtool", "Libtool-exception"),
    ("LLVM", "LLVM-exception"),
];

/// A GNU licence in DEP-5 spelling (`GPL-2`, `GPL-2+`, `LGPL-2.1+`, `GPL-3.0`) as its
/// SPDX id (`GPL-2.0-only`, `GPL-2.0-or-later`, ...); None for other names and for
/// versions that do not exist.
fn gnu_license(name: &str) -> Option<String> {
    let (family, rest) = name.split_once('-')?;
    let family = ["GPL", "LGPL", "AGPL", "GFDL"]
        .into_iter()
        .find(|f| f.eq_ignore_ascii_case(family))?;
    let (version, later) = match rest.strip_suffix('+') {
        Some(v) => (v, true),
        None => (rest, false),
    };
    let version = match version {
        "1" | "1.0" => "1.0",
        "1.1" => "1.1",
        "1.2" => "1.2",
        "1.3" => "1.3",
        "2" | "2.0" => "2.0",
        "2.1" => "2.1",
        "3" | "3.0" => "3.0",
        _ => return None,
    };
    let exists = match family {
        "GPL" => ["1.0", "2.0", "3.0"].contains(&version),
        "LGPL" => ["2.0", "2.1", "3.0"].contains(&version),
        "AGPL" => version == "3.0",
        _ => ["1.1", "1.2", "1.3"].contains(&version),
    };
    exists.then(|| {
        format!(
            "{family}-{version}-{}",
            if later { "or-later" } else { "only" }
        )
    })
}

/// The SPDX licence id a one-word DEP-5 short name stands for.
fn spdx_id(name: &str) -> Option<String> {
    gnu_license(name).or_else(|| {
        DEP5_TO_SPDX
            .iter()
            .find(|(d, _)| d.eq_ignore_ascii_case(name))
            .map(|(_, s)| s.to_string())
    })
}

/// The SPDX exception a DEP-5 `with` phrase names (`Classpath exception`).
fn spdx_exception(phrase: &str) -> Option<&'static str> {
    let p = phrase.trim();
    let p = p
        .strip_suffix(" exception")
        .or_else(|| p.strip_suffix(" Exception"))
        .unwrap_or(p)
        .trim();
    DEP5_EXCEPTIONS
        .iter()
        .find(|(d, s)| d.eq_ignore_ascii_case(p) || s.eq_ignore_ascii_case(p))
        .map(|(_, s)| *s)
}

/// A licence expression in SPDX terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpdxLicense {
    /// The expression (`GPL-2.0-or-later OR LicenseRef-Artistic`).
    pub expression: String,
    /// The `LicenseRef-` ids it uses, each with the DEP-5 name it stands for.
    pub refs: Vec<(String, String)>,
}

/// The `LicenseRef-` id for a DEP-5 licence that has no SPDX id: its name with `+` as
/// `-plus` and anything else outside `[A-Za-z0-9.-]` as `-`.
fn license_ref(name: &str) -> Option<String> {
    let mut id = String::new();
    for c in name.replace('+', "-plus").chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' {
            c
        } else {
            '-'
        };
        if !(c == '-' && (id.is_empty() || id.ends_with('-'))) {
            id.push(c);
        }
    }
    let id = id.trim_end_matches('-');
    (!id.is_empty()).then(|| format!("LicenseRef-{id}"))
}

/// One DEP-5 licence term (`GPL-2+`, `GPL-2 with Classpath exception`, `BSD-like`) in
/// SPDX terms, recording any `LicenseRef-` it needs in `refs`.
fn term(words: &[&str], refs: &mut Vec<(String, String)>) -> Option<String> {
    let text = words.join(" ");
    let with = words
        .iter()
        .skip(1)
        .position(|w| w.eq_ignore_ascii_case("with"))
        .map(|i| i + 1);
    let spdx = match (words, with) {
        ([one], None) => spdx_id(one),
        (_, Some(i)) if i == 1 => spdx_id(words[0]).and_then(|base| {
            spdx_exception(&words[i + 1..].join(" ")).map(|e| format!("{base} WITH {e}"))
        }),
        _ => None,
    };
    if spdx.is_some() {
        return spdx;
    }
    let id = license_ref(&text)?;
    if !refs.iter().any(|(r, _)| *r == id) {
        refs.push((id.clone(), text));
    }
    Some(id)
}

/// A DEP-5 licence expression (`GPL-2+ or Artistic, and BSD-3-clause`) in SPDX terms
/// (`(GPL-2.0-or-later OR LicenseRef-Artistic) AND BSD-3-Clause`). Both give `and`
/// precedence over `or`; DEP-5's comma joins groups that all apply. None when nothing
/// usable is left (an empty field), which the SBOM records as NOASSERTION.
pub fn spdx_license(dep5: &str) -> Option<SpdxLicense> {
    let mut refs = Vec::new();
    if dep5.contains(['(', ')']) {
        // Not DEP-5 syntax: the whole text is one licence name.
        let expression = term(&[dep5.trim()], &mut refs)?;
        return Some(SpdxLicense { expression, refs });
    }
    let mut groups: Vec<(&str, String, bool)> = Vec::new();
    for (i, group) in dep5.split(',').enumerate() {
        let mut words: Vec<&str> = group.split_whitespace().collect();
        let mut joiner = "AND";
        if i > 0 {
            if let Some(first) = words.first() {
                if first.eq_ignore_ascii_case("or") || first.eq_ignore_ascii_case("and") {
                    joiner = if first.eq_ignore_ascii_case("or") {
                        "OR"
                    } else {
                        "AND"
                    };
                    words.remove(0);
                }
            }
        }
        let mut parts: Vec<String> = Vec::new();
        let mut current: Vec<&str> = Vec::new();
        for w in words {
            let op = if w.eq_ignore_ascii_case("or") {
                Some("OR")
            } else if w.eq_ignore_ascii_case("and") {
                Some("AND")
            } else {
                None
            };
            match op {
                Some(op) if !current.is_empty() => {
                    parts.push(term(&current, &mut refs)?);
                    parts.push(op.to_string());
                    current.clear();
                }
                Some(_) => {}
                None => current.push(w),
            }
        }
        if !current.is_empty() {
            parts.push(term(&current, &mut refs)?);
        } else {
            // A trailing operator joins nothing.
            parts.pop();
        }
        if !parts.is_empty() {
            let compound = parts.len() > 1;
            groups.push((joiner, parts.join(" "), compound));
        }
    }
    let several = groups.len() > 1;
    let mut expression = String::new();
    for (i, (joiner, g, compound)) in groups.iter().enumerate() {
        if i > 0 {
            expression += &format!(" {joiner} ");
        }
        if several && *compound {
            expression += &format!("({g})");
        } else {
            expression += g;
        }
    }
    (!expression.is_empty()).then_some(SpdxLicense { expression, refs })
}

/// An SPDX element id from free text: `[A-Za-z0-9.-]`, `+` spelt `plus`.
fn id_part(s: &str) -> String {
    s.replace('+', "plus")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Percent-encodes a purl component, keeping `[A-Za-z0-9._~-]` and the characters in
/// `keep`.
fn purl_encode(s: &str, keep: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        let c = b as char;
        if c.is_ascii_alphanumeric() || "._~-".contains(c) || keep.contains(c) {
            out.push(c);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

/// The package URL of a deb: `pkg:deb/VENDOR/NAME@VERSION?arch=ARCH&distro=CODENAME`
/// (the epoch's colon kept, as the purl spec's Debian examples do).
pub fn purl(vendor: &str, p: &Package, codename: Option<&str>) -> String {
    let mut s = format!(
        "pkg:deb/{vendor}/{}@{}",
        purl_encode(&p.name.to_ascii_lowercase(), ""),
        purl_encode(&p.version, ":")
    );
    let mut q = Vec::new();
    if !p.architecture.is_empty() {
        q.push(format!("arch={}", purl_encode(&p.architecture, "")));
    }
    if let Some(c) = codename.filter(|c| !c.is_empty()) {
        q.push(format!("distro={}", purl_encode(c, "")));
    }
    if !q.is_empty() {
        s += "?";
        s += &q.join("&");
    }
    s
}

/// The purl vendor for a base family.
pub fn vendor(family: Option<Family>) -> &'static str {
    match family {
        Some(Family::Ubuntu) => "ubuntu",
        _ => "debian",
    }
}

/// The SPDX package of one installed deb, with id `id`; adds the `LicenseRef-`s its
/// licence needs to `refs`.
fn deb_package(
    p: &Package,
    id: &str,
    vendor: &str,
    codename: Option<&str>,
    refs: &mut Vec<(String, String)>,
) -> Value {
    let declared = p
        .license
        .as_deref()
        .and_then(spdx_license)
        .map(|l| {
            for r in l.refs {
                if !refs.iter().any(|(id, _)| *id == r.0) {
                    refs.push(r);
                }
            }
            l.expression
        })
        .unwrap_or_else(|| "NOASSERTION".into());
    let (src, src_version) = p.source_or_self();
    json!({
        "SPDXID": id,
        "name": p.name,
        "versionInfo": p.version,
        "supplier": "NOASSERTION",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": declared,
        "copyrightText": "NOASSERTION",
        "sourceInfo": format!("built package from: {src} {src_version}"),
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": purl(vendor, p, codename),
        }],
    })
}

/// The SPDX 2.3 document for an image.
pub fn document(input: &SbomInput) -> Value {
    let b = input.build;
    let namespace = format!(
        "urn:uuid:{}",
        uuid_string(&derive_uuid(&b.input_fingerprint, "spdx-document"))
    );
    let vendor = vendor(input.family);
    let mut refs: Vec<(String, String)> = Vec::new();
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut packages = vec![json!({
        "SPDXID": IMAGE_ID,
        "name": input.image,
        "versionInfo": b.input_fingerprint,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "supplier": "NOASSERTION",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!(
            "The VM image {} that mesobake {} built; its versionInfo is the build's input fingerprint.",
            input.image, b.mesobake_version
        ),
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": IMAGE_ID,
    })];
    for p in input.packages {
        let base = format!(
            "SPDXRef-deb-{}-{}",
            id_part(&p.name),
            id_part(&p.architecture)
        );
        let n = ids.entry(base.clone()).or_default();
        *n += 1;
        let id = if *n == 1 { base } else { format!("{base}-{n}") };
        packages.push(deb_package(p, &id, vendor, input.codename, &mut refs));
        relationships.push(json!({
            "spdxElementId": IMAGE_ID,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    refs.sort();
    let extracted: Vec<Value> = refs
        .iter()
        .map(|(id, name)| {
            json!({
                "licenseId": id,
                "name": name,
                "extractedText": format!(
                    "The licence that Debian copyright files (DEP-5) name \"{name}\", which has no \
                     SPDX identifier. Its text is in /usr/share/doc/PACKAGE/copyright in the \
                     image, for each package that declares it."
                ),
            })
        })
        .collect();
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": input.image,
        "documentNamespace": namespace,
        "creationInfo": {
            "created": b.time,
            "creators": [format!("Tool: mesobake-{}", b.mesobake_version)],
        },
        "packages": packages,
        "relationships": relationships,
    });
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = Value::Array(extracted);
    }
    doc
}

/// What `mesobake check` confirms of an SBOM: SPDX 2.3 JSON with a document id and
/// namespace; returns the number of deb packages it lists.
pub fn check(text: &str) -> anyhow::Result<usize> {
    let v: Value = serde_json::from_str(text)?;
    if v["spdxVersion"] != "SPDX-2.3" {
        anyhow::bail!("spdxVersion is {}, expected SPDX-2.3", v["spdxVersion"]);
    }
    if v["SPDXID"] != "SPDXRef-DOCUMENT" || !v["documentNamespace"].is_string() {
        anyhow::bail!("no document SPDXID or documentNamespace");
    }
    let debs = v["packages"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| {
                    p["externalRefs"].as_array().is_some_and(|rs| {
                        rs.iter().any(|r| {
                            r["referenceLocator"]
                                .as_str()
                                .is_some_and(|l| l.starts_with("pkg:deb/"))
                        })
                    })
                })
                .count()
        })
        .unwrap_or(0);
    Ok(debs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::provision::SourcePackage;

    fn conv(s: &str) -> String {
        spdx_license(s).map(|l| l.expression).unwrap_or_default()
    }

    #[test]
    fn dep5_names_become_spdx_ids() {
        assert_eq!(conv("GPL-2+"), "GPL-2.0-or-later");
        assert_eq!(conv("GPL-2"), "GPL-2.0-only");
        assert_eq!(conv("LGPL-2.1+"), "LGPL-2.1-or-later");
        assert_eq!(conv("lgpl-3.0"), "LGPL-3.0-only");
        assert_eq!(conv("Expat"), "MIT");
        assert_eq!(conv("BSD-3-clause"), "BSD-3-Clause");
        assert_eq!(conv("Apache-2.0"), "Apache-2.0");
        assert_eq!(
            conv("GPL-2 with Classpath exception"),
            "GPL-2.0-only WITH Classpath-exception-2.0"
        );
        assert_eq!(conv("GPL-4"), "LicenseRef-GPL-4");
    }

    #[test]
    fn dep5_expressions_keep_their_grouping() {
        assert_eq!(
            conv("Artistic or GPL-1+"),
            "LicenseRef-Artistic OR GPL-1.0-or-later"
        );
        assert_eq!(
            conv("GPL-2+ or AFL-2.1, and Expat and Tcl-BSDish"),
            "(GPL-2.0-or-later OR LicenseRef-AFL-2.1) AND (MIT AND LicenseRef-Tcl-BSDish)"
        );
        assert_eq!(
            conv("LGPL-2+ and LGPL-2.1+"),
            "LGPL-2.0-or-later AND LGPL-2.1-or-later"
        );
        assert_eq!(conv("MIT, and"), "MIT");
        assert_eq!(spdx_license("   "), None);
    }

    #[test]
    fn names_without_an_spdx_id_become_license_refs() {
        let l = spdx_license("GPL-2+ with OpenSSL exception or MIT/X11").unwrap();
        assert_eq!(
            l.expression,
            "LicenseRef-GPL-2-plus-with-OpenSSL-exception OR LicenseRef-MIT-X11"
        );
        assert_eq!(
            l.refs,
            [
                (
                    "LicenseRef-GPL-2-plus-with-OpenSSL-exception".to_string(),
                    "GPL-2+ with OpenSSL exception".to_string()
                ),
                ("LicenseRef-MIT-X11".to_string(), "MIT/X11".to_string()),
            ]
        );
        assert_eq!(conv("BSD (3 clause)"), "LicenseRef-BSD-3-clause");
        assert_eq!(conv("public-domain"), "LicenseRef-public-domain");
    }

    #[test]
    fn purls_follow_the_deb_type() {
        let p = Package {
            name: "libstdc++6".into(),
            version: "1:2.3-4+b1".into(),
            architecture: "amd64".into(),
            source: None,
            license: None,
        };
        assert_eq!(
            purl("debian", &p, Some("bookworm")),
            "pkg:deb/debian/libstdc%2B%2B6@1:2.3-4%2Bb1?arch=amd64&distro=bookworm"
        );
        assert_eq!(vendor(Some(Family::Ubuntu)), "ubuntu");
        assert_eq!(vendor(None), "debian");
    }

    #[test]
    fn the_document_is_a_function_of_its_inputs() {
        let build = BuildRecord {
            input_fingerprint: "ab".repeat(32),
            mesobake_version: "0.1.0".into(),
            mesobake_revision: "unknown".into(),
            time: "2023-11-14T22:13:20Z".into(),
            qemu_img: "7.2.0".into(),
        };
        let pkgs = [
            Package {
                name: "libssl3".into(),
                version: "3.0.11-1".into(),
                architecture: "amd64".into(),
                source: Some(SourcePackage {
                    name: "openssl".into(),
                    version: "3.0.11-1".into(),
                }),
                license: Some("Apache-2.0".into()),
            },
            Package {
                name: "perl-base".into(),
                version: "5.36.0-7".into(),
                architecture: "amd64".into(),
                source: None,
                license: Some("Artistic or GPL-1+".into()),
            },
        ];
        let input = SbomInput {
            image: "node",
            packages: &pkgs,
            build: &build,
            family: Some(Family::Debian),
            codename: Some("bookworm"),
        };
        let d = document(&input);
        assert_eq!(d, document(&input));
        assert!(d["documentNamespace"]
            .as_str()
            .unwrap()
            .starts_with("urn:uuid:"));
        assert_eq!(d["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        assert_eq!(d["creationInfo"]["creators"][0], "Tool: mesobake-0.1.0");
        let ssl = &d["packages"][1];
        assert_eq!(ssl["SPDXID"], "SPDXRef-deb-libssl3-amd64");
        assert_eq!(ssl["sourceInfo"], "built package from: openssl 3.0.11-1");
        assert_eq!(ssl["licenseDeclared"], "Apache-2.0");
        assert_eq!(
            d["packages"][2]["sourceInfo"],
            "built package from: perl-base 5.36.0-7"
        );
        assert_eq!(
            d["hasExtractedLicensingInfos"][0]["licenseId"],
            "LicenseRef-Artistic"
        );
        assert_eq!(d["relationships"].as_array().unwrap().len(), 3);
        assert_eq!(check(&d.to_string()).unwrap(), 2);
        let mut other = build.clone();
        other.input_fingerprint = "cd".repeat(32);
        let d2 = document(&SbomInput {
            build: &other,
            ..input
        });
        assert_ne!(d["documentNamespace"], d2["documentNamespace"]);
    }
}
