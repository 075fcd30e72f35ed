//! Download, verification and cache behaviour of `mesobake::base::fetch`, against a small
//! HTTP server (and a forward proxy) on 127.0.0.1 that this file runs itself (no external
//! network).

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesobake::base::cache::Cache;
use mesobake::base::fetch::{
    fetch_with, ChecksumMismatch, Expected, FetchError, FetchOptions, ProgressMode,
};
use mesobake::base::proxy::ProxyEnv;
use sha2::{Digest, Sha256};

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    /// Paths answered with a 302 to the given Location.
    redirects: HashMap<String, String>,
    seen: Vec<Seen>,
    /// Body bytes actually written, over all responses.
    body_bytes: u64,
    /// The next this-many responses with a body stop after `truncate_after` bytes and drop
    /// the connection, as a flaky mirror would.
    truncate_next: usize,
    truncate_after: usize,
    /// Answer Range requests with the whole file (200), as servers without range support do.
    ignore_range: bool,
    /// Pause between body chunks, to make downloads overlap in the concurrency test.
    chunk_delay: Duration,
}

/// A one-request-per-connection HTTP/1.1 server on an ephemeral loopback port.
struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        listener
            .set_nonblocking(true)
            .expect("making the listener non-blocking");
        let addr = listener.local_addr().expect("reading the listener address");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let state = state.clone();
                            std::thread::spawn(move || serve(stream, &state));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Server {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn put(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), body.into());
    }

    fn redirect(&self, path: &str, location: &str) {
        self.with(|s| s.redirects.insert(path.to_string(), location.to_string()));
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    fn seen(&self) -> Vec<Seen> {
        self.with(|s| s.seen.clone())
    }

    fn requests_for(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|r| r.path == path).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("range") {
                        range = Some(v.trim().to_string());
                    }
                }
            }
        }
    }

    let (head, body, cut) = {
        let mut s = state.lock().unwrap();
        s.seen.push(Seen {
            path: path.clone(),
            range: range.clone(),
        });
        match s.files.get(&path).cloned() {
            None if s.redirects.contains_key(&path) => (
                format!(
                    "HTTP/1.1 302 Found\r\nLocation: {}\r\nContent-Length: 0\r\n",
                    s.redirects[&path]
                ),
                Vec::new(),
                None,
            ),
            None => (
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n".to_string(),
                Vec::new(),
                None,
            ),
            Some(file) => {
                let start = range
                    .as_deref()
                    .filter(|_| !s.ignore_range)
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse::<usize>().ok());
                let len = file.len();
                let (head, body) = match start {
                    Some(n) if n >= len => (
                        format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n"),
                        Vec::new(),
                    ),
                    Some(n) => (
                        format!(
                            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {n}-{}/{len}\r\nContent-Length: {}\r\n",
                            len - 1,
                            len - n
                        ),
                        file[n..].to_vec(),
                    ),
                    None => (format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n"), file),
                };
                let cut = if s.truncate_next > 0 && !body.is_empty() {
                    s.truncate_next -= 1;
                    Some(s.truncate_after.min(body.len()))
                } else {
                    None
                };
                (head, body, cut)
            }
        }
    };

    let mut out = stream;
    let head = format!("{head}Accept-Ranges: bytes\r\nConnection: close\r\n\r\n");
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let to_send = &body[..cut.unwrap_or(body.len())];
    let delay = state.lock().unwrap().chunk_delay;
    for chunk in to_send.chunks(64 * 1024) {
        if out.write_all(chunk).is_err() {
            return;
        }
        state.lock().unwrap().body_bytes += chunk.len() as u64;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
    let _ = out.flush();
    // A clean FIN after a short body is how a dropped mirror connection looks to the client.
    let _ = out.shutdown(Shutdown::Write);
    // Wait for the client to close so no unread data turns the close into a reset.
    let mut sink = [0u8; 1024];
    while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
}

