//! OVA appliances: a ustar archive holding the OVF descriptor first, then the
//! streamOptimized VMDK (and a seed ISO, when a lab node has one), then the `.mf`
//! manifest with one `SHA256(file)= hex` line per member.
//!
//! The descriptor is OVF 1.0, the version VirtualBox, VMware and virt-v2v all read. Its
//! hardware choices follow what the images can drive: Debian's cloud kernel has neither
//! AHCI nor e1000 drivers, so the disk and CD-ROM sit on PIIX4 IDE controllers and the
//! NIC is paravirtual (`virtio-net`). There is no EULA section.
//!
//! Given the same VMDK and ISO, the archive is byte-for-byte the same: fixed member
//! order, mtime from `SOURCE_DATE_EPOCH` (or 0), owner 0:0, mode 0644.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use quick_xml::events::{BytesText, Event};
use serde::{Deserialize, Serialize};

use crate::progress::PercentBar;

pub use crate::settings::MfDigest;

fn hasher(d: MfDigest) -> Hasher {
    match d {
        MfDigest::Sha256 => Hasher::Sha256(sha2::Digest::new()),
        MfDigest::Sha1 => Hasher::Sha1(sha1::Digest::new()),
    }
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha1(sha1::Sha1),
}

impl Hasher {
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => sha2::Digest::update(h, b),
            Hasher::Sha1(h) => sha1::Digest::update(h, b),
        }
    }
    fn hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(sha2::Digest::finalize(h)),
            Hasher::Sha1(h) => hex::encode(sha1::Digest::finalize(h)),
        }
    }
}

/// The guest OS type, as OVF's CIM id and VirtualBox's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestOs {
    /// Ubuntu, 64-bit.
    Ubuntu64,
    /// Debian, 64-bit.
    Debian64,
}

impl GuestOs {
    /// The CIM_OperatingSystem id OVF puts in `OperatingSystemSection ovf:id`.
    pub fn cim_id(self) -> u32 {
        match self {
            GuestOs::Ubuntu64 => 94,
            GuestOs::Debian64 => 96,
        }
    }

    /// VirtualBox's OS type name.
    pub fn vbox_name(self) -> &'static str {
        match self {
            GuestOs::Ubuntu64 => "Ubuntu_64",
            GuestOs::Debian64 => "Debian_64",
        }
    }
}

/// The virtual machine an OVA describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Appliance {
    /// The VirtualSystem name: the profile or node name.
    pub name: String,
    /// Guest OS type.
    pub os: GuestOs,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// The disk's virtual size in bytes.
    pub disk_capacity: u64,
}

/// streamOptimized VMDK, as OVF names it.
pub const VMDK_STREAM_URI: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";
/// An ISO 9660 image, as VirtualBox names it in OVF disk sections.
pub const ISO_URI: &str = "http://www.ecma-international.org/publications/standards/Ecma-119.htm";

