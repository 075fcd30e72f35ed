//! Reading and writing files inside a mounted image root without ever leaving it.
//!
//! Images are full of absolute symlinks (`/etc/zookeeper/conf` is an alternatives chain,
//! `/etc/resolv.conf` often points into /run). Followed from the host, such a link lands
//! in the host's /etc. Every path here is resolved by the kernel with `openat2` and
//! `RESOLVE_IN_ROOT`, which treats the image root as `/` for absolute links and `..`,
//! exactly as the guest will see them.

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// A directory treated as the root of an image.
#[derive(Debug)]
pub struct ImageRoot {
    path: PathBuf,
    fd: OwnedFd,
}

/// The in-root path of a file: relative, with no `..` and no empty parts.
fn clean(rel: &str) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(rel).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => bail!("{rel:?}: a path inside the image may not contain '..'"),
            Component::Prefix(_) => bail!("{rel:?}: not a path"),
        }
    }
    Ok(out)
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

impl ImageRoot {
    /// Opens `path` as an image root.
    pub fn open(path: &Path) -> Result<ImageRoot> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening image root {}", path.display()))?;
        Ok(ImageRoot {
            path: path.to_owned(),
            fd,
        })
    }

    /// The root directory on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_in(&self, rel: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        let rel: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        rustix::fs::openat2(
            &self.fd,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            resolve_flags(),
        )
    }

    /// The host path of an open descriptor (what the kernel resolved to).
    fn host_path(fd: &OwnedFd) -> Result<PathBuf> {
        let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
        std::fs::read_link(&link).with_context(|| format!("reading {link}"))
    }

    /// Resolves an existing in-image path to its host path.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf> {
        let r = clean(rel)?;
        let fd = self
            .open_in(&r, OFlags::PATH)
            .with_context(|| format!("resolving /{} in the image", r.display()))?;
        Self::host_path(&fd)
    }

    /// Whether an in-image path exists (following links inside the image).
    pub fn exists(&self, rel: &str) -> bool {
        clean(rel)
            .map(|r| self.open_in(&r, OFlags::PATH).is_ok())
            .unwrap_or(false)
    }

    /// Reads an in-image file.
    pub fn read_to_string(&self, rel: &str) -> Result<String> {
        let r = clean(rel)?;
        let fd = self
            .open_in(&r, OFlags::RDONLY)
            .with_context(|| format!("opening /{} in the image", r.display()))?;
        let mut f = std::fs::File::from(fd);
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s)
            .with_context(|| format!("reading /{} in the image", r.display()))?;
        Ok(s)
    }

    /// Creates a directory and its parents inside the image; returns its host path.
    pub fn mkdir_all(&self, rel: &str, mode: u32) -> Result<PathBuf> {
        let r = clean(rel)?;
        let fd = self.mkdir_fd(&r, mode)?;
        Self::host_path(&fd)
    }

    fn mkdir_fd(&self, r: &Path, mode: u32) -> Result<OwnedFd> {
        let mut cur = PathBuf::new();
        let mut dir = self.open_in(&cur, OFlags::PATH | OFlags::DIRECTORY)?;
        for c in r.components() {
            cur.push(c);
            dir = match self.open_in(&cur, OFlags::PATH | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    // The parent is already resolved inside the root; create the last
                    // component relative to it (never through a link). A dangling link
                    // gets its target created inside the root, as `mkdir -p` in a chroot
                    // would.
                    match rustix::fs::mkdirat(&dir, c.as_os_str(), Mode::from_raw_mode(mode)) {
                        Ok(()) => {}
                        Err(Errno::EXIST) => {
                            let real = self.follow_final_link(&cur, 0)?;
                            if real != cur {
                                self.mkdir_fd(&real, mode)?;
                            }
                        }
                        Err(e) => {
                            return Err(e).with_context(|| {
                                format!("creating /{} in the image", cur.display())
                            })
                        }
                    }
                    self.open_in(&cur, OFlags::PATH | OFlags::DIRECTORY)
                        .with_context(|| format!("opening /{} in the image", cur.display()))?
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("opening /{} in the image", cur.display()))
                }
            };
        }
        Ok(dir)
    }

    /// Writes a file inside the image atomically (temp file + rename), owned by root with
    /// `mode`. A symlink at `rel` is followed inside the image, so writing
    /// `etc/zookeeper/conf/zoo.cfg` lands where the guest would read it.
    pub fn write(&self, rel: &str, data: &[u8], mode: u32) -> Result<()> {
        self.write_with(rel, mode, |f| f.write_all(data))
    }

    /// Like [`ImageRoot::write`], with the content streamed from an open file: holes
    /// stay holes (and so do runs of zeros), and memory use stays at one buffer
    /// whatever the file's size.
    pub fn write_from(&self, rel: &str, src: &std::fs::File, mode: u32) -> Result<()> {
        self.write_with(rel, mode, |f| copy_sparse(src, f))
    }

    fn write_with(
        &self,
        rel: &str,
        mode: u32,
        fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
    ) -> Result<()> {
        let r = self.follow_final_link(&clean(rel)?, 0)?;
        let (parent, name) = split(&r)?;
        let dir = self.mkdir_fd(parent, 0o755)?;
        let tmp_name = format!(".{}.mesobake-tmp", name.to_string_lossy());
        let fd = rustix::fs::openat(
            &dir,
            tmp_name.as_str(),
            OFlags::CREATE | OFlags::TRUNC | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .with_context(|| format!("creating /{} in the image", r.display()))?;
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::ROOT),
            Some(rustix::fs::Gid::ROOT),
        )
        .ok();
        // After the chown, which clears setuid and setgid bits.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            .with_context(|| format!("setting the mode of /{}", r.display()))?;
        let mut f = std::fs::File::from(fd);
        fill(&mut f).with_context(|| format!("writing /{} in the image", r.display()))?;
        f.flush()?;
        drop(f);
        rustix::fs::renameat(&dir, tmp_name.as_str(), &dir, name)
            .with_context(|| format!("renaming into /{} in the image", r.display()))?;
        Ok(())
    }

    /// If the last component of `r` is a symlink, returns the in-root path it points to
    /// (recursively), so that the write goes to the link's target inside the image.
    fn follow_final_link(&self, r: &Path, depth: u32) -> Result<PathBuf> {
        if depth > 40 {
            bail!(
                "/{}: too many levels of symbolic links in the image",
                r.display()
            );
        }
        let (parent, name) = split(r)?;
        let Ok(dir) = self.open_in(parent, OFlags::PATH | OFlags::DIRECTORY) else {
            return Ok(r.to_owned());
        };
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                let target = rustix::fs::readlinkat(&dir, name, Vec::new())?;
                let target = Path::new(OsStr::from_bytes(target.as_bytes()));
                // Absolute links are relative to the image root; relative ones to the
                // link's directory, resolved inside the root.
                let next = if target.is_absolute() {
                    lexical_in_root(Path::new(""), target)
                } else {
                    let parent_host = Self::host_path(&dir)?;
                    let parent_rel = parent_host
                        .strip_prefix(&self.path)
                        .unwrap_or(Path::new(""))
                        .to_owned();
                    lexical_in_root(&parent_rel, target)
                };
                self.follow_final_link(&next, depth + 1)
            }
            _ => Ok(r.to_owned()),
        }
    }

    /// Creates (or replaces) a symlink inside the image.
    pub fn symlink(&self, target: &Path, rel: &str) -> Result<()> {
        let r = clean(rel)?;
        let (parent, name) = split(&r)?;
        let dir = self.mkdir_fd(parent, 0o755)?;
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("replacing /{} in the image", r.display()))
            }
        }
        rustix::fs::symlinkat(target, &dir, name)
            .with_context(|| format!("creating link /{} in the image", r.display()))
    }

    /// Removes a file or symlink inside the image; a missing file is fine.
    pub fn remove_file(&self, rel: &str) -> Result<()> {
        let r = clean(rel)?;
        let (parent, name) = split(&r)?;
        let Ok(dir) = self.open_in(parent, OFlags::PATH | OFlags::DIRECTORY) else {
            return Ok(());
        };
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing /{} in the image", r.display())),
        }
    }

    /// Removes every entry inside an in-image directory (not the directory itself), never
    /// crossing into a mount point.
    pub fn empty_dir(&self, rel: &str) -> Result<()> {
        let host = match self.resolve(rel) {
            Ok(h) => h,
            Err(_) => return Ok(()),
        };
        let live = super::guard::mounts_under(&host)?;
        if !live.is_empty() {
            bail!("not emptying /{rel} in the image: something is mounted under it");
        }
        for e in std::fs::read_dir(&host).with_context(|| format!("listing {}", host.display()))? {
            let p = e?.path();
            let ft = std::fs::symlink_metadata(&p)?.file_type();
            if ft.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .with_context(|| format!("removing {}", p.display()))?;
        }
        Ok(())
    }

    /// The image's file descriptor, for callers that need `*at` calls.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Copies `src` (its size as it is now) into the empty `dst`, leaving holes where `src`