/// Deterministic, incompressible-looking test data.
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn opts() -> FetchOptions {
    FetchOptions {
        attempts: 3,
        retry_delay: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        progress: ProgressMode::Quiet,
        // Not this process's environment: a proxy set on the test machine must not
        // carry the loopback server's traffic.
        proxy: ProxyEnv::default(),
    }
}

fn temp_cache() -> (tempfile::TempDir, Cache) {
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let cache = Cache::open(Some(dir.path().join("cache"))).expect("opening a temp cache");
    (dir, cache)
}

fn tmp_entries(cache: &Cache) -> Vec<PathBuf> {
    fs::read_dir(cache.tmp_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

fn make_writable(path: &Path) {
    let mut perms = fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(path, perms).unwrap();
}

const SIZE: usize = 1 << 20;

#[test]
fn fresh_download_is_verified_and_cached() {
    let server = Server::start();
    let data = image(SIZE, 1);
    server.put("/noble.img", data.clone());
    let (_d, cache) = temp_cache();

    let opts = FetchOptions {
        progress: ProgressMode::Lines,
        ..opts()
    };
    let path = fetch_with(
        &cache,
        &server.url("/noble.img"),
        &Expected::Sha256(sha(&data)),
        &opts,
    )
    .unwrap();

    assert_eq!(path, cache.blob_path(&sha(&data)));
    assert_eq!(fs::read(&path).unwrap(), data);
    assert_eq!(cache.get(&sha(&data)), Some(path));
    assert_eq!(
        cache.info(&sha(&data)).unwrap().source,
        server.url("/noble.img")
    );
    assert!(
        tmp_entries(&cache).is_empty(),
        "no partial left: {:?}",
        tmp_entries(&cache)
    );
}

#[test]
fn second_fetch_is_a_cache_hit_without_requests() {
    let server = Server::start();
    let data = image(SIZE, 2);
    server.put("/noble.img", data.clone());
    let (_d, cache) = temp_cache();
    let expected = Expected::Sha256(sha(&data));

    let first = fetch_with(&cache, &server.url("/noble.img"), &expected, &opts()).unwrap();
    let before = server.seen().len();
    assert_eq!(before, 1);
    let second = fetch_with(&cache, &server.url("/noble.img"), &expected, &opts()).unwrap();
    assert_eq!(first, second);
    assert_eq!(server.seen().len(), before, "a cache hit makes no request");
}

#[test]
fn checksum_mismatch_names_both_digests_and_caches_nothing() {
    let server = Server::start();
    let data = image(SIZE, 3);
    server.put("/noble.img", data.clone());
    let (_d, cache) = temp_cache();
    let wrong = sha(b"something else");

    let err = fetch_with(
        &cache,
        &server.url("/noble.img"),
        &Expected::Sha256(wrong.clone()),
        &opts(),
    )
    .unwrap_err();

    match err.downcast_ref::<ChecksumMismatch>() {
        Some(ChecksumMismatch {
            url,
            expected,
            actual,
        }) => {
            assert_eq!(url, &server.url("/noble.img"));
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &sha(&data));
        }
        other => panic!("expected ChecksumMismatch, got {other:?}: {err:#}"),
    }
    let msg = format!("{err:#}");
    assert!(msg.contains(&wrong) && msg.contains(&sha(&data)), "{msg}");
    assert!(msg.contains("nothing was cached"), "{msg}");
    assert!(cache.get(&wrong).is_none());
    assert!(cache.get(&sha(&data)).is_none());
    assert!(!cache.blob_path(&wrong).exists());
    assert!(
        tmp_entries(&cache).is_empty(),
        "partial removed: {:?}",
        tmp_entries(&cache)
    );
}

#[test]
fn interrupted_download_resumes_within_one_fetch() {
    let server = Server::start();
    let data = image(SIZE, 4);
    server.put("/noble.img", data.clone());
    server.with(|s| {
        s.truncate_next = 1;
        s.truncate_after = 300_000;
    });
    let (_d, cache) = temp_cache();

    let path = fetch_with(
        &cache,
        &server.url("/noble.img"),
        &Expected::Sha256(sha(&data)),
        &opts(),
    )
    .unwrap();

    assert_eq!(fs::read(path).unwrap(), data);
    let reqs = server.requests_for("/noble.img");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range, None);
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=300000-"));
    let sent = server.with(|s| s.body_bytes);
    assert!(
        sent < 2 * SIZE as u64,
        "resume must not re-send the whole file: {sent}"
    );
}