/// A file the descriptor references: its name in the archive and its size.
#[derive(Debug, Clone)]
pub struct Member {
    /// The name inside the archive.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

type XmlW = quick_xml::Writer<Vec<u8>>;

fn text_el(w: &mut XmlW, name: &str, text: &str) -> std::io::Result<()> {
    w.create_element(name)
        .write_text_content(BytesText::new(text))?;
    Ok(())
}

/// One `<Item>` of the hardware section, its rasd children in schema (alphabetical) order.
fn item(w: &mut XmlW, fields: &[(&str, String)]) -> std::io::Result<()> {
    let mut sorted: Vec<&(&str, String)> = fields.iter().collect();
    sorted.sort_by_key(|(k, _)| *k);
    w.create_element("Item").write_inner_content(|w| {
        for (k, v) in sorted {
            text_el(w, &format!("rasd:{k}"), v)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// The OVF descriptor for `app` with `disk` (a streamOptimized VMDK) and an optional seed
/// ISO attached as a CD-ROM.
///
/// Long on purpose: the nested builder calls mirror the XML tree, in the element order
/// OVF 1.0 requires, so the document reads top to bottom; the hardware section, the one
/// part that varies, is its own function.
pub fn descriptor(app: &Appliance, disk: &Member, iso: Option<&Member>) -> Result<String> {
    let mut w = quick_xml::Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(quick_xml::events::BytesDecl::new(
        "1.0",
        Some("UTF-8"),
        None,
    )))?;
    let mem = app.memory_mb.to_string();
    w.create_element("Envelope")
        .with_attributes([
            ("ovf:version", "1.0"),
            ("xml:lang", "en-US"),
            ("xmlns", "http://schemas.dmtf.org/ovf/envelope/1"),
            ("xmlns:ovf", "http://schemas.dmtf.org/ovf/envelope/1"),
            (
                "xmlns:rasd",
                "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
            ),
            (
                "xmlns:vssd",
                "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
            ),
            ("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"),
            ("xmlns:vbox", "http://www.virtualbox.org/ovf/machine"),
        ])
        .write_inner_content(|w| {
            w.create_element("References").write_inner_content(|w| {
                let disk_size = disk.size.to_string();
                w.create_element("File")
                    .with_attributes([
                        ("ovf:id", "file1"),
                        ("ovf:href", disk.name.as_str()),
                        ("ovf:size", disk_size.as_str()),
                    ])
                    .write_empty()?;
                if let Some(iso) = iso {
                    let iso_size = iso.size.to_string();
                    w.create_element("File")
                        .with_attributes([
                            ("ovf:id", "file2"),
                            ("ovf:href", iso.name.as_str()),
                            ("ovf:size", iso_size.as_str()),
                        ])
                        .write_empty()?;
                }
                Ok(())
            })?;
            w.create_element("DiskSection").write_inner_content(|w| {
                text_el(w, "Info", "List of the virtual disks used in the package")?;
                let cap = app.disk_capacity.to_string();
                w.create_element("Disk")
                    .with_attributes([
                        ("ovf:capacity", cap.as_str()),
                        ("ovf:diskId", "vmdisk1"),
                        ("ovf:fileRef", "file1"),
                        ("ovf:format", VMDK_STREAM_URI),
                    ])
                    .write_empty()?;
                if let Some(iso) = iso {
                    let cap = iso.size.to_string();
                    w.create_element("Disk")
                        .with_attributes([
                            ("ovf:capacity", cap.as_str()),
                            ("ovf:diskId", "vmdisk2"),
                            ("ovf:fileRef", "file2"),
                            ("ovf:format", ISO_URI),
                        ])
                        .write_empty()?;
                }
                Ok(())
            })?;
            w.create_element("NetworkSection").write_inner_content(|w| {
                text_el(w, "Info", "Logical networks used in the package")?;
                w.create_element("Network")
                    .with_attribute(("ovf:name", "NAT"))
                    .write_inner_content(|w| {
                        text_el(w, "Description", "Logical network used by this appliance.")
                    })?;
                Ok(())
            })?;
            w.create_element("VirtualSystem")
                .with_attribute(("ovf:id", app.name.as_str()))
                .write_inner_content(|w| {
                    text_el(w, "Info", "A virtual machine")?;
                    text_el(w, "Name", &app.name)?;
                    let os_id = app.os.cim_id().to_string();
                    w.create_element("OperatingSystemSection")
                        .with_attribute(("ovf:id", os_id.as_str()))
                        .write_inner_content(|w| {
                            text_el(w, "Info", "The kind of installed guest operating system")?;
                            text_el(w, "Description", app.os.vbox_name())?;
                            w.create_element("vbox:OSType")
                                .with_attribute(("ovf:required", "false"))
                                .write_text_content(BytesText::new(app.os.vbox_name()))?;
                            Ok(())
                        })?;
                    w.create_element("VirtualHardwareSection")
                        .write_inner_content(|w| {
                            hardware(w, app, &mem, iso.is_some())
                        })?;
                    Ok(())
                })?;
            Ok(())
        })?;
    let mut s = String::from_utf8(w.into_inner()).context("OVF is UTF-8")?;
    s.push('\n');
    Ok(s)
}

fn hardware(w: &mut XmlW, app: &Appliance, mem: &str, cdrom: bool) -> std::io::Result<()> {
    text_el(
        w,
        "Info",
        "Virtual hardware requirements for a virtual machine",
    )?;
    w.create_element("System").write_inner_content(|w| {
        text_el(w, "vssd:ElementName", "Virtual Hardware Family")?;
        text_el(w, "vssd:InstanceID", "0")?;
        text_el(w, "vssd:VirtualSystemIdentifier", &app.name)?;
        text_el(w, "vssd:VirtualSystemType", "virtualbox-2.2")
    })?;
    let cpus = format!(
        "{} virtual CPU{}",
        app.cpus,
        if app.cpus == 1 { "" } else { "s" }
    );
    item(
        w,
        &[
            ("Caption", cpus.clone()),
            ("Description", "Number of virtual CPUs".into()),
            ("ElementName", cpus),
            ("InstanceID", "1".into()),
            ("ResourceType", "3".into()),
            ("VirtualQuantity", app.cpus.to_string()),
        ],
    )?;
    let m = format!("{mem} MB of memory");
    item(
        w,
        &[
            ("AllocationUnits", "byte * 2^20".into()),
            ("Caption", m.clone()),
            ("Description", "Memory Size".into()),
            ("ElementName", m),
            ("InstanceID", "2".into()),
            ("ResourceType", "4".into()),
            ("VirtualQuantity", mem.into()),
        ],
    )?;
    for (id, addr) in [("3", "0"), ("4", "1")] {
        let name = format!("ideController{addr}");
        item(
            w,
            &[
                ("Address", addr.into()),
                ("Caption", name.clone()),
                ("Description", "IDE Controller".into()),
                ("ElementName", name),
                ("InstanceID", id.into()),
                ("ResourceSubType", "PIIX4".into()),
                ("ResourceType", "5".into()),
            ],
        )?;
    }
    item(
        w,
        &[
            ("AutomaticAllocation", "true".into()),
            ("Caption", "Ethernet adapter on 'NAT'".into()),
            ("Connection", "NAT".into()),
            ("ElementName", "Ethernet adapter on 'NAT'".into()),
            ("InstanceID", "5".into()),
            ("ResourceSubType", "virtio-net".into()),
            ("ResourceType", "10".into()),
        ],
    )?;
    item(
        w,
        &[
            ("AddressOnParent", "0".into()),
            ("Caption", "disk1".into()),
            ("Description", "Disk Image".into()),
            ("ElementName", "disk1".into()),
            ("HostResource", "/disk/vmdisk1".into()),
            ("InstanceID", "6".into()),
            ("Parent", "3".into()),
            ("ResourceType", "17".into()),
        ],
    )?;
    if cdrom {
        item(
            w,
            &[
                ("AddressOnParent", "0".into()),
                ("AutomaticAllocation", "true".into()),
                ("Caption", "cdrom1".into()),
                ("Description", "CD-ROM Drive".into()),
                ("ElementName", "cdrom1".into()),
                ("HostResource", "/disk/vmdisk2".into()),
                ("InstanceID", "7".into()),
                ("Parent", "4".into()),
                ("ResourceType", "15".into()),
            ],
        )?;
    }
    Ok(())
}

/// What to pack into one OVA.
#[derive(Debug, Clone)]
pub struct OvaInput<'a> {
    /// The virtual machine.
    pub appliance: Appliance,
    /// A streamOptimized VMDK (see [`ova_from_disk`] for any other disk).
    pub vmdk: &'a Path,
    /// A NoCloud seed ISO to attach as a CD-ROM.
    pub seed_iso: Option<&'a Path>,
    /// The `.mf` digest.
    pub digest: MfDigest,
    /// The mtime of every member (`SOURCE_DATE_EPOCH`, or 0).
    pub mtime: u64,
}

/// The archive member names for an appliance called `name`.
pub fn member_names(name: &str) -> (String, String, String, String) {
    (
        format!("{name}.ovf"),
        format!("{name}-disk1.vmdk"),
        format!("{name}-seed.iso"),
        format!("{name}.mf"),
    )
}

/// Reads `r` into `w`, feeding every byte to `h`.
fn copy_hashing(mut r: impl Read, w: &mut impl Write, h: &mut Hasher) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        h.update(&buf[..k]);
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
}

fn header(size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Writes the OVA at `dest` (through `dest.part`, renamed when complete). Each member is
/// hashed while it is copied, so the VMDK is read once.
pub fn write_ova(input: &OvaInput, dest: &Path) -> Result<()> {
    let (_, vmdk_name, iso_name, _) = member_names(&input.appliance.name);
    let disk = Member {
        name: vmdk_name,
        size: std::fs::metadata(input.vmdk)
            .with_context(|| format!("reading {}", input.vmdk.display()))?
            .len(),
    };
    let iso = match input.seed_iso {
        Some(p) => Some(Member {
            name: iso_name,
            size: std::fs::metadata(p)
                .with_context(|| format!("reading {}", p.display()))?
                .len(),
        }),
        None => None,
    };
    let ovf = descriptor(&input.appliance, &disk, iso.as_ref())?;
    let part = dest.with_extension("ova.part");
    // The archive is as private as the seed it carries: a seed ISO with secrets is 0600.
    let mode = match input.seed_iso {
        Some(p) => {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p)?.permissions()) & 0o666
        }
        None => 0o644,
    };
    // A leftover part keeps its mode on truncation; start afresh.
    let _ = std::fs::remove_file(&part);
    let r = write_part(input, &ovf, &disk, iso.as_ref(), &part, mode).and_then(|()| {
        std::fs::rename(&part, dest).with_context(|| format!("publishing {}", dest.display()))
    });
    if r.is_err() {
        // No half OVA is left behind.
        let _ = std::fs::remove_file(&part);
    }
    r
}

/// Writes the whole archive at `part`.
fn write_part(
    input: &OvaInput,
    ovf: &str,
    disk: &Member,
    iso: Option<&Member>,
    part: &Path,
    mode: u32,
) -> Result<()> {
    let (ovf_name, _, _, mf_name) = member_names(&input.appliance.name);
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(part)
    }
    .with_context(|| format!("creating {}", part.display()))?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
    let mut mf = String::new();
    let mut add = |tar: &mut tar::Builder<BufWriter<File>>,
                   name: &str,
                   size: u64,
                   r: &mut dyn Read|
     -> Result<()> {
        let mut h = header(size, input.mtime);
        let mut hasher = hasher(input.digest);
        let mut hashing = HashingReader {
            inner: r,
            hasher: &mut hasher,
        };
        tar.append_data(&mut h, name, &mut hashing)
            .with_context(|| format!("adding {name} to the OVA"))?;
        mf += &format!("{}({name})= {}\n", input.digest.label(), hasher.hex());
        Ok(())
    };
    add(
        &mut tar,
        &ovf_name,
        ovf.len() as u64,
        &mut std::io::Cursor::new(ovf.as_bytes()),
    )?;
    add(
        &mut tar,
        &disk.name,
        disk.size,
        &mut File::open(input.vmdk)?,
    )?;
    if let (Some(m), Some(p)) = (iso, input.seed_iso) {
        add(&mut tar, &m.name, m.size, &mut File::open(p)?)?;
    }
    let mut h = header(mf.len() as u64, input.mtime);
    tar.append_data(&mut h, &mf_name, mf.as_bytes())?;
    let mut w = tar.into_inner()?;
    w.flush()?;
    w.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .context("syncing the OVA")
}

