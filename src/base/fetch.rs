//! Getting a base image onto this machine: download with resume and progress, SHA256
//! verification, and the digest-keyed [`Cache`].
//!
//! The expected digest is always known before any byte of the image moves (given directly
//! or looked up in a `SHA256SUMS` file), so a cache hit needs no network at all, the download
//! is hashed while it is written, and a mismatch is caught before anything enters the cache.
//!
//! Local bases (a plain path or a `file://` URL) are verified and then used in place: they
//! are not copied into the cache, because the file is already on this machine and a copy
//! would only double the disk use. Callers must treat the returned path as read-only and
//! build on a copy (cached blobs are made read-only for the same reason).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::HumanBytes;
use sha2::{Digest, Sha256};

use super::cache::{hash_reader, normalize_sha256, Cache};
use super::proxy::{ProxyEnv, Route};
use crate::progress::ByteMeter as Meter;
use crate::run::{check_interrupted, verbose};
use crate::sums::Sums;

/// SHA256SUMS files are a few kilobytes; anything this big is not one.
const MAX_SUMS_BYTES: u64 = 16 << 20;

/// The most redirects one request follows (ureq's own default).
const MAX_REDIRECTS: u32 = 10;

/// A ureq response.
type Response = ureq::http::Response<ureq::Body>;

/// Where the expected SHA256 of a base image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The digest itself, 64 hex characters (an optional `sha256:` prefix is allowed).
    Sha256(String),
    /// The URL (or local path) of a `SHA256SUMS` file; the line for the image's file name
    /// (the last segment of its URL) is looked up in it.
    SumsUrl(String),
    /// A local `SHA256SUMS` file, looked up the same way.
    SumsFile(PathBuf),
}

pub use crate::progress::ProgressMode;

/// Tuning for [`fetch_with`]. [`FetchOptions::default`] is what [`fetch`] uses.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// How many requests one fetch may make before it gives up on transient failures
    /// (dropped connections, timeouts, HTTP 5xx). Each retry resumes where the last stopped.
    pub attempts: u32,
    /// The wait before the first retry; later retries wait proportionally longer.
    pub retry_delay: Duration,
    /// How long to wait for a TCP connection.
    pub connect_timeout: Duration,
    /// How long one read may stall before the attempt counts as failed.
    pub read_timeout: Duration,
    /// How progress is shown.
    pub progress: ProgressMode,
    /// Which proxy each URL goes through: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and
    /// `NO_PROXY` as this process's environment has them (see [`super::proxy`]).
    pub proxy: ProxyEnv,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            attempts: 5,
            retry_delay: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            progress: ProgressMode::Auto,
            proxy: ProxyEnv::from_env(),
        }
    }
}

/// The content does not hash to the expected digest. Nothing was cached, and a download
/// that produced it was deleted.
/// A download or local file did not have the digest it should have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "checksum mismatch for {url}\n  expected sha256: {expected}\n  actual sha256:   {actual}\n\
     The file was not used and nothing was cached. If the file was replaced upstream, \
     update the expected checksum (or its SHA256SUMS source); otherwise this copy is \
     corrupt or incomplete: fetch it again, from another mirror if that keeps failing."
)]
pub struct ChecksumMismatch {
    /// What was fetched (URL or path).
    pub url: String,
    /// The digest it should have had.
    pub expected: String,
    /// The digest it had.
    pub actual: String,
}

/// Other fetch failures that callers may want to tell apart (find them with
/// `err.downcast_ref::<FetchError>()`).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server answered 404.
    #[error("{url} was not found (HTTP 404); check the URL: the image may have moved or been removed from the mirror")]
    NotFound {
        /// The URL that was requested.
        url: String,
    },
    /// The server answered with another error status.
    #[error("{url}: the server answered HTTP {status} {reason}")]
    HttpStatus {
        /// The URL that was requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The status text the server sent.
        reason: String,
    },
    /// The SHA256SUMS text has no line for the file.
    #[error("no SHA256 entry for {file_name:?}")]
    MissingSum {
        /// The file name that was looked up.
        file_name: String,
    },
}