#[test]
fn interrupted_download_resumes_on_the_next_run() {
    let server = Server::start();
    let data = image(SIZE, 5);
    server.put("/noble.img", data.clone());
    server.with(|s| {
        s.truncate_next = 1;
        s.truncate_after = 400_000;
    });
    let (_d, cache) = temp_cache();
    let expected = Expected::Sha256(sha(&data));
    let one_shot = FetchOptions {
        attempts: 1,
        ..opts()
    };

    let err = fetch_with(&cache, &server.url("/noble.img"), &expected, &one_shot).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&server.url("/noble.img")), "{msg}");
    assert!(msg.contains("run again to resume"), "{msg}");
    assert!(
        cache.get(&sha(&data)).is_none(),
        "an incomplete download is never cached"
    );
    assert_eq!(
        tmp_entries(&cache).len(),
        1,
        "the partial is kept for resuming"
    );

    let path = fetch_with(&cache, &server.url("/noble.img"), &expected, &one_shot).unwrap();
    assert_eq!(fs::read(path).unwrap(), data);
    let reqs = server.requests_for("/noble.img");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=400000-"));
    let sent = server.with(|s| s.body_bytes);
    assert!(
        sent < 2 * SIZE as u64,
        "resume must not re-send the whole file: {sent}"
    );
    assert!(tmp_entries(&cache).is_empty());
}

#[test]
fn server_without_range_support_restarts_from_zero() {
    let server = Server::start();
    let data = image(SIZE, 6);
    server.put("/noble.img", data.clone());
    server.with(|s| {
        s.truncate_next = 1;
        s.truncate_after = 100_000;
        s.ignore_range = true;
    });
    let (_d, cache) = temp_cache();

    let path = fetch_with(
        &cache,
        &server.url("/noble.img"),
        &Expected::Sha256(sha(&data)),
        &opts(),
    )
    .unwrap();

    assert_eq!(
        fs::read(path).unwrap(),
        data,
        "a 200 answer to a Range request replaces the partial"
    );
    assert_eq!(server.requests_for("/noble.img").len(), 2);
}

#[test]
fn stale_partial_from_an_older_file_is_discarded_after_the_mismatch() {
    let server = Server::start();
    let old = image(SIZE, 7);
    let new = image(SIZE, 8);
    server.put("/noble.img", old);
    server.with(|s| {
        s.truncate_next = 1;
        s.truncate_after = 500_000;
    });
    let (_d, cache) = temp_cache();
    let expected = Expected::Sha256(sha(&new));
    let one_shot = FetchOptions {
        attempts: 1,
        ..opts()
    };
    assert!(fetch_with(&cache, &server.url("/noble.img"), &expected, &one_shot).is_err());

    // Upstream replaced the file; the partial holds a prefix of the old one.
    server.put("/noble.img", new.clone());
    let path = fetch_with(&cache, &server.url("/noble.img"), &expected, &one_shot).unwrap();

    assert_eq!(fs::read(path).unwrap(), new);
    let reqs = server.requests_for("/noble.img");
    assert_eq!(
        reqs.len(),
        3,
        "truncated, resumed (mismatch), then a clean full download: {reqs:?}"
    );
    assert_eq!(reqs[2].range, None);
}