struct HashingReader<'a> {
    inner: &'a mut dyn Read,
    hasher: &'a mut Hasher,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Writes an OVA for any disk qemu-img reads (qcow2 from `mesobake build`, for example),
/// with an optional seed ISO attached as a CD-ROM: what `mesobake seed --ova` needs for
/// each lab node. A disk that is not already a streamOptimized VMDK is converted in a
/// temporary directory beside `dest`; its VMDK CID is pinned from `seed` so the same
/// disk and seed give the same OVA.
pub fn ova_from_disk(
    disk: &Path,
    mut appliance: Appliance,
    seed_iso: Option<&Path>,
    digest: MfDigest,
    seed: &str,
    dest: &Path,
    bar: &PercentBar,
) -> Result<()> {
    let info = super::qemu_info(disk)?;
    appliance.disk_capacity = info["virtual-size"].as_u64().unwrap_or(0);
    let stream = info["format"] == "vmdk"
        && info["format-specific"]["data"]["create-type"] == "streamOptimized";
    let tmp = tempfile::Builder::new()
        .prefix(".mesobake-ova-")
        .tempdir_in(dest.parent().unwrap_or(Path::new(".")))?;
    let vmdk = if stream {
        disk.to_path_buf()
    } else {
        let v = tmp.path().join("disk.vmdk");
        let cid = super::pin::derive_cid(seed);
        super::stream::from_image(disk, cid, &tmp.path().join("scratch"), &v)?;
        bar.set(100.0);
        v
    };
    write_ova(
        &OvaInput {
            appliance,
            vmdk: &vmdk,
            seed_iso,
            digest,
            mtime: super::pin::source_date_epoch(),
        },
        dest,
    )
}