/// Fetches `url` (http, https, file, or a local path), checks it against `expected`, and
/// returns the path of a verified copy. See [`fetch_with`].
pub fn fetch(cache: &Cache, url: &str, expected: &Expected) -> Result<PathBuf> {
    fetch_with(cache, url, expected, &FetchOptions::default())
}

/// Fetches `url`, checks it against `expected`, and returns the path of a verified copy.
///
/// The expected digest is resolved first. For http and https, a cached blob with that
/// digest is returned without touching the network; otherwise the file is downloaded into
/// the cache's tmp dir (resuming a partial download left by an earlier run), hashed while
/// written, and published into the cache only if it matches. A mismatch is a
/// [`ChecksumMismatch`], and the partial file is deleted. A local path or
/// `file://` URL is verified and returned as it is, not copied into the cache.
///
/// Concurrent fetches of the same digest, from threads or processes, are serialised by a
/// per-digest lock: one downloads, the others wait and then find it in the cache.
pub fn fetch_with(
    cache: &Cache,
    url: &str,
    expected: &Expected,
    opts: &FetchOptions,
) -> Result<PathBuf> {
    let source = Source::parse(url)?;
    let want = resolve_expected(opts, expected, || source.file_name())
        .with_context(|| format!("finding the expected SHA256 of {url}"))?;
    match source {
        Source::Local(path) => verify_local(&path, &want, opts),
        Source::Http(url) => download(cache, &url, &want, opts),
    }
}

/// Where a base comes from.
enum Source {
    Http(String),
    Local(PathBuf),
}

impl Source {
    fn parse(url: &str) -> Result<Source> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Ok(Source::Http(url.to_string()));
        }
        if lower.starts_with("file://") {
            let rest = &url["file://".len()..];
            let path = rest
                .strip_prefix("localhost")
                .filter(|p| p.starts_with('/'))
                .unwrap_or(rest);
            if !path.starts_with('/') {
                bail!("the file URL {url} must have an absolute path, like file:///var/images/base.img");
            }
            return Ok(Source::Local(PathBuf::from(percent_decode(path))));
        }
        if url.contains("://") {
            bail!(
                "unsupported URL scheme in {url}: use http://, https://, file:// or a local path"
            );
        }
        Ok(Source::Local(PathBuf::from(url)))
    }

    /// The name a SHA256SUMS file would list this file under.
    fn file_name(&self) -> Result<String> {
        match self {
            Source::Http(url) => url_file_name(url),
            Source::Local(path) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .with_context(|| {
                    format!(
                        "{} has no file name to look up in SHA256SUMS",
                        path.display()
                    )
                }),
        }
    }
}

