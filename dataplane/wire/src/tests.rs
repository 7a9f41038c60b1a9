use super::*;
use proptest::prelude::*;

fn sample_requests() -> Vec<Request<'static>> {
    static DATA: [u8; 4096] = [0xA5; 4096];
    vec![
        Request::Hello {
            version_min: 1,
            version_max: 1,
            user: "dev",
            client_nonce: [7; 16],
        },
        Request::Auth { proof: [9; 32] },
        Request::Mgmt {
            doc: br#"{"op":"volume_list"}"#,
        },
        Request::Lookup {
            vol: 1,
            parent: ROOT_FILE_ID,
            name: "a.txt",
        },
        Request::GetAttr { vol: 1, fid: 99 },
        Request::SetAttr {
            vol: 1,
            fid: 99,
            attr: SetAttr {
                mode: Some(0o644),
                size: Some(1 << 33),
                mtime: TimeSet::To(Time { sec: 5, nsec: 6 }),
                ..SetAttr::NONE
            },
        },
        Request::Create {
            vol: 1,
            parent: 1,
            name: "f",
            mode: 0o600,
            exclusive: true,
        },
        Request::Mkdir {
            vol: 1,
            parent: 1,
            name: "d",
            mode: 0o755,
        },
        Request::Unlink {
            vol: 1,
            parent: 1,
            name: "f",
        },
        Request::Rmdir {
            vol: 1,
            parent: 1,
            name: "d",
        },
        Request::Rename {
            vol: 1,
            src_parent: 1,
            src_name: "a",
            dst_parent: 2,
            dst_name: "b",
            flags: 0,
        },
        Request::Rename {
            vol: 1,
            src_parent: 1,
            src_name: "a",
            dst_parent: 2,
            dst_name: "b",
            flags: RENAME_NOREPLACE,
        },
        Request::ReadDir {
            vol: 1,
            fid: 1,
            cookie: 0,
            max_entries: 100,
        },
        Request::Read {
            vol: 1,
            fid: 3,
            offset: 1 << 40,
            len: 4096,
        },
        Request::Write {
            vol: 1,
            fid: 3,
            offset: 8192,
            flags: WRITE_FLAG_FUA,
            data: &DATA,
        },
        Request::Fsync { vol: 1, fid: 3 },
        Request::Symlink {
            vol: 1,
            parent: 1,
            name: "l",
            target: "../x",
        },
        Request::Readlink { vol: 1, fid: 4 },
        Request::Statfs {
            vol: 1,
            member: None,
        },
        Request::Statfs {
            vol: 1,
            member: Some(3),
        },
    ]
}

#[test]
fn every_request_roundtrips_through_a_frame() {
    for (i, req) in sample_requests().iter().enumerate() {
        let mut buf = Vec::new();
        request_frame(&mut buf, i as u64, req);
        let (frame, used) = decode_frame(&buf).expect("valid").expect("complete");
        assert_eq!(used, buf.len());
        assert_eq!(frame.header.request_id, i as u64);
        assert_eq!(frame.header.kind, Kind::Request);
        let back = Request::decode(frame.header.opcode, &frame.payload).expect("decodes");
        assert_eq!(&back, req);
    }
}

#[test]
fn split_write_head_matches_the_whole_frame() {
    let data = vec![0x5Au8; 70_000];
    let req = Request::Write {
        vol: 7,
        fid: 0x0003_0000_0000_0042,
        offset: 1 << 20,
        flags: WRITE_FLAG_FUA,
        data: &data,
    };
    let mut whole = Vec::new();
    request_frame(&mut whole, 99, &req);
    let head = write_frame_head(99, 7, 0x0003_0000_0000_0042, 1 << 20, WRITE_FLAG_FUA, &data);
    assert_eq!(&whole[..head.len()], &head[..]);
    assert_eq!(&whole[head.len()..], &data[..]);
}

#[test]
fn partial_frames_wait_for_more_bytes() {
    let mut buf = Vec::new();
    request_frame(
        &mut buf,
        1,
        &Request::Statfs {
            vol: 3,
            member: None,
        },
    );
    for cut in 0..buf.len() {
        assert_eq!(decode_frame(&buf[..cut]), Ok(None), "cut at {cut}");
    }
}

#[test]
fn wrong_crc_is_a_clear_error() {
    let mut buf = Vec::new();
    request_frame(&mut buf, 1, &Request::GetAttr { vol: 1, fid: 2 });
    let last = buf.len() - 1;
    buf[last] ^= 0x01;
    let err = decode_frame(&buf).unwrap_err();
    assert!(matches!(err, FrameError::BadCrc { .. }), "{err}");
    assert!(err.to_string().contains("crc32c"));
}