/// One member of an existing archive.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Where its data starts in the archive.
    pub offset: u64,
}

/// Lists an archive's members in order, without reading their data.
pub fn list(ova: &Path) -> Result<Vec<Entry>> {
    let f = File::open(ova).with_context(|| format!("opening {}", ova.display()))?;
    let mut a = tar::Archive::new(f);
    let mut v = Vec::new();
    for e in a.entries_with_seek()? {
        let e = e.with_context(|| format!("reading {}", ova.display()))?;
        v.push(Entry {
            name: e.path()?.to_string_lossy().into_owned(),
            size: e.size(),
            offset: e.raw_file_position(),
        });
    }
    Ok(v)
}

fn member_reader(ova: &Path, e: &Entry) -> Result<impl Read> {
    let mut f = File::open(ova)?;
    f.seek(SeekFrom::Start(e.offset))?;
    Ok(f.take(e.size))
}

/// Reads a small member (the descriptor, the manifest) as text.
pub fn read_member(ova: &Path, e: &Entry) -> Result<String> {
    let mut s = String::new();
    member_reader(ova, e)?.read_to_string(&mut s)?;
    Ok(s)
}

/// Copies a member out to `dest`.
pub fn extract(ova: &Path, member: &str, dest: &Path) -> Result<()> {
    let entries = list(ova)?;
    let Some(e) = entries.iter().find(|e| e.name == member) else {
        bail!("{} has no member {member}", ova.display());
    };
    let mut out = File::create(dest)?;
    std::io::copy(&mut member_reader(ova, e)?, &mut out)?;
    Ok(())
}