/// The decoded last path segment of an http(s) URL.
fn url_file_name(url: &str) -> Result<String> {
    let no_fragment = url.split('#').next().unwrap_or(url);
    let no_query = no_fragment.split('?').next().unwrap_or(no_fragment);
    let after_scheme = no_query
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(no_query);
    let path = after_scheme.split_once('/').map(|(_, p)| p).unwrap_or("");
    let last = path.rsplit('/').next().unwrap_or("");
    if last.is_empty() {
        bail!("cannot tell the file name in {url}, so it cannot be looked up in SHA256SUMS; give the SHA256 itself");
    }
    Ok(percent_decode(last))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An agent for one request along `route`. Status codes are left to the caller (a 416
/// on resume, 404 against 5xx), and redirects to [`get`], so that each hop takes the
/// route its own URL calls for.
fn make_agent(opts: &FetchOptions, route: &Route) -> Result<ureq::Agent> {
    let proxy = match route {
        Route::Proxy { var, url } => Some(ureq::Proxy::new(url).map_err(|e| {
            anyhow!(
                "{var} is {}, which is not a usable proxy URL: {e}",
                super::proxy::redact(url)
            )
        })?),
        Route::Direct | Route::Bypassed(_) => None,
    };
    Ok(ureq::Agent::config_builder()
        .proxy(proxy)
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(opts.connect_timeout))
        .timeout_per_read(Some(opts.read_timeout))
        .user_agent(concat!("mesobake/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent())
}

/// GETs `url` with `headers`, following redirects here rather than in ureq: a mirror
/// redirector may send a proxied request on to a host that NO_PROXY lists, or the other
/// way round. Network trouble is worth another attempt; a bad proxy setting or a bad
/// redirect is not.
fn get(opts: &FetchOptions, url: &str, headers: &[(&str, &str)]) -> Result<Response, Failure> {
    let mut current = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let route = opts.proxy.route(&current);
        if verbose() && route != Route::Direct {
            eprintln!("mesobake: {current}: {}", route.describe());
        }
        let agent = make_agent(opts, &route).map_err(Failure::Fatal)?;
        let mut req = agent.get(&current);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.call().map_err(|e| {
            let fatal = matches!(
                e,
                ureq::Error::BadUri(_)
                    | ureq::Error::InvalidProxyUrl
                    | ureq::Error::Http(_)
                    | ureq::Error::RequireHttpsOnly(_)
            );
            let err = match route {
                Route::Direct => anyhow!(e).context(format!("requesting {current}")),
                _ => anyhow!(e).context(format!("requesting {current} {}", route.describe())),
            };
            if fatal {
                Failure::Fatal(err)
            } else {
                Failure::Retry(err)
            }
        })?;
        if !resp.status().is_redirection() {
            return Ok(resp);
        }
        let location = header(&resp, "location").ok_or_else(|| {
            Failure::Fatal(anyhow!(
                "{current}: the server answered HTTP {} without saying where to",
                resp.status().as_u16()
            ))
        })?;
        current = resolve_location(&current, location).map_err(Failure::Fatal)?;
    }
    Err(Failure::Fatal(anyhow!(
        "{url}: more than {MAX_REDIRECTS} redirects"
    )))
}

/// A response header as text.
fn header<'r>(resp: &'r Response, name: &str) -> Option<&'r str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The URL a redirect's `Location` (absolute, scheme-relative, or relative to `base`)
/// points to. Dot segments are left for the server to resolve.
fn resolve_location(base: &str, location: &str) -> Result<String> {
    let loc = location.trim();
    if let Some((scheme, _)) = loc.split_once("://") {
        let is_scheme = scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b));
        if is_scheme && !scheme.is_empty() {
            let s = scheme.to_ascii_lowercase();
            if s != "http" && s != "https" {
                bail!("{base} redirects to {loc}, which is not an http or https URL");
            }
            return Ok(loc.to_string());
        }
    }
    let (scheme, rest) = base
        .split_once("://")
        .with_context(|| format!("{base} is not an absolute URL"))?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin = format!("{scheme}://{}", &rest[..authority_end]);
    if let Some(other) = loc.strip_prefix("//") {
        return Ok(format!("{scheme}://{other}"));
    }
    if loc.starts_with('/') {
        return Ok(format!("{origin}{loc}"));
    }
    let path = rest[authority_end..]
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    if loc.starts_with('?') {
        return Ok(format!("{origin}{path}{loc}"));
    }
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    Ok(format!(
        "{origin}{}{loc}",
        if dir.is_empty() { "/" } else { dir }
    ))
}

fn resolve_expected(
    opts: &FetchOptions,
    expected: &Expected,
    file_name: impl FnOnce() -> Result<String>,
) -> Result<String> {
    match expected {
        Expected::Sha256(d) => normalize_sha256(d),
        Expected::SumsUrl(sums) => {
            let name = file_name()?;
            let text = match Source::parse(sums)? {
                Source::Http(u) => fetch_text(opts, &u)?,
                Source::Local(p) => read_sums_file(&p)?,
            };
            sha256_in_sums(&text, &name).with_context(|| format!("looking up {name} in {sums}"))
        }
        Expected::SumsFile(path) => {
            let name = file_name()?;
            let text = read_sums_file(path)?;
            sha256_in_sums(&text, &name)
                .with_context(|| format!("looking up {name} in {}", path.display()))
        }
    }
}

