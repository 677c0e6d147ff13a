//! A Hugging Face hub on 127.0.0.1 for the download tests: the endpoints `hf-hub` and the
//! header reads use (`/api/models/{id}/revision/{rev}` with the commit and the file list,
//! `/{id}/resolve/{rev}/{file}` with `X-Repo-Commit`, `ETag`, `Content-Length` and byte
//! ranges), gated repositories that answer 401 without the right token, 404s for unknown
//! repositories, revisions and files, and transfers broken off on purpose. Every request is
//! logged. Plain `std::net`, one thread per connection, `Connection: close`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A repository the server holds.
pub struct Repo {
    /// `ORG/NAME`.
    pub id: String,
    /// The commit `main` points to.
    pub commit: String,
    /// Its files, by path in the repository.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Token a gated repository needs.
    pub token: Option<String>,
}

impl Repo {
    /// A repository of every file under `dir` (subfolders too), `main` at `commit`.
    pub fn from_dir(id: &str, commit: &str, dir: &Path) -> Repo {
        let mut files = BTreeMap::new();
        collect(dir, dir, &mut files);
        Repo {
            id: id.into(),
            commit: commit.into(),
            files,
            token: None,
        }
    }
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let name = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            files.insert(name, std::fs::read(&path).unwrap());
        }
    }
}

/// A logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    /// GET or HEAD.
    #[allow(dead_code)]
    pub method: String,
    /// The path asked for.
    pub path: String,
    /// The Range header.
    pub range: Option<String>,
    /// Bytes of the body sent.
    pub sent: u64,
}

/// The running server.
pub struct HubServer {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    log: Arc<Mutex<Vec<Logged>>>,
    /// `(file path, bytes)`: the next whole-file transfer of that file stops after so many.
    interrupt: Arc<Mutex<Option<(String, u64)>>>,
}

/// The entity tag the server gives a file (and the cache names its blob by).
pub fn etag(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash = (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}{:08x}", bytes.len())
}

impl HubServer {
    /// Starts serving `repos`.
    pub fn start(repos: Vec<Repo>) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let interrupt = Arc::new(Mutex::new(None));
        let repos = Arc::new(repos);
        let (log2, interrupt2) = (log.clone(), interrupt.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (repos, log, interrupt) = (repos.clone(), log2.clone(), interrupt2.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &repos, &log, &interrupt);
                });
            }
        });
        HubServer {
            endpoint,
            log,
            interrupt,
        }
    }

    /// Breaks off the next whole-file transfer of `file` after `bytes`.
    pub fn interrupt(&self, file: &str, bytes: u64) {
        *self.interrupt.lock().unwrap() = Some((file.into(), bytes));
    }

    /// The requests so far.
    pub fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

/// Where a resolve path points: the repository and the file.
fn resolve<'a>(repos: &'a [Repo], path: &str) -> Option<(&'a Repo, String, String)> {
    repos.iter().find_map(|repo| {
        let rest = path.strip_prefix(&format!("/{}/resolve/", repo.id))?;
        let (revision, file) = rest.split_once('/')?;
        Some((repo, revision.to_string(), file.to_string()))
    })
}