#[test]
fn oversized_frame_is_refused_from_the_header_alone() {
    let mut buf = Vec::new();
    request_frame(
        &mut buf,
        1,
        &Request::Statfs {
            vol: 1,
            member: None,
        },
    );
    buf[16..20].copy_from_slice(&(brick_tuning::FRAME_PAYLOAD_BYTES_MAX + 1).to_le_bytes());
    // Only the header is present: the decoder must refuse without waiting for the payload.
    let err = decode_frame(&buf[..HEADER_BYTES]).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge(_)));
}

#[test]
fn bad_magic_and_version_are_refused() {
    let mut buf = Vec::new();
    request_frame(
        &mut buf,
        1,
        &Request::Statfs {
            vol: 1,
            member: None,
        },
    );
    let mut bad = buf.clone();
    bad[0] = b'X';
    assert!(matches!(decode_frame(&bad), Err(FrameError::BadMagic(_))));
    let mut bad = buf.clone();
    bad[4] = 9;
    assert!(matches!(decode_frame(&bad), Err(FrameError::BadVersion(9))));
}

#[test]
fn names_are_validated() {
    for bad in ["", ".", "..", "a/b", "a\0b"] {
        let mut e = Enc::default();
        Request::Lookup {
            vol: 1,
            parent: 1,
            name: bad,
        }
        .encode(&mut e);
        assert!(
            Request::decode(op::LOOKUP, &e.buf).is_err(),
            "{bad:?} accepted"
        );
    }
    let long = "x".repeat(256);
    let mut e = Enc::default();
    Request::Lookup {
        vol: 1,
        parent: 1,
        name: &long,
    }
    .encode(&mut e);
    assert!(matches!(
        Request::decode(op::LOOKUP, &e.buf),
        Err(DecodeError::TooLong(..))
    ));
}

#[test]
fn replies_roundtrip() {
    let attr = Attr {
        fid: 42,
        kind: FileKind::File,
        mode: 0o100644,
        nlink: 1,
        uid: 1000,
        gid: 1000,
        size: 5 << 30,
        used_bytes: 4096,
        atime: Time { sec: 1, nsec: 2 },
        mtime: Time { sec: 3, nsec: 4 },
        ctime: Time { sec: 5, nsec: 6 },
        btime: Time { sec: 7, nsec: 8 },
    };
    assert_eq!(Attr::decode_whole(&attr.to_payload()), Ok(attr));
    let page = DirPage {
        entries: vec![DirEntry {
            name: "x".into(),
            cookie: 77,
            attr,
        }],
        eof: true,
    };
    let mut e = Enc::default();
    page.encode(&mut e);
    assert_eq!(DirPage::decode(&e.buf), Ok(page));
    let w = Welcome {
        core: 1,
        shard_addrs: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
    };
    let mut e = Enc::default();
    w.encode(&mut e);
    assert_eq!(Welcome::decode(&e.buf), Ok(w));
}

#[test]
fn auth_proof_depends_on_password_and_nonces() {
    let key = auth::password_key("dev", "secret");
    let p = auth::proof(&key, "dev", &[1; 16], &[2; 16]);
    assert!(auth::verify(&key, "dev", &[1; 16], &[2; 16], &p));
    assert!(!auth::verify(
        &auth::password_key("dev", "wrong"),
        "dev",
        &[1; 16],
        &[2; 16],
        &p
    ));
    assert!(!auth::verify(&key, "dev", &[1; 16], &[3; 16], &p));
    assert!(!auth::verify(&key, "other", &[1; 16], &[2; 16], &p));
}

#[test]
fn sealed_secret_opens_only_with_its_secret_and_purpose() {
    let key = auth::password_key("dev", "secret");
    let sealed = auth::seal(&key, "transit", [7; 12], b"hunter2");
    assert_eq!(sealed.len(), 7 + auth::SEAL_OVERHEAD_BYTES);
    assert_eq!(
        auth::open_sealed(&key, "transit", &sealed).as_deref(),
        Some(&b"hunter2"[..])
    );
    assert_eq!(auth::open_sealed(&key, "store", &sealed), None);
    let other = auth::password_key("dev", "wrong");
    assert_eq!(auth::open_sealed(&other, "transit", &sealed), None);
    let mut altered = sealed.clone();
    altered[14] ^= 1;
    assert_eq!(auth::open_sealed(&key, "transit", &altered), None);
    assert_eq!(auth::open_sealed(&key, "transit", &sealed[..20]), None);
}