#[test]
fn sums_url_is_looked_up_by_file_name() {
    let server = Server::start();
    let data = image(SIZE, 9);
    server.put(
        "/releases/noble/noble-server-cloudimg-amd64.img",
        data.clone(),
    );
    let other = sha(b"other");
    server.put(
        "/releases/noble/SHA256SUMS",
        format!(
            "{other} *noble-server-cloudimg-amd64.vmdk\n{} *noble-server-cloudimg-amd64.img\n",
            sha(&data)
        ),
    );
    let (_d, cache) = temp_cache();

    let path = fetch_with(
        &cache,
        &server.url("/releases/noble/noble-server-cloudimg-amd64.img"),
        &Expected::SumsUrl(server.url("/releases/noble/SHA256SUMS")),
        &opts(),
    )
    .unwrap();

    assert_eq!(path, cache.blob_path(&sha(&data)));
    assert_eq!(server.requests_for("/releases/noble/SHA256SUMS").len(), 1);
}

#[test]
fn bsd_style_sums_are_understood() {
    let server = Server::start();
    let data = image(SIZE, 10);
    server.put("/Fedora-Cloud.qcow2", data.clone());
    server.put(
        "/CHECKSUM",
        format!(
            "# Fedora-Cloud.qcow2: {SIZE} bytes\nSHA256 (Fedora-Cloud.qcow2) = {}\n",
            sha(&data)
        ),
    );
    let (_d, cache) = temp_cache();

    let path = fetch_with(
        &cache,
        &server.url("/Fedora-Cloud.qcow2"),
        &Expected::SumsUrl(server.url("/CHECKSUM")),
        &opts(),
    )
    .unwrap();

    assert_eq!(fs::read(path).unwrap(), data);
}

#[test]
fn missing_sums_entry_is_a_clear_error_before_any_download() {
    let server = Server::start();
    server.put("/noble.img", image(1000, 11));
    server.put("/SHA256SUMS", format!("{}  jammy.img\n", sha(b"jammy")));
    let (_d, cache) = temp_cache();

    let err = fetch_with(
        &cache,
        &server.url("/noble.img"),
        &Expected::SumsUrl(server.url("/SHA256SUMS")),
        &opts(),
    )
    .unwrap_err();

    let msg = format!("{err:#}");
    assert!(msg.contains("no SHA256 entry for \"noble.img\""), "{msg}");
    assert!(msg.contains(&server.url("/SHA256SUMS")), "{msg}");
    assert!(
        server.requests_for("/noble.img").is_empty(),
        "the image is not downloaded without a digest"
    );
}

#[test]
fn corrupted_cache_entry_is_detected_and_downloaded_again() {
    let server = Server::start();
    let data = image(SIZE, 12);
    server.put("/noble.img", data.clone());
    let (_d, cache) = temp_cache();
    let expected = Expected::Sha256(sha(&data));
    let blob = fetch_with(&cache, &server.url("/noble.img"), &expected, &opts()).unwrap();

    // File timestamps tick at the kernel's clock granularity; make sure the write lands on a
    // later tick than the insertion, as any real corruption after the fact would.
    std::thread::sleep(Duration::from_millis(50));
    make_writable(&blob);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[SIZE / 2] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();

    let again = fetch_with(&cache, &server.url("/noble.img"), &expected, &opts()).unwrap();

    assert_eq!(again, blob);
    assert_eq!(
        fs::read(&again).unwrap(),
        data,
        "the corrupt blob was replaced by a good download"
    );
    assert_eq!(server.requests_for("/noble.img").len(), 2);
}