/// The SHA256 that a SHA256SUMS text lists for `file_name`. The whole text must parse:
/// a damaged list says nothing trustworthy about any of its files.
fn sha256_in_sums(text: &str, file_name: &str) -> Result<String> {
    Sums::parse(text)?.sha256_of(file_name)?.ok_or_else(|| {
        FetchError::MissingSum {
            file_name: file_name.to_string(),
        }
        .into()
    })
}

fn read_sums_file(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .with_context(|| format!("reading the checksum file {}", path.display()))
}

/// Downloads a small text file (a SHA256SUMS) into memory; it is never cached, since it
/// is what tells us whether the cache is current.
fn fetch_text(opts: &FetchOptions, url: &str) -> Result<String> {
    let context = || format!("downloading the checksum file {url}");
    let mut resp = match get(opts, url, &[]) {
        Ok(r) => r,
        Err(Failure::Retry(e) | Failure::Fatal(e)) => return Err(e.context(context())),
    };
    if !resp.status().is_success() {
        return Err(status_error(url, &resp));
    }
    let mut text = String::new();
    resp.body_mut()
        .as_reader()
        .take(MAX_SUMS_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(context)?;
    if text.len() as u64 > MAX_SUMS_BYTES {
        bail!(
            "{url} is larger than {}; is it really a SHA256SUMS file?",
            HumanBytes(MAX_SUMS_BYTES)
        );
    }
    Ok(text)
}

fn status_error(url: &str, resp: &Response) -> anyhow::Error {
    let status = resp.status();
    if status == ureq::http::StatusCode::NOT_FOUND {
        FetchError::NotFound {
            url: url.to_string(),
        }
        .into()
    } else {
        FetchError::HttpStatus {
            url: url.to_string(),
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or_default().to_string(),
        }
        .into()
    }
}

fn verify_local(path: &Path, want: &str, opts: &FetchOptions) -> Result<PathBuf> {
    let path = fs::canonicalize(path)
        .with_context(|| format!("opening the local base image {}", path.display()))?;
    let mut file = File::open(&path)
        .with_context(|| format!("opening the local base image {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).ok();
    let mut meter = Meter::new(
        opts.progress,
        format!("verifying {}", display_name(&path.to_string_lossy())),
    );
    meter.begin(0, size);
    let mut hasher = Sha256::new();
    hash_reader(&mut file, &mut hasher, |n| meter.update(n))
        .with_context(|| format!("hashing the local base image {}", path.display()))?;
    meter.finish();
    let actual = hex::encode(hasher.finalize());
    if actual != want {
        return Err(ChecksumMismatch {
            url: path.display().to_string(),
            expected: want.to_string(),
            actual,
        }
        .into());
    }
    Ok(path)
}

fn download(cache: &Cache, url: &str, want: &str, opts: &FetchOptions) -> Result<PathBuf> {
    if let Some(hit) = cache.get(want) {
        if verbose() {
            eprintln!("mesobake: {url}: using the cached copy {}", hit.display());
        }
        return Ok(hit);
    }
    let _entry = cache.lock_entry(&format!("sha256-{want}"))?;
    // Whoever held the lock before us may have just downloaded this very file.
    if let Some(hit) = cache.get(want) {
        return Ok(hit);
    }
    let partial_path = cache.tmp_dir().join(format!("{want}.partial"));
    let mut meter = Meter::new(opts.progress, display_name(url));
    let mut restarted = false;
    loop {
        let got = download_to_partial(url, &partial_path, opts, &mut meter)?;
        if got.sha256 == want {
            break;
        }
        fs::remove_file(&partial_path).with_context(|| {
            format!(
                "removing the mismatched download {}",
                partial_path.display()
            )
        })?;
        // A resumed download glues an old prefix to a new suffix; if the file changed in
        // between, the mismatch says nothing about the current file. One clean retry makes a
        // reported mismatch always refer to a complete, fresh download.
        if got.spliced && !restarted {
            meter.note(&format!(
                "mesobake: {url}: checksum mismatch after resuming; downloading again from the start"
            ));
            restarted = true;
            continue;
        }
        return Err(ChecksumMismatch {
            url: url.to_string(),
            expected: want.to_string(),
            actual: got.sha256,
        }
        .into());
    }
    cache
        .insert_file(&partial_path, want, url)
        .with_context(|| format!("adding {url} to the cache"))
}

struct Downloaded {
    sha256: String,
    /// Whether the bytes came from more than one response (a resumed download).
    spliced: bool,
}

/// An attempt's failure: worth another attempt (network trouble), or not.
enum Failure {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

fn download_to_partial(
    url: &str,
    path: &Path,
    opts: &FetchOptions,
    meter: &mut Meter,
) -> Result<Downloaded> {
    let mut part = Partial::open(path, url, meter)?;
    let attempts = opts.attempts.max(1);
    let mut attempt = 1;
    loop {
        let failure = match transfer(opts, url, &mut part, meter) {
            Ok(()) => break,
            Err(f) => f,
        };
        let (err, retry) = match failure {
            Failure::Retry(e) => (e, attempt < attempts),
            Failure::Fatal(e) => (e, false),
        };
        if !retry {
            meter.abandon();
            if part.len == 0 {
                // Nothing worth resuming; do not leave an empty file behind.
                let _ = fs::remove_file(path);
                return Err(err.context(format!("downloading {url}")));
            }
            return Err(err.context(format!(
                "downloading {url} ({} kept in {}; run again to resume)",
                HumanBytes(part.len),
                path.display()
            )));
        }
        let delay = opts.retry_delay * attempt;
        attempt += 1;
        let resume = if part.len > 0 {
            format!(", resuming at {}", HumanBytes(part.len))
        } else {
            String::new()
        };
        meter.note(&format!(
            "mesobake: {err:#}; retrying in {:.1}s (attempt {attempt} of {attempts}){resume}",
            delay.as_secs_f64()
        ));
        sleep_interruptibly(delay).with_context(|| {
            format!(
                "downloading {url} (the partial download {} is kept for the next run)",
                path.display()
            )
        })?;
    }
    meter.finish();
    Ok(Downloaded {
        sha256: hex::encode(part.hasher.finalize()),
        spliced: part.spliced,
    })
}

fn sleep_interruptibly(total: Duration) -> Result<()> {
    let deadline = Instant::now() + total;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
}

/// The `.partial` file, with the running hash of what it holds.
struct Partial {
    file: File,
    path: PathBuf,
    hasher: Sha256,
    len: u64,
    spliced: bool,
}

impl Partial {
    /// Opens (or creates) the partial file and hashes what an earlier run left in it, so
    /// the final digest covers the whole file without reading it again at the end.
    fn open(path: &Path, url: &str, meter: &mut Meter) -> Result<Partial> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening the partial download {}", path.display()))?;
        let mut hasher = Sha256::new();
        let existing = file.metadata().map(|m| m.len()).unwrap_or(0);
        let label = meter.label().to_string();
        if existing > 0 {
            meter.note(&format!(
                "mesobake: {url}: resuming an earlier download, checking the {} already here",
                HumanBytes(existing)
            ));
            meter.set_label(format!("checking {label} (partial)"));
            meter.begin(0, Some(existing));
        }
        let len = hash_reader(&mut file, &mut hasher, |n| meter.update(n))
            .with_context(|| format!("hashing the partial download {}", path.display()))?;
        if existing > 0 {
            meter.clear();
            meter.set_label(label);
        }
        Ok(Partial {
            file,
            path: path.to_path_buf(),
            hasher,
            len,
            spliced: false,
        })
    }

    /// Throws away what is held and starts from byte zero.
    fn restart(&mut self) -> Result<(), Failure> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(|_| ()))
            .with_context(|| format!("truncating the partial download {}", self.path.display()))
            .map_err(Failure::Fatal)?;
        self.hasher = Sha256::new();
        self.len = 0;
        self.spliced = false;
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> Result<(), Failure> {
        self.file
            .write_all(data)
            .with_context(|| format!("writing the partial download {}", self.path.display()))
            .map_err(Failure::Fatal)?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }
}

/// One request: asks for the rest of the file (or all of it) and appends the body.
fn transfer(
    opts: &FetchOptions,
    url: &str,
    part: &mut Partial,
    meter: &mut Meter,
) -> Result<(), Failure> {
    // At most two rounds: a resume the server cannot honour restarts once from byte zero.
    loop {
        let resuming = part.len > 0;
        let range = format!("bytes={}-", part.len);
        // Identity encoding keeps byte offsets meaningful for Range and Content-Length.
        let mut headers = vec![("Accept-Encoding", "identity")];
        if resuming {
            headers.push(("Range", range.as_str()));
        }
        let resp = get(opts, url, &headers)?;
        let status = resp.status().as_u16();
        if status == 416 && resuming {
            // The partial is at least as long as the file. If the server says it is
            // exactly as long, the partial is complete (the hash check decides the rest).
            let total =
                header(&resp, "content-range").and_then(|v| parse_content_range(v).map(|r| r.1));
            if total == Some(Some(part.len)) {
                return Ok(());
            }
            meter.note(&format!(
                "mesobake: {url}: the server cannot resume this download; starting over"
            ));
            part.restart()?;
            continue;
        }
        if !resp.status().is_success() {
            let err = status_error(url, &resp);
            let transient = status == 408 || status == 429 || status >= 500;
            return Err(if transient {
                Failure::Retry(err)
            } else {
                Failure::Fatal(err)
            });
        }
        let content_length =
            header(&resp, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
        let total = match status {
            206 if resuming => match header(&resp, "content-range").and_then(parse_content_range) {
                Some((start, total)) if start == part.len => {
                    part.spliced = true;
                    total.or(content_length.map(|l| l + start))
                }
                _ => {
                    meter.note(&format!(
                        "mesobake: {url}: the server resumed at the wrong offset; starting over"
                    ));
                    part.restart()?;
                    continue;
                }
            },
            206 => {
                return Err(Failure::Fatal(anyhow!(
                "{url}: the server sent a partial response (206) to a request for the whole file"
            )))
            }
            _ => {
                if resuming {
                    meter.note(&format!(
                        "mesobake: {url}: the server does not support resuming; downloading from the start"
                    ));
                    part.restart()?;
                }
                content_length
            }
        };
        meter.begin(part.len, total);
        return append_body(url, resp, total, part, meter);
    }
}

/// Appends a response's body to the partial file; a body shorter than `total` is a
/// transient failure (the next attempt resumes).
fn append_body(
    url: &str,
    mut resp: Response,
    total: Option<u64>,
    part: &mut Partial,
    meter: &mut Meter,
) -> Result<(), Failure> {
    let mut body = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        check_interrupted().map_err(Failure::Fatal)?;
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Failure::Retry(
                    anyhow!(e).context(format!("reading {url} after {}", HumanBytes(part.len))),
                ))
            }
        };
        part.append(&buf[..n])?;
        meter.update(part.len);
    }
    if let Some(total) = total {
        if part.len < total {
            return Err(Failure::Retry(anyhow!(
                "{url}: the connection closed after {} of {} bytes",
                part.len,
                total
            )));
        }
    }
    Ok(())
}

