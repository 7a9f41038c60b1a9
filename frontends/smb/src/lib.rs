//! SMB2/3 gateway: one volume served as one share through the `smb-server` crate, with the
//! cluster's users (docs/smb.md).
//!
//! The crate owns the protocol (dialects 2.0.2 to 3.1.1, NTLMv2, signing, encryption, locks,
//! share modes); [`backend::BrickShare`] maps its backend calls onto the client library. Users
//! and their access come from the cluster state (`ShareUsers`) and are fetched again every
//! `SMB_USERS_REFRESH_MS`, so `brick user` and `brick volume set V access.USER` take effect on
//! a running gateway.

mod backend;
mod wildcard;

pub use backend::BrickShare;

use brick_client::{Client, ClientError};
use brick_cluster::mgmt::{ShareSettings, ShareUsers};
use brick_cluster::{hex_decode, ShareAccess, SEAL_IN_TRANSIT};
use brick_tuning::SMB_WRITE_BYTES_MAX;
use brick_tuning::{SMB_READ_BYTES_MAX, SMB_USERS_REFRESH_MS, SMB_USERS_STALE_MS};
use brick_wire::auth;
use smb_server::{Access, ConfigHandle, Share, SmbServer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// How the gateway serves, beyond what the volume's options say.
#[derive(Debug, Clone)]
pub struct SmbSettings {
    pub listen: SocketAddr,
    /// Every session must sign (NEGOTIATE announces signing as required).
    pub require_signing: bool,
}

/// A server bound to its port, not yet serving: the share is added by [`serve`], once the
/// cluster can be asked who may use it.
pub struct Bound {
    server: SmbServer,
    pub addr: SocketAddr,
}

pub async fn bind(settings: &SmbSettings) -> std::io::Result<Bound> {
    let server = SmbServer::builder()
        .listen(settings.listen)
        .require_signing(settings.require_signing)
        .max_read_size(SMB_READ_BYTES_MAX)
        .max_write_size(SMB_WRITE_BYTES_MAX)
        .netbios_name("BRICKD")
        .build()
        .map_err(|e| std::io::Error::other(format!("smb server settings: {e}")))?;
    let addr = server.bind().await?;
    Ok(Bound { server, addr })
}

/// One user as the share knows it.
#[derive(Clone, PartialEq, Eq)]
struct Grant {
    password: String,
    access: ShareAccess,
}

fn smb_access(a: ShareAccess) -> Access {
    match a {
        ShareAccess::Ro => Access::Read,
        ShareAccess::Rw => Access::ReadWrite,
    }
}

/// The share's users with their passwords, opened from the transit seal under `caller_key`
/// (the password key of the user this gateway connects as).
async fn fetch_users(
    client: &Client,
    volume: &str,
    caller_key: &[u8; 32],
) -> Result<(HashMap<String, Grant>, ShareSettings), String> {
    let op = ShareUsers {
        volume: volume.to_string(),
    };
    let reply = client.mgmt(&op).await.map_err(|e| e.to_string())?;
    let mut users = HashMap::new();
    for u in reply.users.iter().cloned() {
        let opened = hex_decode(&u.password_sealed_hex)
            .and_then(|b| auth::open_sealed(caller_key, SEAL_IN_TRANSIT, &b))
            .and_then(|b| String::from_utf8(b).ok());
        let Some(password) = opened else {
            // Sealed under another key: this gateway's admin changed password since it
            // started. The user is left out (fail closed) rather than kept with an old one.
            tracing::warn!(
                "smb: the password of {} does not open under this gateway's key; restart the gateway with its admin's current password",
                u.name
            );
            continue;
        };
        users.insert(
            u.name,
            Grant {
                password,
                access: u.access,
            },
        );
    }
    Ok((users, reply))
}

/// Brings the running server's users and the share's grants to `wanted`.
async fn apply_users(
    config: &ConfigHandle,
    share: &str,
    current: &mut HashMap<String, Grant>,
    wanted: HashMap<String, Grant>,
) {
    for name in current.keys() {
        if !wanted.contains_key(name) {
            match config.remove_user(name).await {
                Ok(()) => tracing::info!("smb share {share}: user {name} removed"),
                Err(e) => tracing::warn!("smb share {share}: removing user {name}: {e}"),
            }
        }
    }
    for (name, grant) in &wanted {
        let old = current.get(name);
        let new_password = old.map(|g| &g.password) != Some(&grant.password);
        if new_password {
            if let Err(e) = config.add_user(name.clone(), &grant.password).await {
                tracing::warn!("smb share {share}: user {name} cannot log in: {e}");
                continue;
            }
        }
        let new_access = old.map(|g| g.access) != Some(grant.access);
        if new_access {
            let granted = config
                .grant_share_user(share, name, smb_access(grant.access))
                .await;
            if let Err(e) = granted {
                tracing::warn!("smb share {share}: granting {name} access: {e}");
            }
        }
        if new_password || new_access {
            let what = match old {
                None => "added",
                Some(_) if new_password => "password changed",
                Some(_) => "access changed",
            };
            tracing::info!("smb share {share}: user {name} {what} ({:?})", grant.access);
        }
    }
    *current = wanted;
}

/// Serves `volume` as share `share_name` until `stopped` turns true, then stops cleanly: no
/// new connections, every connection closed once its current request is answered.
pub async fn serve(
    bound: Bound,
    client: Client,
    volume: &str,
    share_name: &str,
    caller_key: [u8; 32],
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let vol = client
        .open_volume(volume)
        .await
        .map_err(|e: ClientError| e.to_string())?;
    let (users, settings) = fetch_users(&client, volume, &caller_key).await?;
    let config = bound.server.config_handle();
    // Leases are off unless `smb.leases on`: the volume is also written through the native
    // client, NFS, NBD and other SMB gateways, none of which break this gateway's leases, so
    // a client caching under a lease would serve stale data. Durable handles need a lease.
    let mut share = Share::new(share_name, BrickShare::new(vol))
        .leases(settings.leases)
        .durable_handles(settings.leases)
        .remark(format!("brickd volume {volume}"));
    if settings.encrypt {
        share = share.encrypt_data();
    }
    config
        .add_share(share)
        .await
        .map_err(|e| format!("share {share_name}: {e}"))?;
    let mut current = HashMap::new();
    apply_users(&config, share_name, &mut current, users).await;

    let shutdown = bound.server.shutdown_handle();
    let server = tokio::spawn(bound.server.serve());
    let mut refresh = tokio::time::interval(Duration::from_millis(SMB_USERS_REFRESH_MS));
    let mut refresh_failing = false;
    let mut refreshed_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stopped.changed() => {
                if *stopped.borrow() {
                    break;
                }
            }
            _ = refresh.tick() => match fetch_users(&client, volume, &caller_key).await {
                Ok((wanted, _)) => {
                    refresh_failing = false;
                    refreshed_at = tokio::time::Instant::now();
                    apply_users(&config, share_name, &mut current, wanted).await;
                }
                Err(e) => {
                    if !refresh_failing {
                        tracing::warn!("smb: cannot refresh the users of {volume}, keeping the last known for {SMB_USERS_STALE_MS} ms: {e}");
                    }
                    refresh_failing = true;
                    // A removal or downgrade made meanwhile must not go unapplied forever:
                    // past the limit nobody is admitted until the cluster answers again.
                    let stale = refreshed_at.elapsed() > Duration::from_millis(SMB_USERS_STALE_MS);
                    if stale && !current.is_empty() {
                        tracing::error!("smb: no answer about the users of {volume} for {SMB_USERS_STALE_MS} ms; admitting nobody until there is");
                        apply_users(&config, share_name, &mut current, HashMap::new()).await;
                    }
                }
            },
        }
    }
    shutdown.shutdown();
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("smb server: {e}")),
        Err(e) => Err(format!("smb server task: {e}")),
    }
}