/// What an OVF descriptor says, as far as the checks need it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ovf {
    /// `VirtualSystem ovf:id`.
    pub name: String,
    /// `OperatingSystemSection ovf:id`.
    pub os_id: String,
    /// `OperatingSystemSection/Description`.
    pub os_description: String,
    /// References: (id, href, size).
    pub files: Vec<(String, String, Option<u64>)>,
    /// Disks: (diskId, fileRef, capacity, format).
    pub disks: Vec<(String, String, u64, String)>,
    /// Hardware items: each a map of rasd field to value.
    pub items: Vec<BTreeMap<String, String>>,
    /// Whether an EulaSection is present.
    pub has_eula: bool,
}

impl Ovf {
    /// The items of one CIM resource type.
    pub fn items_of(&self, resource_type: u32) -> Vec<&BTreeMap<String, String>> {
        let t = resource_type.to_string();
        self.items
            .iter()
            .filter(|i| i.get("ResourceType") == Some(&t))
            .collect()
    }
}

/// Parses an OVF descriptor (namespace prefixes are ignored).
pub fn parse_ovf(xml: &str) -> Result<Ovf> {
    // Text is not trimmed event by event: the reader splits text at every entity
    // reference (`a &amp; b` is "a ", `amp`, " b"), and trimming the pieces would eat the
    // spaces around it. An element's whole text is trimmed when it ends.
    let mut r = quick_xml::Reader::from_str(xml);
    let mut ovf = Ovf::default();
    let mut stack: Vec<String> = Vec::new();
    let mut cur_item: Option<BTreeMap<String, String>> = None;
    let mut text = String::new();
    let local = |n: &str| n.rsplit(':').next().unwrap_or("").to_string();
    loop {
        let ev = r.read_event().context("parsing the OVF descriptor")?;
        let (start, empty) = match &ev {
            Event::Start(e) => (Some(e.clone()), false),
            Event::Empty(e) => (Some(e.clone()), true),
            _ => (None, false),
        };
        if let Some(e) = start {
            let name = local(e.name().as_ref());
            let mut attrs = BTreeMap::new();
            for a in e.attributes() {
                let a = a.context("parsing an OVF attribute")?;
                attrs.insert(
                    local(a.key.as_ref()),
                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .context("parsing an OVF attribute")?
                        .into_owned(),
                );
            }
            let get = |k: &str| attrs.get(k).cloned().unwrap_or_default();
            match name.as_str() {
                "VirtualSystem" => ovf.name = get("id"),
                "OperatingSystemSection" => ovf.os_id = get("id"),
                "EulaSection" => ovf.has_eula = true,
                "File" => ovf.files.push((
                    get("id"),
                    get("href"),
                    attrs.get("size").and_then(|s| s.parse().ok()),
                )),
                "Disk" => ovf.disks.push((
                    get("diskId"),
                    get("fileRef"),
                    get("capacity").parse().unwrap_or(0),
                    get("format"),
                )),
                "Item" if !empty => cur_item = Some(BTreeMap::new()),
                _ => {}
            }
            if !empty {
                stack.push(name);
            }
            text.clear();
            continue;
        }
        match ev {
            Event::Text(t) => text.push_str(&t.xml10_content()),
            Event::CData(c) => text.push_str(&c.xml10_content()),
            Event::GeneralRef(e) => match e.resolve_char_ref().context("parsing OVF text")? {
                Some(c) => text.push(c),
                None => match quick_xml::escape::resolve_predefined_entity(&e) {
                    Some(v) => text.push_str(v),
                    None => bail!("the OVF descriptor uses the undefined entity &{};", &*e),
                },
            },
            Event::End(_) => {
                let value = text.trim();
                let n = stack.len();
                if value.is_empty() {
                    // Whitespace between elements, or an element without text.
                } else if n >= 2 && stack[n - 2] == "Item" {
                    if let Some(i) = cur_item.as_mut() {
                        i.insert(stack[n - 1].clone(), value.to_string());
                    }
                } else if n >= 2
                    && stack[n - 2] == "OperatingSystemSection"
                    && stack[n - 1] == "Description"
                {
                    ovf.os_description = value.to_string();
                }
                text.clear();
                if stack.pop().as_deref() == Some("Item") {
                    if let Some(i) = cur_item.take() {
                        ovf.items.push(i);
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if ovf.name.is_empty() {
        bail!("the OVF descriptor has no VirtualSystem");
    }
    Ok(ovf)
}

/// The result of checking an OVA's structure.
#[derive(Debug, Clone)]
pub struct OvaCheck {
    /// The members in archive order.
    pub members: Vec<Entry>,
    /// The parsed descriptor.
    pub ovf: Ovf,
    /// The manifest's digest.
    pub digest: MfDigest,
}

/// Checks an OVA the way an importer would: the descriptor comes first, the manifest
/// last, the members between follow the References order, every reference is present
/// with its declared size, and every member's digest matches its `.mf` line.
pub fn check(ova: &Path) -> Result<OvaCheck> {
    let members = list(ova)?;
    let (Some(first), Some(last)) = (members.first(), members.last()) else {
        bail!("{} is an empty archive", ova.display());
    };
    if !first.name.ends_with(".ovf") {
        bail!(
            "the first member is {:?}; an OVA must start with its .ovf",
            first.name
        );
    }
    if !last.name.ends_with(".mf") {
        bail!(
            "the last member is {:?}; mesobake OVAs end with the .mf",
            last.name
        );
    }
    let ovf = parse_ovf(&read_member(ova, first)?)?;
    let middle: Vec<&str> = members[1..members.len() - 1]
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let refs: Vec<&str> = ovf.files.iter().map(|(_, h, _)| h.as_str()).collect();
    if middle != refs {
        bail!("the members between .ovf and .mf are {middle:?}, but the descriptor references {refs:?} in that order");
    }
    for (_, href, size) in &ovf.files {
        let e = members.iter().find(|e| &e.name == href).expect("checked");
        if let Some(s) = size {
            if *s != e.size {
                bail!(
                    "{href}: the descriptor says {s} bytes, the archive holds {}",
                    e.size
                );
            }
        }
    }
    let mf = read_member(ova, last)?;
    let mut listed = BTreeMap::new();
    let mut digest = None;
    for line in mf.lines().filter(|l| !l.trim().is_empty()) {
        let (algo, rest) = line
            .split_once('(')
            .ok_or_else(|| anyhow::anyhow!("bad .mf line {line:?}"))?;
        let (file, hexd) = rest
            .split_once(")=")
            .ok_or_else(|| anyhow::anyhow!("bad .mf line {line:?}"))?;
        let d: MfDigest = algo.trim().parse()?;
        if digest.is_some_and(|x| x != d) {
            bail!(".mf mixes digest algorithms");
        }
        digest = Some(d);
        listed.insert(file.to_string(), hexd.trim().to_ascii_lowercase());
    }
    let digest = digest.ok_or_else(|| anyhow::anyhow!("the .mf is empty"))?;
    for e in &members[..members.len() - 1] {
        let Some(want) = listed.remove(&e.name) else {
            bail!("{} is not listed in the .mf", e.name);
        };
        let mut h = hasher(digest);
        copy_hashing(member_reader(ova, e)?, &mut std::io::sink(), &mut h)?;
        let got = h.hex();
        if got != want {
            bail!(
                "{}: {} is {got}, the .mf says {want}",
                e.name,
                digest.label()
            );
        }
    }
    if let Some((f, _)) = listed.into_iter().next() {
        bail!("the .mf lists {f}, which is not in the archive");
    }
    Ok(OvaCheck {
        members,
        ovf,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> Appliance {
        Appliance {
            name: "node-1".into(),
            os: GuestOs::Debian64,
            cpus: 2,
            memory_mb: 2048,
            disk_capacity: 6 << 30,
        }
    }

    #[test]
    fn descriptor_round_trips_through_the_parser() {
        let disk = Member {
            name: "node-1-disk1.vmdk".into(),
            size: 1234,
        };
        let iso = Member {
            name: "node-1-seed.iso".into(),
            size: 4096,
        };
        let xml = descriptor(&app(), &disk, Some(&iso)).unwrap();
        let o = parse_ovf(&xml).unwrap();
        assert_eq!(o.name, "node-1");
        assert_eq!(o.os_id, "96");
        assert_eq!(o.os_description, "Debian_64");
        assert!(!o.has_eula);
        assert_eq!(o.files.len(), 2);
        assert_eq!(o.files[0].2, Some(1234));
        assert_eq!(o.disks[0].2, 6 << 30);
        assert_eq!(o.disks[0].3, VMDK_STREAM_URI);
        assert_eq!(o.disks[1].3, ISO_URI);
        assert_eq!(o.items_of(3)[0]["VirtualQuantity"], "2");
        assert_eq!(o.items_of(4)[0]["VirtualQuantity"], "2048");
        assert_eq!(o.items_of(10).len(), 1);
        assert_eq!(o.items_of(17)[0]["HostResource"], "/disk/vmdisk1");
        assert_eq!(o.items_of(15)[0]["HostResource"], "/disk/vmdisk2");
        // Names with XML specials are escaped, not injected.
        let mut a = app();
        a.name = "a<b&c".into();
        let o = parse_ovf(&descriptor(&a, &disk, None).unwrap()).unwrap();
        assert_eq!(o.name, "a<b&c");
        assert!(o.items_of(15).is_empty());
    }

    #[test]
    fn descriptor_bytes_are_pinned() {
        // The OVA is reproducible only while the descriptor's bytes are; this pins them
        // across XML writer upgrades (the file was written by quick-xml 0.37, and 0.42
        // writes the same bytes). Escaping in attributes and text is part of it.
        let disk = Member {
            name: "node-1-disk1.vmdk".into(),
            size: 1234,
        };
        let iso = Member {
            name: "node-1-seed.iso".into(),
            size: 4096,
        };
        let mut a = app();
        a.name = "node-1 <&\"'>".into();
        assert_eq!(
            descriptor(&a, &disk, Some(&iso)).unwrap(),
            include_str!("testdata/descriptor-with-seed.ovf")
        );
    }

    #[test]
    fn ovf_text_with_references_and_cdata_is_read_whole() {
        let xml = r#"<?xml version="1.0"?>
<Envelope xmlns:rasd="r"><VirtualSystem ovf:id="a &amp; b">
  <OperatingSystemSection ovf:id="96"><Description> Debian &#x5F;64 </Description></OperatingSystemSection>
  <Item>
    <rasd:ElementName>a &amp; b &lt;c&gt; &#65;</rasd:ElementName>
    <rasd:Caption><![CDATA[x < y]]></rasd:Caption>
    <rasd:Empty></rasd:Empty>
    <rasd:ResourceType>10</rasd:ResourceType>
  </Item>
</VirtualSystem></Envelope>"#;
        let o = parse_ovf(xml).unwrap();
        assert_eq!(o.name, "a & b");
        assert_eq!(o.os_description, "Debian _64");
        let item = &o.items_of(10)[0];
        assert_eq!(item["ElementName"], "a & b <c> A");
        assert_eq!(item["Caption"], "x < y");
        assert!(!item.contains_key("Empty"));
        let undefined = parse_ovf(&xml.replace("&amp; b &lt;", "&nbsp;")).unwrap_err();
        assert!(format!("{undefined:#}").contains("&nbsp;"), "{undefined:#}");
    }
}