/// Parses `bytes START-END/TOTAL` (or `bytes */TOTAL`) into (START, TOTAL); TOTAL may be
/// unknown (`*`). For the `*/TOTAL` form START is reported as 0.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let start = if range.trim() == "*" {
        0
    } else {
        range.split_once('-')?.0.trim().parse().ok()?
    };
    Some((start, total))
}

/// The file name part of a URL or path, for progress messages.
fn display_name(url: &str) -> String {
    let trimmed = url.split(['?', '#']).next().unwrap_or(url);
    trimmed
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or(url)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn url_file_names() {
        assert_eq!(
            url_file_name("https://h/a/b/noble%2Bx.img?x=1#f").unwrap(),
            "noble+x.img"
        );
        assert!(url_file_name("https://host").is_err());
        assert!(url_file_name("https://host/dir/").is_err());
    }

    #[test]
    fn sources() {
        assert!(matches!(
            Source::parse("HTTPS://x/y").unwrap(),
            Source::Http(_)
        ));
        match Source::parse("file:///srv/my%20img.qcow2").unwrap() {
            Source::Local(p) => assert_eq!(p, Path::new("/srv/my img.qcow2")),
            Source::Http(_) => panic!("file URL parsed as http"),
        }
        match Source::parse("file://localhost/srv/a").unwrap() {
            Source::Local(p) => assert_eq!(p, Path::new("/srv/a")),
            Source::Http(_) => panic!("file URL parsed as http"),
        }
        assert!(Source::parse("file://relative/x").is_err());
        assert!(Source::parse("ftp://x/y").is_err());
        assert!(matches!(
            Source::parse("images/base.img").unwrap(),
            Source::Local(_)
        ));
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, None)));
        assert_eq!(parse_content_range("bytes */200"), Some((0, Some(200))));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn redirect_locations_resolve_against_the_request() {
        let base = "https://mirror.example/a/b/noble.img?x=1";
        let cases = [
            ("http://other/x.img", "http://other/x.img"),
            ("HTTPS://Other/x", "HTTPS://Other/x"),
            ("//cdn.example/x.img", "https://cdn.example/x.img"),
            ("/top.img", "https://mirror.example/top.img"),
            ("c/next.img", "https://mirror.example/a/b/c/next.img"),
            ("?y=2", "https://mirror.example/a/b/noble.img?y=2"),
        ];
        for (loc, want) in cases {
            assert_eq!(resolve_location(base, loc).unwrap(), want, "{loc}");
        }
        assert_eq!(
            resolve_location("http://h:8080", "x").unwrap(),
            "http://h:8080/x"
        );
        let err = resolve_location(base, "file:///etc/passwd").unwrap_err();
        assert!(
            err.to_string().contains("not an http or https URL"),
            "{err}"
        );
    }

    #[test]
    fn sums_lookup_names_a_missing_file_and_a_bad_line() {
        let err = sha256_in_sums(&format!("{A}  other.img\n"), "noble.img").unwrap_err();
        assert!(format!("{err:#}").contains("\"noble.img\""), "{err:#}");
        assert!(matches!(
            err.downcast_ref::<FetchError>(),
            Some(FetchError::MissingSum { .. })
        ));
        let bad = sha256_in_sums(&format!("{A}  noble.img\nabc  x\n"), "noble.img").unwrap_err();
        assert!(format!("{bad:#}").contains("line 2"), "{bad:#}");
        assert_eq!(
            sha256_in_sums(&format!("{A} *noble.img\n"), "noble.img").unwrap(),
            A
        );
    }

    #[test]
    fn local_files_are_verified_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(dir.path().join("cache"))).unwrap();
        let img = dir.path().join("base.img");
        fs::write(&img, b"local image").unwrap();
        let good = hex::encode(Sha256::digest(b"local image"));
        let opts = FetchOptions {
            progress: ProgressMode::Quiet,
            ..FetchOptions::default()
        };

        let got = fetch_with(
            &cache,
            img.to_str().unwrap(),
            &Expected::Sha256(good.clone()),
            &opts,
        )
        .unwrap();
        assert_eq!(got, fs::canonicalize(&img).unwrap());
        assert!(
            cache.get(&good).is_none(),
            "local bases are not copied into the cache"
        );

        let url = format!("file://{}", img.display());
        let sums = dir.path().join("SHA256SUMS");
        fs::write(&sums, format!("{good} *base.img\n")).unwrap();
        assert_eq!(
            fetch_with(&cache, &url, &Expected::SumsFile(sums), &opts).unwrap(),
            got
        );

        let err = fetch_with(&cache, &url, &Expected::Sha256(A.into()), &opts).unwrap_err();
        match err.downcast_ref::<ChecksumMismatch>() {
            Some(ChecksumMismatch {
                expected, actual, ..
            }) => {
                assert_eq!(expected, A);
                assert_eq!(actual, &good);
            }
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        assert!(img.exists(), "a user's own file is never deleted");
    }
}