fn serve(
    stream: TcpStream,
    repos: &[Repo],
    log: &Mutex<Vec<Logged>>,
    interrupt: &Mutex<Option<(String, u64)>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut out = stream;
    let mut entry = Logged {
        method: method.clone(),
        path: path.clone(),
        range: headers.get("range").cloned(),
        sent: 0,
    };
    let authorized = |repo: &Repo| match &repo.token {
        None => true,
        Some(t) => headers.get("authorization") == Some(&format!("Bearer {t}")),
    };
    let reply = |out: &mut TcpStream, status: &str, extra: &[(String, String)], body: &[u8]| {
        let mut head = format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if method != "HEAD" {
            out.write_all(body)?;
        }
        Ok::<u64, std::io::Error>(body.len() as u64)
    };
    let error = |code: &str| vec![("X-Error-Code".to_string(), code.to_string())];
    let api = repos.iter().find_map(|repo| {
        let rest = path.strip_prefix(&format!("/api/models/{}/revision/", repo.id))?;
        Some((repo, rest.to_string()))
    });
    let result = if let Some((repo, revision)) = api {
        if !authorized(repo) {
            reply(
                &mut out,
                "401 Unauthorized",
                &error("GatedRepo"),
                b"{\"error\":\"Access to model is restricted\"}",
            )
        } else if revision != "main" && revision != repo.commit {
            reply(
                &mut out,
                "404 Not Found",
                &error("RevisionNotFound"),
                b"{\"error\":\"Invalid rev id\"}",
            )
        } else {
            let siblings: Vec<serde_json::Value> = repo
                .files
                .keys()
                .map(|f| serde_json::json!({"rfilename": f}))
                .collect();
            let body = serde_json::json!({"id": repo.id, "sha": repo.commit, "siblings": siblings});
            reply(&mut out, "200 OK", &[], body.to_string().as_bytes())
        }
    } else if let Some((repo, revision, file)) = resolve(repos, &path) {
        if !authorized(repo) {
            reply(
                &mut out,
                "401 Unauthorized",
                &error("GatedRepo"),
                b"Access restricted",
            )
        } else if revision != "main" && revision != repo.commit {
            reply(
                &mut out,
                "404 Not Found",
                &error("RevisionNotFound"),
                b"Invalid rev id",
            )
        } else if let Some(bytes) = repo.files.get(&file) {
            let total = bytes.len() as u64;
            let (start, end) = match headers.get("range").and_then(|r| r.strip_prefix("bytes=")) {
                Some(range) => {
                    let (a, b) = range.split_once('-').unwrap();
                    let a: u64 = a.parse().unwrap();
                    let b: u64 = if b.is_empty() {
                        total - 1
                    } else {
                        b.parse::<u64>().unwrap().min(total - 1)
                    };
                    (a, b + 1)
                }
                None => (0, total),
            };
            let mut extra = vec![
                ("X-Repo-Commit".to_string(), repo.commit.clone()),
                ("ETag".to_string(), format!("\"{}\"", etag(bytes))),
                ("Accept-Ranges".to_string(), "bytes".to_string()),
            ];
            let status = if headers.contains_key("range") {
                extra.push((
                    "Content-Range".to_string(),
                    format!("bytes {start}-{}/{total}", end - 1),
                ));
                "206 Partial Content"
            } else {
                "200 OK"
            };
            let body = &bytes[start as usize..end as usize];
            let mut planned = interrupt.lock().unwrap();
            match planned.as_ref() {
                Some((f, after)) if *f == file && end - start > *after && method == "GET" => {
                    // Headers promising the whole body, then part of it and a closed connection.
                    let after = *after as usize;
                    *planned = None;
                    drop(planned);
                    let mut head = format!(
                        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
                        body.len()
                    );
                    for (k, v) in &extra {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    out.write_all(head.as_bytes())?;
                    out.write_all(&body[..after])?;
                    out.flush()?;
                    let _ = out.shutdown(std::net::Shutdown::Both);
                    Ok(after as u64)
                }
                _ => {
                    drop(planned);
                    reply(&mut out, status, &extra, body)
                }
            }
        } else {
            reply(
                &mut out,
                "404 Not Found",
                &error("EntryNotFound"),
                b"Entry not found",
            )
        }
    } else {
        reply(
            &mut out,
            "404 Not Found",
            &error("RepoNotFound"),
            b"{\"error\":\"Repository not found\"}",
        )
    };
    entry.sent = result.unwrap_or(0);
    log.lock().unwrap().push(entry);
    Ok(())
}

/// A folder holding a copy of fixture `name`'s model with `extra` files added.
pub fn fixture_repo_dir(name: &str, into: &Path, extra: &[(&str, &[u8])]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
        .join("model");
    let dir = into.join(format!("served-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&source).unwrap().flatten() {
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    for (file, bytes) in extra {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    dir
}
