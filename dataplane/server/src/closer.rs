//! The last close of a deleted file frees its blocks in the thread that closes it: for a GiB
//! on ext4 mounted with `discard` that took 0.2 s on an idle VM and over a second under load,
//! long enough for a core to miss its heartbeats and its members to leave the write path.
//! A core dropping a deleted file's descriptors first hands a copy of one to this thread,
//! which closes it after the core's own closes went through (`DEFERRED_CLOSE_DELAY_MS`).

use brick_tuning::{DEFERRED_CLOSE_DELAY_MS, DEFERRED_CLOSE_FDS_MAX};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

struct Closer {
    queue: Mutex<Sender<(Instant, OwnedFd)>>,
    held: AtomicUsize,
}

static CLOSER: OnceLock<Option<Closer>> = OnceLock::new();

fn closer() -> Option<&'static Closer> {
    CLOSER
        .get_or_init(|| {
            let (queue, rx) = channel();
            let spawned = std::thread::Builder::new()
                .name("brick-closer".into())
                .spawn(move || close_loop(rx));
            match spawned {
                Ok(_) => Some(Closer {
                    queue: Mutex::new(queue),
                    held: AtomicUsize::new(0),
                }),
                Err(e) => {
                    tracing::warn!("no closer thread ({e}): cores close deleted files themselves");
                    None
                }
            }
        })
        .as_ref()
}

/// Keeps the file behind `fd` open on the closer thread for a while, so that the caller's
/// close is not the last one. Best effort: without a free slot or descriptor the caller's
/// close stays the last (slower, never wrong).
pub(crate) fn defer_last_close(fd: BorrowedFd<'_>) {
    let Some(closer) = closer() else { return };
    let taken = closer.held.fetch_add(1, Ordering::AcqRel);
    if taken >= DEFERRED_CLOSE_FDS_MAX {
        closer.held.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let sent = fd.try_clone_to_owned().ok().and_then(|copy| {
        let due = Instant::now() + Duration::from_millis(DEFERRED_CLOSE_DELAY_MS);
        let queue = closer.queue.lock().ok()?;
        queue.send((due, copy)).ok()
    });
    if sent.is_none() {
        closer.held.fetch_sub(1, Ordering::AcqRel);
    }
}

fn close_loop(rx: Receiver<(Instant, OwnedFd)>) {
    // Every entry waits the same delay, so they arrive in the order they fall due.
    while let Ok((due, fd)) = rx.recv() {
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        drop(fd);
        if let Some(Some(closer)) = CLOSER.get() {
            closer.held.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_deferred_copy_keeps_the_file_open_until_it_falls_due() {
        let dir = std::env::temp_dir().join(format!("brick-closer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("f");
        std::fs::write(&path, vec![7u8; 1 << 20]).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let ino = file.metadata().expect("stat").ino();
        std::fs::remove_file(&path).expect("unlink");
        defer_last_close(file.as_fd());
        drop(file);
        let held = |ino: u64| {
            std::fs::read_dir("/proc/self/fd")
                .expect("fds")
                .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
                .any(|m| m.ino() == ino && m.nlink() == 0)
        };
        assert!(held(ino), "the closer holds no copy of the deleted file");
        let deadline = Instant::now() + Duration::from_millis(DEFERRED_CLOSE_DELAY_MS * 10);
        while held(ino) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!held(ino), "the closer never closed its copy");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