/// has holes or blocks of zeros. Reads and writes at offsets, one buffer at a time.
fn copy_sparse(src: &std::fs::File, dst: &std::fs::File) -> std::io::Result<()> {
    use rustix::fs::SeekFrom;
    const CHUNK: usize = 1 << 20;
    let len = rustix::fs::fstat(src)?.st_size as u64;
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < len {
        // The next data extent; a file system that cannot tell says "all data", and the
        // zero check below still keeps the copy sparse.
        let start = match rustix::fs::seek(src, SeekFrom::Data(off)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::NOTSUP) => off,
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(src, SeekFrom::Hole(start)) {
            Ok(h) => h.min(len),
            Err(_) => len,
        };
        let mut pos = start;
        while pos < end {
            let want = (end - pos).min(CHUNK as u64) as usize;
            let n = rustix::io::pread(src, &mut buf[..want], pos)?;
            if n == 0 {
                // The file shrank while it was copied: what is left reads as zeros.
                break;
            }
            let chunk = &buf[..n];
            if chunk.iter().any(|&b| b != 0) {
                let mut done = 0;
                while done < n {
                    done += rustix::io::pwrite(dst, &chunk[done..], pos + done as u64)?;
                }
            }
            pos += n as u64;
        }
        if end <= start {
            // Data only past the size taken at the start: the file grew; not copied.
            break;
        }
        off = end;
    }
    dst.set_len(len)
}