#[test]
fn damage_that_keeps_size_and_mtime_is_detected_and_downloaded_again() {
    let server = Server::start();
    let data = image(SIZE, 14);
    server.put("/noble.img", data.clone());
    let (_d, cache) = temp_cache();
    let expected = Expected::Sha256(sha(&data));
    let blob = fetch_with(&cache, &server.url("/noble.img"), &expected, &opts()).unwrap();
    let mtime = fs::metadata(&blob).unwrap().modified().unwrap();
    make_writable(&blob);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[SIZE / 3] ^= 0x01;
    fs::write(&blob, &bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    let again = fetch_with(&cache, &server.url("/noble.img"), &expected, &opts()).unwrap();
    assert_eq!(
        fs::read(&again).unwrap(),
        data,
        "the damaged blob was replaced by a good download"
    );
    assert_eq!(server.requests_for("/noble.img").len(), 2);
}

#[test]
fn truncated_cache_entry_is_detected_and_downloaded_again() {
    let server = Server::start();
    let data = image(SIZE, 13);
    server.put("/noble.img", data.clone());
    let (_d, cache) = temp_cache();
    let expected = Expected::Sha256(sha(&data));
    let blob = fetch_with(&cache, &server.url("/noble.img"), &expected, &opts()).unwrap();
    make_writable(&blob);
    fs::OpenOptions::new()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_len(10)
        .unwrap();

    assert!(
        cache.get(&sha(&data)).is_none(),
        "a short blob is never used"
    );
    let again = fetch_with(&cache, &server.url("/noble.img"), &expected, &opts()).unwrap();
    assert_eq!(fs::read(again).unwrap(), data);
}

#[test]
fn not_found_says_so_plainly() {
    let server = Server::start();
    let (_d, cache) = temp_cache();

    let err = fetch_with(
        &cache,
        &server.url("/gone.img"),
        &Expected::Sha256(sha(b"x")),
        &opts(),
    )
    .unwrap_err();

    assert!(
        matches!(
            err.downcast_ref::<FetchError>(),
            Some(FetchError::NotFound { .. })
        ),
        "{err:#}"
    );
    let msg = format!("{err:#}");
    assert!(
        msg.contains("404") && msg.contains(&server.url("/gone.img")),
        "{msg}"
    );
    assert_eq!(server.seen().len(), 1, "a 404 is not retried");
    assert!(tmp_entries(&cache).is_empty(), "{:?}", tmp_entries(&cache));
}

#[test]
fn missing_sums_file_is_a_404_naming_it() {
    let server = Server::start();
    let (_d, cache) = temp_cache();

    let err = fetch_with(
        &cache,
        &server.url("/noble.img"),
        &Expected::SumsUrl(server.url("/SHA256SUMS")),
        &opts(),
    )
    .unwrap_err();

    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!(
            "{} was not found (HTTP 404)",
            server.url("/SHA256SUMS")
        )),
        "{msg}"
    );
}

#[test]
fn connection_refused_names_the_url() {
    // Bind then drop, so the port is very likely closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/noble.img");
    let (_d, cache) = temp_cache();

    let err = fetch_with(
        &cache,
        &url,
        &Expected::Sha256(sha(b"x")),
        &FetchOptions {
            attempts: 1,
            ..opts()
        },
    )
    .unwrap_err();

    assert!(format!("{err:#}").contains(&url), "{err:#}");
}

#[test]
fn concurrent_fetches_of_one_file_download_it_once() {
    let server = Server::start();
    let data = image(SIZE, 14);
    server.put("/noble.img", data.clone());
    server.with(|s| s.chunk_delay = Duration::from_millis(20));
    let (_d, cache) = temp_cache();
    let url = server.url("/noble.img");
    let expected = Expected::Sha256(sha(&data));

    let handles: Vec<_> = (0..3)
        .map(|_| {
            let (cache, url, expected) = (cache.clone(), url.clone(), expected.clone());
            std::thread::spawn(move || fetch_with(&cache, &url, &expected, &opts()))
        })
        .collect();
    let paths: Vec<PathBuf> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();

    assert!(paths.iter().all(|p| *p == paths[0]));
    assert_eq!(fs::read(&paths[0]).unwrap(), data);
    assert_eq!(
        server.requests_for("/noble.img").len(),
        1,
        "one download, the others waited for it"
    );
}