/// Runs the full receive path a server or client runs on untrusted bytes.
/// Returns Ok(true) when a message decoded, Ok(false) when more bytes are needed.
fn receive_path(buf: &[u8]) -> Result<bool, String> {
    let Some((frame, _)) = decode_frame(buf).map_err(|e| e.to_string())? else {
        return Ok(false);
    };
    match frame.header.kind {
        Kind::Request => Request::decode(frame.header.opcode, &frame.payload)
            .map(|_| true)
            .map_err(|e| e.to_string()),
        Kind::Response => {
            let p = &frame.payload;
            // A response may be any of the reply shapes; each decoder must fail cleanly.
            let results = [
                Attr::decode_whole(p).err(),
                DirPage::decode(p).err(),
                WriteReply::decode(p).err(),
                StatFs::decode(p).err(),
                HelloReply::decode(p).err(),
                Welcome::decode(p).err(),
            ];
            match results.iter().flatten().next() {
                Some(e) if results.iter().all(|r| r.is_some()) => Err(e.to_string()),
                _ => Ok(true),
            }
        }
    }
}

/// Deterministic xorshift so a failing iteration is reproducible from its number.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn reseal_crc(buf: &mut [u8]) {
    if buf.len() < HEADER_BYTES {
        return;
    }
    let len = u32::from_le_bytes([buf[16], buf[17], buf[18], buf[19]]) as usize;
    let end = (HEADER_BYTES + len).min(buf.len());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[0..24]), &buf[HEADER_BYTES..end]);
    buf[24..28].copy_from_slice(&crc.to_le_bytes());
}

/// The decoder fuzz of issue 2: one million random and mutated frames, no panic, and every
/// rejection carries a message. Half the mutations re-seal the crc so that the message
/// decoders, not only the crc check, see the damage.
#[test]
fn fuzz_decoder_with_a_million_frames() {
    const ITERATIONS: u64 = 1_000_000;
    let mut valid = Vec::new();
    for (i, req) in sample_requests().iter().enumerate() {
        let mut b = Vec::new();
        request_frame(&mut b, i as u64, req);
        valid.push(b);
    }
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let (mut decoded, mut rejected, mut incomplete) = (0u64, 0u64, 0u64);
    let mut buf = Vec::with_capacity(8192);
    for iteration in 0..ITERATIONS {
        buf.clear();
        match rng.below(4) {
            0 => {
                let n = rng.below(256) as usize;
                buf.extend((0..n).map(|_| rng.next() as u8));
            }
            _ => {
                let base = &valid[rng.below(valid.len() as u64) as usize];
                buf.extend_from_slice(base);
                for _ in 0..=rng.below(4) {
                    if buf.is_empty() {
                        break;
                    }
                    let at = rng.below(buf.len() as u64) as usize;
                    match rng.below(5) {
                        0 => buf[at] ^= 1 << rng.below(8),
                        1 => buf[at] = rng.next() as u8,
                        2 => buf.truncate(at),
                        3 => {
                            let field = [6usize, 16, 20][rng.below(3) as usize];
                            if buf.len() >= field + 4 {
                                let v = rng.next() as u32 >> rng.below(32);
                                buf[field..field + 4].copy_from_slice(&v.to_le_bytes());
                            }
                        }
                        _ => {
                            let extra = rng.below(64) as usize;
                            buf.extend((0..extra).map(|_| rng.next() as u8));
                        }
                    }
                }
                if rng.below(2) == 0 {
                    reseal_crc(&mut buf);
                }
            }
        }
        match receive_path(&buf) {
            Ok(true) => decoded += 1,
            Ok(false) => incomplete += 1,
            Err(msg) => {
                assert!(
                    !msg.is_empty(),
                    "iteration {iteration}: empty error message"
                );
                rejected += 1;
            }
        }
    }
    assert_eq!(decoded + rejected + incomplete, ITERATIONS);
    // The mix must exercise every outcome, or the fuzz is not doing its job.
    assert!(decoded > 10_000, "decoded {decoded}");
    assert!(rejected > 100_000, "rejected {rejected}");
    assert!(incomplete > 10_000, "incomplete {incomplete}");
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = receive_path(&bytes);
    }

    #[test]
    fn reads_roundtrip(vol in any::<u32>(), fid in any::<u64>(), offset in any::<u64>(), len in 0u32..=brick_tuning::IO_BYTES_MAX) {
        let req = Request::Read { vol, fid, offset, len };
        let mut buf = Vec::new();
        request_frame(&mut buf, 5, &req);
        let (frame, _) = decode_frame(&buf).unwrap().unwrap();
        prop_assert_eq!(Request::decode(frame.header.opcode, &frame.payload).unwrap(), req);
    }
}