fn split(r: &Path) -> Result<(&Path, &OsStr)> {
    let name = r
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("/{}: not a file path", r.display()))?;
    Ok((r.parent().unwrap_or(Path::new("")), name))
}

/// Joins `target` onto `base` the way a chroot would: `..` never climbs above the root.
fn lexical_in_root(base: &Path, target: &Path) -> PathBuf {
    let mut parts: Vec<&OsStr> = base.iter().collect();
    for c in target.components() {
        match c {
            Component::RootDir => parts.clear(),
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(n) => parts.push(n),
            _ => {}
        }
    }
    parts.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_symlink_chain_is_followed_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("etc/zookeeper/conf_example")).unwrap();
        std::fs::create_dir_all(root.join("etc/alternatives")).unwrap();
        symlink(
            "/etc/zookeeper/conf_example",
            root.join("etc/alternatives/zookeeper-conf"),
        )
        .unwrap();
        symlink(
            "/etc/alternatives/zookeeper-conf",
            root.join("etc/zookeeper/conf"),
        )
        .unwrap();
        let ir = ImageRoot::open(root).unwrap();
        ir.write(
            "etc/zookeeper/conf/zoo.cfg",
            b"dataDir=/var/lib/zookeeper\n",
            0o644,
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/zookeeper/conf_example/zoo.cfg")).unwrap(),
            "dataDir=/var/lib/zookeeper\n"
        );
        assert!(!Path::new("/etc/zookeeper/conf_example/zoo.cfg.mesobake-test").exists());
    }

    #[test]
    fn a_link_to_a_host_path_never_writes_on_the_host() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // Both an absolute link and a ../ climb point at a real host directory.
        symlink(outside.path(), root.join("etc/abs")).unwrap();
        symlink(
            "../../../../../../../../..".to_string() + &outside.path().to_string_lossy(),
            root.join("etc/rel"),
        )
        .unwrap();
        let ir = ImageRoot::open(&root).unwrap();
        ir.write("etc/abs/x", b"1", 0o644).unwrap();
        ir.write("etc/rel/y", b"2", 0o644).unwrap();
        // A final-component link to a host file is also followed inside the root.
        symlink(outside.path().join("z"), root.join("etc/z")).unwrap();
        ir.write("etc/z", b"3", 0o644).unwrap();
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing may land outside the root"
        );
        let inside = root.join(outside.path().strip_prefix("/").unwrap());
        assert_eq!(std::fs::read_to_string(inside.join("x")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(inside.join("y")).unwrap(), "2");
        assert_eq!(std::fs::read_to_string(inside.join("z")).unwrap(), "3");
    }

    #[test]
    fn dotdot_in_a_requested_path_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let ir = ImageRoot::open(d.path()).unwrap();
        assert!(ir.write("etc/../../x", b"", 0o644).is_err());
    }

    #[test]
    fn modes_are_set_and_dirs_created() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let ir = ImageRoot::open(d.path()).unwrap();
        ir.write("usr/lib/mesobake/run", b"#!/bin/sh\n", 0o755)
            .unwrap();
        let m = std::fs::metadata(d.path().join("usr/lib/mesobake/run")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        assert_eq!(
            ir.read_to_string("usr/lib/mesobake/run").unwrap(),
            "#!/bin/sh\n"
        );
        assert!(ir.exists("usr/lib/mesobake"));
    }
}
