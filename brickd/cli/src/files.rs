//! put / get / ls / stat / rm / mkdir over the native client, pipelined in 1 MiB chunks.

use crate::{pretty, Out};
use anyhow::{anyhow, bail, Context, Result};
use brick_client::{Client, ClientResult, Volume};
use brick_cluster::report::{
    FileAttrs, GetSummary, ListEntry, Listing, MkdirSummary, PutSummary, RmSummary,
};
use brick_wire::{ErrorCode, FileId, FileKind, SetAttr};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const CHUNK_BYTES: usize = 1 << 20;
const WINDOW: usize = 16;

fn split_remote(remote: &str) -> Result<(&str, &str)> {
    let remote = remote.trim_start_matches('/');
    let (vol, path) = remote.split_once('/').unwrap_or((remote, ""));
    if vol.is_empty() {
        bail!("remote paths are VOLUME/PATH, got {remote:?}");
    }
    Ok((vol, path))
}

struct Progress<'o> {
    out: &'o Out,
    what: String,
    total: u64,
    start: Instant,
    last: Instant,
}

impl<'o> Progress<'o> {
    fn new(out: &'o Out, what: String, total: u64) -> Progress<'o> {
        let now = Instant::now();
        Progress {
            out,
            what,
            total,
            start: now,
            last: now,
        }
    }

    fn tick(&mut self, done: u64) {
        if self.last.elapsed().as_secs_f64() >= 1.0 {
            self.last = Instant::now();
            let rate = done as f64 / self.start.elapsed().as_secs_f64() / (1 << 20) as f64;
            self.out.progress(&format!(
                "{}: {} / {} MiB ({:.0}%), {rate:.0} MiB/s",
                self.what,
                done >> 20,
                self.total >> 20,
                done as f64 * 100.0 / self.total.max(1) as f64
            ));
        }
    }

    fn mib_s(&self, bytes: u64) -> f64 {
        bytes as f64 / self.start.elapsed().as_secs_f64().max(1e-9) / (1 << 20) as f64
    }
}

async fn join<T>(h: tokio::task::JoinHandle<ClientResult<T>>) -> Result<T> {
    Ok(h.await.map_err(|e| anyhow!("task failed: {e}"))??)
}

pub async fn put(client: &Client, out: &Out, local: &Path, remote: &str) -> Result<()> {
    let (vol_name, path) = split_remote(remote)?;
    let vol = client.open_volume(vol_name).await?;
    let mut file =
        std::fs::File::open(local).with_context(|| format!("opening {}", local.display()))?;
    let size = file.metadata()?.len();
    let (parent, name) = vol.resolve_parent(path).await?;
    let tmp_name = format!(".{name}.brick-put-{:08x}", rand_u32());
    if tmp_name.len() > brick_tuning::NAME_BYTES_MAX {
        bail!("file name too long");
    }
    let tmp = vol.create(parent.fid, &tmp_name, 0o644, true).await?;
    // Sizing first lets the brick pick O_DIRECT for large files (io.mode auto).
    vol.setattr(
        tmp.fid,
        SetAttr {
            size: Some(size),
            ..SetAttr::NONE
        },
    )
    .await?;
    let result = upload(&vol, out, &mut file, tmp.fid, size, remote).await;
    if let Err(e) = result {
        let _ = vol.unlink(parent.fid, &tmp_name).await;
        return Err(e);
    }
    vol.fsync(tmp.fid).await?;
    vol.rename(parent.fid, &tmp_name, parent.fid, name).await?;
    vol.fsync(tmp.fid).await?;
    let attr = vol.getattr(tmp.fid).await?;
    let doc = PutSummary {
        put: remote.to_string(),
        bytes: size,
        attr: FileAttrs::from(&attr),
    };
    out.report(&doc, |d| {
        format!("{} -> {} ({} bytes)", local.display(), remote, d.bytes)
    })
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

async fn upload(
    vol: &Volume,
    out: &Out,
    file: &mut std::fs::File,
    fid: FileId,
    size: u64,
    what: &str,
) -> Result<()> {
    let mut progress = Progress::new(out, format!("put {what}"), size);
    let mut inflight = VecDeque::new();
    let mut offset = 0u64;
    while offset < size {
        let len = CHUNK_BYTES.min((size - offset) as usize);
        let mut buf = vec![0u8; len];
        file.read_exact(&mut buf)
            .context("reading the local file")?;
        let (v, data) = (vol.clone(), Arc::new(buf));
        let at = offset;
        inflight.push_back(tokio::spawn(async move {
            let n = v.write(fid, at, &data, false).await?;
            Ok::<_, brick_client::ClientError>((n, data.len()))
        }));
        offset += len as u64;
        if inflight.len() >= WINDOW {
            if let Some(h) = inflight.pop_front() {
                check_written(join(h).await?)?;
            }
        }
        progress.tick(offset);
    }
    while let Some(h) = inflight.pop_front() {
        check_written(join(h).await?)?;
    }
    out.progress(&format!(
        "put {what}: {} MiB at {:.0} MiB/s",
        size >> 20,
        progress.mib_s(size)
    ));
    Ok(())
}

fn check_written((written, expected): (u32, usize)) -> Result<()> {
    if written as usize != expected {
        bail!("short write: {written} of {expected} bytes");
    }
    Ok(())
}

pub async fn get(client: &Client, out: &Out, remote: &str, local: &Path) -> Result<()> {
    let (vol_name, path) = split_remote(remote)?;
    let vol = client.open_volume(vol_name).await?;
    let attr = vol.resolve(path).await?;
    if attr.kind != FileKind::File {
        bail!("{remote} is not a regular file");
    }
    let size = attr.size;
    let tmp = local.with_extension("brick-get-partial");
    let mut file = std::io::BufWriter::with_capacity(
        4 << 20,
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut progress = Progress::new(out, format!("get {remote}"), size);
    let mut inflight = VecDeque::new();
    let mut next = 0u64;
    let mut done = 0u64;
    while done < size {
        while next < size && inflight.len() < WINDOW {
            let len = CHUNK_BYTES.min((size - next) as usize) as u32;
            let (v, at) = (vol.clone(), next);
            inflight.push_back(tokio::spawn(async move {
                v.read(attr.fid, at, len).await.map(|d| (d, len))
            }));
            next += len as u64;
        }
        let Some(h) = inflight.pop_front() else { break };
        let (data, len) = join(h).await?;
        if data.len() != len as usize {
            bail!("{remote} shrank while reading (short read at {done})");
        }
        file.write_all(&data)?;
        done += data.len() as u64;
        progress.tick(done);
    }
    file.flush()?;
    file.get_ref().sync_all()?;
    drop(file);
    std::fs::rename(&tmp, local)?;
    out.progress(&format!(
        "get {remote}: {} MiB at {:.0} MiB/s",
        size >> 20,
        progress.mib_s(size)
    ));
    let doc = GetSummary {
        get: remote.to_string(),
        bytes: size,
        local: local.display().to_string(),
    };
    out.report(&doc, |d| {
        format!("{remote} -> {} ({} bytes)", local.display(), d.bytes)
    })
}

pub async fn ls(client: &Client, out: &Out, remote: &str) -> Result<()> {
    let (vol_name, path) = split_remote(remote)?;
    let vol = client.open_volume(vol_name).await?;
    let attr = vol.resolve(path).await?;
    let entries = if attr.kind == FileKind::Dir {
        let mut e = vol.readdir_all(attr.fid).await?;
        e.sort_by(|a, b| a.name.cmp(&b.name));
        e.into_iter().map(|e| (e.name, e.attr)).collect()
    } else {
        vec![(path.rsplit('/').next().unwrap_or(path).to_string(), attr)]
    };
    let doc = Listing {
        path: remote.to_string(),
        entries: entries
            .iter()
            .map(|(n, a)| ListEntry {
                name: n.clone(),
                attr: FileAttrs::from(a),
            })
            .collect(),
    };
    out.report(&doc, |_| {
        entries
            .iter()
            .map(|(n, a)| {
                let kind = match a.kind {
                    FileKind::Dir => 'd',
                    FileKind::Symlink => 'l',
                    FileKind::File => '-',
                };
                format!("{kind}{:04o} {:>14} {n}", a.mode & 0o7777, a.size)
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

pub async fn stat(client: &Client, out: &Out, remote: &str) -> Result<()> {
    let (vol_name, path) = split_remote(remote)?;
    let vol = client.open_volume(vol_name).await?;
    let attr = vol.resolve(path).await?;
    out.report(&FileAttrs::from(&attr), pretty)
}

pub async fn rm(client: &Client, out: &Out, remote: &str, recursive: bool) -> Result<()> {
    let (vol_name, path) = split_remote(remote)?;
    let vol = client.open_volume(vol_name).await?;
    let (parent, name) = vol.resolve_parent(path).await?;
    let attr = vol.lookup(parent.fid, name).await?;
    let removed = if attr.kind == FileKind::Dir {
        if recursive {
            remove_tree(&vol, attr.fid).await?
        } else {
            0
        }
    } else {
        0
    };
    if attr.kind == FileKind::Dir {
        vol.rmdir(parent.fid, name).await?;
    } else {
        vol.unlink(parent.fid, name).await?;
    }
    let doc = RmSummary {
        removed: remote.to_string(),
        entries: removed + 1,
    };
    out.report(&doc, |d| {
        format!("removed {remote} ({} entries)", d.entries)
    })
}

/// Removes everything below `dir` (depth-first, bounded by the brick's path depth limit).
async fn remove_tree(vol: &Volume, dir: FileId) -> Result<u64> {
    let mut removed = 0;
    let mut stack = vec![(dir, false)];
    while let Some((d, expanded)) = stack.pop() {
        if stack.len() > brick_tuning::PATH_DEPTH_MAX {
            bail!(
                "directory tree deeper than {}",
                brick_tuning::PATH_DEPTH_MAX
            );
        }
        let entries = vol.readdir_all(d).await?;
        let subdirs: Vec<_> = entries
            .iter()
            .filter(|e| e.attr.kind == FileKind::Dir)
            .collect();
        if !expanded && !subdirs.is_empty() {
            stack.push((d, true));
            for s in subdirs {
                stack.push((s.attr.fid, false));
            }
            continue;
        }
        for e in entries {
            if e.attr.kind == FileKind::Dir {
                vol.rmdir(d, &e.name).await?;
            } else {
                vol.unlink(d, &e.name).await?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

pub async fn mkdir(client: &Client, out: &Out, remote: &str, parents: bool) -> Result<()> {
    let (vol_name, path) = split_remote(remote)?;
    let vol = client.open_volume(vol_name).await?;
    let mut at = vol.resolve("").await?;
    let names: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if names.is_empty() {
        bail!("mkdir needs a path below the volume root");
    }
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        if !last && !parents {
            at = vol
                .lookup(at.fid, name)
                .await
                .with_context(|| format!("parent {name:?} of {remote} (use -p to create it)"))?;
            continue;
        }
        at = match vol.mkdir(at.fid, name, 0o755).await {
            Ok(a) => a,
            Err(e) if e.code() == Some(ErrorCode::Exists) && parents => {
                let a = vol.lookup(at.fid, name).await?;
                if a.kind != FileKind::Dir {
                    bail!("{name} exists and is not a directory");
                }
                a
            }
            Err(e) => return Err(e.into()),
        };
    }
    let doc = MkdirSummary {
        created: remote.to_string(),
        attr: FileAttrs::from(&at),
    };
    out.report(&doc, |_| format!("created {remote}"))
}