#[test]
fn cache_dir_env_overrides_the_default_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("from-env");
    std::env::set_var("MESOBAKE_CACHE_DIR", &root);
    let cache = Cache::open(None).unwrap();
    std::env::remove_var("MESOBAKE_CACHE_DIR");
    assert_eq!(cache.root(), root);
    assert!(root.join("blobs/sha256").is_dir());
}

/// A forward proxy on 127.0.0.1 that records each request line. A CONNECT is answered
/// and tunnelled to `upstream` whatever host it names, as if the proxy's own DNS said so,
/// so a URL whose host this machine cannot resolve downloads only through the proxy;
/// without an upstream it answers 502. Any other request is forwarded to `upstream` as
/// it came.
struct Proxy {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(upstream: Option<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        listener
            .set_nonblocking(true)
            .expect("making the listener non-blocking");
        let addr = listener.local_addr().expect("reading the listener address");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (lines, stop) = (lines.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let lines = lines.clone();
                            std::thread::spawn(move || proxy_one(client, upstream, &lines));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Proxy {
            addr,
            lines,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn request_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn proxy_one(client: TcpStream, upstream: Option<SocketAddr>, lines: &Mutex<Vec<String>>) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(reader_half) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader_half);
    let mut head = String::new();
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    lines
        .lock()
        .unwrap()
        .push(request_line.trim_end().to_string());
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                head.push_str(&line);
                if line == "\r\n" || line == "\n" {
                    break;
                }
            }
        }
    }
    let mut to_client = client;
    let Some(mut to_server) = upstream.and_then(|u| TcpStream::connect(u).ok()) else {
        let _ = to_client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    if request_line.starts_with("CONNECT ") {
        if to_client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_err()
        {
            return;
        }
    } else if to_server
        .write_all(format!("{request_line}{head}").as_bytes())
        .is_err()
    {
        return;
    }
    // What the client sent after the head is already in the reader's buffer.
    let buffered = reader.buffer().to_vec();
    if to_server.write_all(&buffered).is_err() {
        return;
    }
    reader.consume(buffered.len());
    let (Ok(mut from_server), Ok(mut server_in)) = (to_server.try_clone(), to_server.try_clone())
    else {
        return;
    };
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut reader, &mut server_in);
    let _ = server_in.shutdown(Shutdown::Write);
    let _ = back.join();
}

fn proxy_env(vars: &[(&str, &str)]) -> ProxyEnv {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ProxyEnv::from_lookup(|k| vars.get(k).cloned())
}

#[test]
fn downloads_go_through_http_proxy_and_bypass_it_for_no_proxy() {
    let server = Server::start();
    let proxy = Proxy::start(Some(server.addr));
    let port = server.addr.port();
    let (_d, cache) = temp_cache();
    let (a, b, c) = (image(SIZE, 31), image(SIZE, 32), image(SIZE, 33));
    server.put("/a.img", a.clone());
    server.put("/b.img", b.clone());
    server.put("/c.img", c.clone());
    server.put("/SHA256SUMS", format!("{}  a.img\n", sha(&a)));
    let no_proxy = format!("localhost:{port}, .mesobake.invalid:1");
    let opts = FetchOptions {
        proxy: proxy_env(&[("HTTP_PROXY", &proxy.url()), ("NO_PROXY", &no_proxy)]),
        ..opts()
    };

    // A name this machine cannot resolve: only the proxy can have fetched it. The entry
    // for the same domain is for another port, so it does not apply.
    let got = fetch_with(
        &cache,
        "http://images.mesobake.invalid/a.img",
        &Expected::SumsUrl("http://images.mesobake.invalid/SHA256SUMS".into()),
        &opts,
    )
    .unwrap();
    assert_eq!(fs::read(got).unwrap(), a);
    assert_eq!(
        proxy.request_lines(),
        ["CONNECT images.mesobake.invalid:80 HTTP/1.1"; 2],
        "the SHA256SUMS and the image both went through the proxy"
    );
    assert_eq!(server.requests_for("/a.img").len(), 1);

    // NO_PROXY names this host and port: straight to the server.
    let got = fetch_with(
        &cache,
        &format!("http://localhost:{port}/b.img"),
        &Expected::Sha256(sha(&b)),
        &opts,
    )
    .unwrap();
    assert_eq!(fs::read(got).unwrap(), b);
    assert_eq!(
        proxy.request_lines().len(),
        2,
        "localhost:{port} bypassed the proxy"
    );
    assert_eq!(server.requests_for("/b.img").len(), 1);

    // The same server by address is not listed, so it goes through the proxy again.
    fetch_with(
        &cache,
        &format!("http://127.0.0.1:{port}/c.img"),
        &Expected::Sha256(sha(&c)),
        &opts,
    )
    .unwrap();
    assert_eq!(
        proxy.request_lines().last().unwrap(),
        &format!("CONNECT 127.0.0.1:{port} HTTP/1.1")
    );
}

