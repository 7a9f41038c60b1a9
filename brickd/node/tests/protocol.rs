//! Bad input from the network: each case gets a clear error (an error frame, then a closed
//! connection where the stream cannot be trusted) and the server keeps serving other clients.

use brick_client::Client;
use brick_testkit::DevServer;
use brick_wire::frame::{verify_crc, VERSION_MAX};
use brick_wire::{
    auth, op, request_frame, ErrorCode, Header, HelloReply, Kind, Request, StatFs, HEADER_BYTES,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

fn brickd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_brickd"))
}

fn connect(server: &DevServer) -> TcpStream {
    let s = TcpStream::connect(&server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one frame, or None on a closed connection.
fn read_frame(s: &mut TcpStream) -> Option<(Header, Vec<u8>)> {
    let mut hb = [0u8; HEADER_BYTES];
    s.read_exact(&mut hb).ok()?;
    let h = Header::parse(&hb).expect("server frames are valid");
    let mut payload = vec![0u8; h.payload_len as usize];
    s.read_exact(&mut payload).ok()?;
    verify_crc(&hb, &payload).expect("server frames carry a valid crc");
    Some((h, payload))
}

fn expect_error(s: &mut TcpStream, code: ErrorCode, needle: &str) {
    let (h, payload) = read_frame(s).expect("an error frame before the connection closes");
    assert_eq!(h.kind, Kind::Response);
    assert_eq!(
        ErrorCode::from_code(h.status),
        code,
        "message: {}",
        String::from_utf8_lossy(&payload)
    );
    let msg = String::from_utf8_lossy(&payload);
    assert!(
        msg.contains(needle),
        "error message {msg:?} does not mention {needle:?}"
    );
}

fn expect_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("connection should be closed, got {other:?}"),
    }
}

fn send(s: &mut TcpStream, id: u64, req: &Request) {
    let mut buf = Vec::new();
    request_frame(&mut buf, id, req);
    s.write_all(&buf).unwrap();
}

fn authenticated(server: &DevServer) -> TcpStream {
    let mut s = connect(server);
    let nonce = [3u8; 16];
    send(
        &mut s,
        1,
        &Request::Hello {
            version_min: 1,
            version_max: VERSION_MAX,
            user: "dev",
            client_nonce: nonce,
        },
    );
    let (_, payload) = read_frame(&mut s).expect("hello reply");
    let hello = HelloReply::decode(&payload).unwrap();
    let key = auth::password_key("dev", &server.password());
    send(
        &mut s,
        2,
        &Request::Auth {
            proof: auth::proof(&key, "dev", &nonce, &hello.server_nonce),
        },
    );
    let (h, _) = read_frame(&mut s).expect("welcome");
    assert_eq!(h.status, 0);
    s
}

fn statfs_works(s: &mut TcpStream, id: u64) {
    send(
        s,
        id,
        &Request::Statfs {
            vol: 1,
            member: None,
        },
    );
    let (h, payload) = read_frame(s).expect("statfs reply");
    assert_eq!(h.status, 0, "{}", String::from_utf8_lossy(&payload));
    assert_eq!(h.request_id, id);
    let st = StatFs::decode(&payload).unwrap();
    assert!(st.total_bytes > 0);
}

fn still_serving(server: &DevServer) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::connect(server.client_config())
            .await
            .expect("server still accepts clients");
        let vol = client.open_volume("dev").await.expect("open");
        vol.statfs().await.expect("server still serves");
    });
}

