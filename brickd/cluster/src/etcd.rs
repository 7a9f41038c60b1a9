//! The multi-node `ClusterStore`: etcd v3 through its JSON gateway (`/v3/kv/range`,
//! `/v3/kv/txn`, `/v3/lease/*`, `/v3/watch`) over plain HTTP/1.1 on loopback or a private
//! network. No home-made consensus: etcd's transactions decide every epoch change.
//!
//! All keys live under `/brickd/`. Transactions compare values (or absence) exactly like the
//! embedded store, so the typed layer above is the same for both.

use crate::store::{Check, ClusterStore, StoreError, TxnOp};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const KEY_PREFIX: &str = "/brickd/";
/// Responses larger than this are refused (the whole cluster state is far smaller).
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
const HEADER_LINE_BYTES_MAX: usize = 8192;
const HEADER_LINES_MAX: usize = 64;
const REQUEST_TIMEOUT_MS: u64 = 3000;

pub struct EtcdStore {
    endpoints: Vec<String>,
    /// The endpoint that answered last; tried first.
    current: AtomicUsize,
}

impl EtcdStore {
    /// `spec`: `H:P[,H:P...]` (the part after `etcd://`). Checks that etcd answers.
    pub async fn connect(spec: &str) -> Result<Arc<EtcdStore>, StoreError> {
        let endpoints: Vec<String> = spec
            .split(',')
            .map(|s| s.trim().trim_start_matches("http://").to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(StoreError::Corrupt(
                "etcd://: no endpoint given (etcd://H:P[,H:P...])".into(),
            ));
        }
        let store = Arc::new(EtcdStore {
            endpoints,
            current: AtomicUsize::new(0),
        });
        store.get("meta/ping").await?;
        Ok(store)
    }

    /// One gateway call, trying every endpoint once, starting with the last good one.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, StoreError> {
        let first = self.current.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..self.endpoints.len() {
            let at = (first + i) % self.endpoints.len();
            let ep = &self.endpoints[at];
            let attempt = tokio::time::timeout(
                Duration::from_millis(REQUEST_TIMEOUT_MS),
                post_json(ep, path, body),
            )
            .await;
            match attempt {
                Ok(Ok(v)) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(e)) => errors.push(format!("{ep}: {e}")),
                Err(_) => errors.push(format!("{ep}: no answer within {REQUEST_TIMEOUT_MS} ms")),
            }
        }
        Err(StoreError::Io(std::io::Error::other(format!(
            "etcd unreachable: {}",
            errors.join("; ")
        ))))
    }

    async fn grant(&self, ttl_s: u64) -> Result<String, StoreError> {
        let v = self
            .call("/v3/lease/grant", &json!({ "TTL": ttl_s }))
            .await?;
        v.get("ID")
            .and_then(json_str)
            .ok_or_else(|| StoreError::Corrupt(format!("lease grant reply without ID: {v}")))
    }
}

fn json_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn full_key(key: &str) -> String {
    format!("{KEY_PREFIX}{key}")
}

/// The smallest key greater than every key starting with `prefix` (etcd's range_end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn kvs_of(v: &Value) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let Some(kvs) = v.get("kvs") else {
        return Ok(Vec::new());
    };
    let kvs = kvs
        .as_array()
        .ok_or_else(|| StoreError::Corrupt("etcd range: kvs is not a list".into()))?;
    let mut out = Vec::with_capacity(kvs.len());
    for kv in kvs {
        let key = kv.get("key").and_then(Value::as_str).unwrap_or_default();
        let key = b64_decode(key)
            .and_then(|k| String::from_utf8(k).ok())
            .ok_or_else(|| StoreError::Corrupt("etcd range: bad key".into()))?;
        let value = kv.get("value").and_then(Value::as_str).unwrap_or_default();
        let value =
            b64_decode(value).ok_or_else(|| StoreError::Corrupt("etcd range: bad value".into()))?;
        let Some(short) = key.strip_prefix(KEY_PREFIX) else {
            continue;
        };
        out.push((short.to_string(), value));
    }
    Ok(out)
}