#[test]
fn each_redirect_hop_takes_its_own_route() {
    let server = Server::start();
    let proxy = Proxy::start(Some(server.addr));
    let port = server.addr.port();
    let (_d, cache) = temp_cache();
    let data = image(SIZE, 34);
    server.put("/mirror/noble.img", data.clone());
    server.redirect(
        "/noble.img",
        &format!("http://localhost:{port}/mirror/noble.img"),
    );
    let opts = FetchOptions {
        proxy: proxy_env(&[("http_proxy", &proxy.url()), ("no_proxy", "localhost")]),
        ..opts()
    };
    let got = fetch_with(
        &cache,
        "http://redirector.mesobake.invalid/noble.img",
        &Expected::Sha256(sha(&data)),
        &opts,
    )
    .unwrap();
    assert_eq!(fs::read(got).unwrap(), data);
    // The redirector through the proxy, the NO_PROXY mirror it named directly.
    assert_eq!(
        proxy.request_lines(),
        ["CONNECT redirector.mesobake.invalid:80 HTTP/1.1"]
    );
    assert_eq!(server.requests_for("/noble.img").len(), 1);
    assert_eq!(server.requests_for("/mirror/noble.img").len(), 1);
}

#[test]
fn https_urls_use_https_proxy_not_http_proxy() {
    let plain = Proxy::start(None);
    let secure = Proxy::start(None);
    let (_d, cache) = temp_cache();
    let opts = FetchOptions {
        attempts: 1,
        proxy: proxy_env(&[("HTTP_PROXY", &plain.url()), ("HTTPS_PROXY", &secure.url())]),
        ..opts()
    };
    let err = fetch_with(
        &cache,
        "https://secure.mesobake.invalid/noble.img",
        &Expected::Sha256(sha(b"x")),
        &opts,
    )
    .unwrap_err();
    assert_eq!(
        secure.request_lines(),
        ["CONNECT secure.mesobake.invalid:443 HTTP/1.1"]
    );
    assert!(plain.request_lines().is_empty());
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("through {} (from HTTPS_PROXY)", secure.url())),
        "the error says which proxy was used: {msg}"
    );
}

#[test]
fn a_malformed_proxy_variable_is_named_and_not_retried() {
    let server = Server::start();
    server.put("/noble.img", image(1024, 35));
    let (_d, cache) = temp_cache();
    let opts = FetchOptions {
        proxy: proxy_env(&[("https_proxy", "http://x"), ("http_proxy", "ftp://p:21")]),
        ..opts()
    };
    let err = fetch_with(
        &cache,
        &server.url("/noble.img"),
        &Expected::Sha256(sha(b"x")),
        &opts,
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("http_proxy is ftp://p:21"), "{msg}");
    assert!(server.seen().is_empty(), "nothing went direct instead");
}