#[test]
fn malformed_oversized_bad_crc_and_cut_frames_get_clear_errors() {
    let server = DevServer::start(brickd(), 2);
    // An established client keeps working through all of it.
    let mut bystander = authenticated(&server);
    statfs_works(&mut bystander, 10);

    // Not our protocol at all.
    let mut s = connect(&server);
    s.write_all(b"GET / HTTP/1.1\r\nHost: example.invalid\r\n\r\n")
        .unwrap();
    expect_error(&mut s, ErrorCode::Malformed, "bad magic");
    expect_closed(&mut s);

    // Oversized: refused from the header alone.
    let mut s = authenticated(&server);
    let header = Header::new(Kind::Request, op::WRITE, 77, 0, 0);
    let mut hb = header.encode(&[]);
    hb[16..20].copy_from_slice(&(brick_tuning::FRAME_PAYLOAD_BYTES_MAX + 1).to_le_bytes());
    s.write_all(&hb).unwrap();
    expect_error(&mut s, ErrorCode::Malformed, "exceeds the limit");
    expect_closed(&mut s);

    // Wrong crc.
    let mut s = authenticated(&server);
    let mut buf = Vec::new();
    request_frame(&mut buf, 5, &Request::GetAttr { vol: 1, fid: 1 });
    let last = buf.len() - 1;
    buf[last] ^= 0x10;
    s.write_all(&buf).unwrap();
    expect_error(&mut s, ErrorCode::Malformed, "crc32c");
    expect_closed(&mut s);

    // Well-framed but undecodable: an error reply, and the connection keeps working.
    let mut s = authenticated(&server);
    let garbage = [0xFFu8; 7];
    let h = Header::new(Kind::Request, 0x7777, 6, garbage.len() as u32, 0);
    s.write_all(&h.encode(&garbage)).unwrap();
    s.write_all(&garbage).unwrap();
    expect_error(&mut s, ErrorCode::UnknownOp, "unknown opcode");
    let mut e = brick_wire::Enc::default();
    Request::Lookup {
        vol: 1,
        parent: 1,
        name: "x",
    }
    .encode(&mut e);
    e.buf.truncate(e.buf.len() - 2); // name shorter than its length says
    let h = Header::new(Kind::Request, op::LOOKUP, 7, e.buf.len() as u32, 0);
    s.write_all(&h.encode(&e.buf)).unwrap();
    s.write_all(&e.buf).unwrap();
    expect_error(&mut s, ErrorCode::Malformed, "truncated");
    statfs_works(&mut s, 8);

    // Cut in the middle of a frame.
    let mut s = authenticated(&server);
    let mut buf = Vec::new();
    request_frame(
        &mut buf,
        9,
        &Request::Write {
            vol: 1,
            fid: 1,
            offset: 0,
            flags: 0,
            data: &[1u8; 1000],
        },
    );
    s.write_all(&buf[..HEADER_BYTES + 10]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    expect_closed(&mut s);

    // A corrupt frame during the handshake gets an error frame too.
    let mut s = connect(&server);
    let mut buf = Vec::new();
    request_frame(
        &mut buf,
        1,
        &Request::Hello {
            version_min: 1,
            version_max: VERSION_MAX,
            user: "dev",
            client_nonce: [0; 16],
        },
    );
    let last = buf.len() - 1;
    buf[last] ^= 1;
    s.write_all(&buf).unwrap();
    expect_error(&mut s, ErrorCode::Malformed, "crc32c");
    expect_closed(&mut s);

    // Before authentication only small frames are read at all.
    let mut s = connect(&server);
    let big_hello = Header::new(Kind::Request, op::HELLO, 1, 0, 0);
    let mut hb = big_hello.encode(&[]);
    hb[16..20].copy_from_slice(&(64u32 * 1024).to_le_bytes());
    s.write_all(&hb).unwrap();
    expect_error(&mut s, ErrorCode::Malformed, "before authentication");
    expect_closed(&mut s);

    // Operations before authentication, and a wrong password, are refused.
    let mut s = connect(&server);
    send(
        &mut s,
        1,
        &Request::Statfs {
            vol: 1,
            member: None,
        },
    );
    expect_error(&mut s, ErrorCode::AuthFailed, "before the handshake");
    expect_closed(&mut s);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut wrong = server.client_config();
    wrong.password = "not-the-password".into();
    let err = rt
        .block_on(Client::connect(wrong))
        .err()
        .expect("a wrong password is refused");
    assert!(err.to_string().contains("authentication failed"), "{err}");

    statfs_works(&mut bystander, 11);
    still_serving(&server);
}

#[test]
fn a_second_daemon_on_the_same_address_refuses_to_start() {
    let first = DevServer::start(brickd(), 1);
    let other_dir = tempfile::Builder::new()
        .prefix("brickd-second")
        .tempdir_in(brick_testkit::scratch_root())
        .unwrap();
    let out = std::process::Command::new(brickd())
        .args(["dev", "--dir"])
        .arg(other_dir.path())
        .args(["--listen", &first.addr, "--cores", "1"])
        .output()
        .expect("run a second brickd");
    assert!(
        !out.status.success(),
        "a second daemon must not share the address"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Address already in use"), "{stderr}");
    assert!(
        !stderr.contains("Stack backtrace"),
        "errors are one clear line, not a backtrace: {stderr}"
    );
    still_serving(&first);
}

/// Requests that reach a core which does not own the file's placement group are forwarded
/// over the explicit cross-core channel and answered as if they had been routed right.
#[test]
fn misrouted_requests_are_forwarded_to_the_owning_core() {
    let server = DevServer::start(brickd(), 2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Find files whose placement group core 1 owns (odd PG with two cores).
    let fids: Vec<u64> = rt.block_on(async {
        let client = Client::connect(server.client_config()).await.unwrap();
        let vol = client.open_volume("dev").await.unwrap();
        let mut out = Vec::new();
        for i in 0..64 {
            let a = vol.create(1, &format!("f{i}"), 0o644, true).await.unwrap();
            if brick_wire::core_of(a.fid, 2) == 1 {
                out.push(a.fid);
            }
        }
        out
    });
    assert!(
        fids.len() >= 2,
        "64 names should hash to core 1 at least twice"
    );
    // The raw connection is to the bootstrap address: core 0.
    let mut s = authenticated(&server);
    let small = vec![0x11u8; 4096];
    let bulk = brick_testkit::pattern(9, 0, 256 * 1024); // takes the direct-to-DMA read path
    for (i, (fid, data)) in [(fids[0], &small), (fids[1], &bulk)]
        .into_iter()
        .enumerate()
    {
        let id = 100 + i as u64 * 10;
        send(
            &mut s,
            id,
            &Request::Write {
                vol: 1,
                fid,
                offset: 0,
                flags: brick_wire::WRITE_FLAG_FUA,
                data,
            },
        );
        let (h, payload) = read_frame(&mut s).expect("write reply");
        assert_eq!(
            (h.request_id, h.status),
            (id, 0),
            "{}",
            String::from_utf8_lossy(&payload)
        );
        send(
            &mut s,
            id + 1,
            &Request::Read {
                vol: 1,
                fid,
                offset: 0,
                len: data.len() as u32,
            },
        );
        let (h, payload) = read_frame(&mut s).expect("read reply");
        assert_eq!((h.request_id, h.status), (id + 1, 0));
        assert!(
            payload == *data,
            "data written through core 0 for a core-1 file differs"
        );
    }
    // And the normally routed client sees the same bytes.
    rt.block_on(async {
        let client = Client::connect(server.client_config()).await.unwrap();
        let vol = client.open_volume("dev").await.unwrap();
        assert_eq!(vol.read(fids[1], 0, bulk.len() as u32).await.unwrap(), bulk);
    });
}