#[async_trait]
impl ClusterStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let v = self
            .call(
                "/v3/kv/range",
                &json!({ "key": b64_encode(full_key(key).as_bytes()) }),
            )
            .await?;
        Ok(kvs_of(&v)?.into_iter().next().map(|(_, v)| v))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let full = full_key(prefix);
        let v = self
            .call(
                "/v3/kv/range",
                &json!({
                    "key": b64_encode(full.as_bytes()),
                    "range_end": b64_encode(&prefix_end(&full)),
                }),
            )
            .await?;
        let mut out = kvs_of(&v)?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn txn(&self, checks: &[Check], ops: &[TxnOp]) -> Result<bool, StoreError> {
        let compare: Vec<Value> = checks
            .iter()
            .map(|(key, expected)| {
                let key = b64_encode(full_key(key).as_bytes());
                match expected {
                    Some(v) => json!({"target": "VALUE", "key": key, "result": "EQUAL", "value": b64_encode(v)}),
                    None => json!({"target": "CREATE", "key": key, "result": "EQUAL", "create_revision": "0"}),
                }
            })
            .collect();
        let success: Vec<Value> = ops
            .iter()
            .map(|op| match op {
                TxnOp::Put(k, v) => json!({"requestPut": {
                    "key": b64_encode(full_key(k).as_bytes()), "value": b64_encode(v)}}),
                TxnOp::Delete(k) => json!({"requestDeleteRange": {
                    "key": b64_encode(full_key(k).as_bytes())}}),
            })
            .collect();
        let v = self
            .call(
                "/v3/kv/txn",
                &json!({"compare": compare, "success": success}),
            )
            .await?;
        Ok(v.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }

    async fn put_alive(&self, key: &str, value: Vec<u8>, ttl_ms: u64) -> Result<(), StoreError> {
        let ttl_s = ttl_ms.div_ceil(1000).max(1);
        let lease = self.grant(ttl_s).await?;
        self.call(
            "/v3/kv/put",
            &json!({
                "key": b64_encode(full_key(key).as_bytes()),
                "value": b64_encode(&value),
                "lease": lease,
            }),
        )
        .await?;
        let endpoints = self.endpoints.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            let store = EtcdStore {
                endpoints,
                current: AtomicUsize::new(0),
            };
            let mut lease = lease;
            let period = Duration::from_millis((ttl_ms / 3).max(100));
            loop {
                tokio::time::sleep(period).await;
                let kept = store
                    .call("/v3/lease/keepalive", &json!({ "ID": lease }))
                    .await
                    .ok()
                    .and_then(|v| {
                        v.get("result")
                            .and_then(|r| r.get("TTL"))
                            .and_then(json_str)
                    })
                    .is_some_and(|ttl| ttl != "0" && !ttl.is_empty());
                if kept {
                    continue;
                }
                // The lease expired (etcd was away longer than the TTL): take a new one.
                tracing::warn!("liveness lease for {key} expired; registering again");
                if let Ok(new) = store.grant(ttl_s).await {
                    lease = new;
                    let _ = store
                        .call(
                            "/v3/kv/put",
                            &json!({
                                "key": b64_encode(full_key(&key).as_bytes()),
                                "value": b64_encode(&value),
                                "lease": lease,
                            }),
                        )
                        .await;
                }
            }
        });
        Ok(())
    }

    async fn watch(&self, prefix: &str) -> Result<tokio::sync::watch::Receiver<u64>, StoreError> {
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let full = full_key(prefix);
        let request = json!({"create_request": {
            "key": b64_encode(full.as_bytes()),
            "range_end": b64_encode(&prefix_end(&full)),
        }});
        let endpoints = self.endpoints.clone();
        tokio::spawn(async move {
            let mut at = 0usize;
            while !tx.is_closed() {
                let ep = &endpoints[at % endpoints.len()];
                // Every (re)connection may have missed changes: notify once on connecting.
                let result = watch_stream(ep, &request, &tx).await;
                if let Err(e) = result {
                    tracing::warn!("etcd watch on {ep}: {e}; reconnecting");
                }
                at += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ok(rx)
    }

    fn describe(&self) -> String {
        format!("etcd ({})", self.endpoints.join(","))
    }
}

async fn watch_stream(
    ep: &str,
    request: &Value,
    tx: &tokio::sync::watch::Sender<u64>,
) -> Result<(), String> {
    let mut body = open_post(ep, "/v3/watch", request).await?;
    loop {
        let Some(chunk) = body.next_chunk().await? else {
            return Err("watch stream ended".into());
        };
        for line in chunk.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
            if v.get("error").is_some() {
                return Err(format!("etcd: {v}"));
            }
            tx.send_modify(|n| *n += 1);
        }
    }
}

/// An HTTP/1.1 response body, read chunk by chunk.
struct Body {
    reader: BufReader<TcpStream>,
    chunked: bool,
    remaining: Option<usize>,
    done: bool,
}

impl Body {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        if self.done {
            return Ok(None);
        }
        if !self.chunked {
            let mut out = Vec::new();
            match self.remaining {
                Some(n) => {
                    if n > RESPONSE_BYTES_MAX {
                        return Err(format!("response of {n} bytes is too large"));
                    }
                    out.resize(n, 0);
                    self.reader
                        .read_exact(&mut out)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                None => {
                    (&mut self.reader)
                        .take(RESPONSE_BYTES_MAX as u64)
                        .read_to_end(&mut out)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            self.done = true;
            return Ok(Some(out));
        }
        let line = read_line(&mut self.reader).await?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        if size > RESPONSE_BYTES_MAX {
            return Err(format!("chunk of {size} bytes is too large"));
        }
        if size == 0 {
            self.done = true;
            return Ok(None);
        }
        let mut out = vec![0u8; size];
        self.reader
            .read_exact(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        read_line(&mut self.reader).await?; // the CRLF after the chunk
        Ok(Some(out))
    }
}

async fn read_line(r: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = Vec::new();
    (&mut *r)
        .take(HEADER_LINE_BYTES_MAX as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| e.to_string())?;
    if line.is_empty() {
        return Err("connection closed".into());
    }
    if !line.ends_with(b"\n") {
        return Err("header line too long".into());
    }
    String::from_utf8(line)
        .map(|s| s.trim_end().to_string())
        .map_err(|_| "header is not UTF-8".into())
}

async fn open_post(ep: &str, path: &str, body: &Value) -> Result<Body, String> {
    let stream = TcpStream::connect(ep).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).ok();
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {ep}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut reader = BufReader::new(stream);
    let s = reader.get_mut();
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(&body).await.map_err(|e| e.to_string())?;
    let status = read_line(&mut reader).await?;
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status:?}"))?;
    let (mut chunked, mut remaining) = (false, None);
    for _ in 0..HEADER_LINES_MAX {
        let line = read_line(&mut reader).await?;
        if line.is_empty() {
            let mut body = Body {
                reader,
                chunked,
                remaining,
                done: false,
            };
            if code != 200 {
                let text = body.next_chunk().await?.unwrap_or_default();
                return Err(format!(
                    "HTTP {code}: {}",
                    String::from_utf8_lossy(&text[..text.len().min(512)])
                ));
            }
            return Ok(body);
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        } else if let Some(n) = lower.strip_prefix("content-length:") {
            remaining = n.trim().parse().ok();
        }
    }
    Err("too many response headers".into())
}

/// One request, one JSON answer: the first JSON document of the body (a streaming
/// gateway call such as lease keepalive answers one and keeps the stream open).
async fn post_json(ep: &str, path: &str, body: &Value) -> Result<Value, String> {
    let mut body = open_post(ep, path, body).await?;
    let mut text = Vec::new();
    while let Some(chunk) = body.next_chunk().await? {
        text.extend_from_slice(&chunk);
        if text.len() > RESPONSE_BYTES_MAX {
            return Err("response too large".into());
        }
        if let Ok(v) = serde_json::from_slice::<Value>(trim_ws(&text)) {
            return Ok(v);
        }
    }
    serde_json::from_slice(trim_ws(&text)).map_err(|e| format!("etcd reply: {e}"))
}

fn trim_ws(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = b64_encode(&bytes);
            assert_eq!(text.len() % 4, 0);
            assert_eq!(b64_decode(&text).unwrap(), bytes);
        }
        assert_eq!(b64_encode(b"foo"), "Zm9v");
        assert_eq!(b64_encode(b"fo"), "Zm8=");
        assert!(b64_decode("Z!==").is_none());
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
    }
}
