//! Users and their share access: `brick user ...` and what SMB gateways fetch. Passwords are
//! sealed at rest under the cluster's seal key and in transit under the password key of the
//! admin the request runs as (docs/smb.md says why a password equivalent is kept at all).

use crate::mgmt::{cluster_err, Mgmt, MgmtError};
use brick_cluster::mgmt::{
    self as op, PasswordChanged, ShareSettings, ShareUser, UserAdded, UserEntry, UserRemoved, Users,
};
use brick_cluster::{
    hex_decode, hex_encode, validate_name, Cluster, ClusterError, UserRecord, ACCESS_OPTION_PREFIX,
    SEAL_AT_REST, SEAL_IN_TRANSIT,
};
use brick_tuning::PASSWORD_BYTES_MAX;
use brick_wire::{auth, ErrorCode};
use std::collections::BTreeMap;

fn invalid(why: impl Into<String>) -> (ErrorCode, String) {
    (ErrorCode::Invalid, why.into())
}

/// The password key of the user a request runs as: what transit seals are made under.
async fn caller_key(cluster: &Cluster, caller: &str) -> Result<[u8; 32], (ErrorCode, String)> {
    if caller == brick_dataplane::NODE_USER {
        // A gateway a node hosts logs in with the node key.
        return cluster.node_key().await.map_err(cluster_err);
    }
    let record = cluster.user(caller).await.map_err(cluster_err)?;
    record.and_then(|u| u.key()).ok_or_else(|| {
        (
            ErrorCode::Access,
            format!("user {caller:?} has no password key to seal passwords under"),
        )
    })
}

fn check_password(password: &str) -> Result<(), (ErrorCode, String)> {
    if password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
        return Err(invalid(format!(
            "a password must be 1 to {PASSWORD_BYTES_MAX} bytes"
        )));
    }
    if password.contains('\0') {
        return Err(invalid("a password must not contain NUL"));
    }
    Ok(())
}

/// The record for `name` with `password`: its native password key and the password sealed
/// under the cluster's seal key.
pub async fn user_record(
    cluster: &Cluster,
    name: &str,
    password: &str,
    admin: bool,
) -> Result<UserRecord, ClusterError> {
    let seal_key = cluster.seal_key().await?;
    let sealed = auth::seal(&seal_key, SEAL_AT_REST, rand::random(), password.as_bytes());
    Ok(UserRecord {
        name: name.to_string(),
        key_hex: hex_encode(&auth::password_key(name, password)),
        admin,
        password_sealed_hex: Some(hex_encode(&sealed)),
    })
}

/// The password `record` holds sealed at rest, if any.
pub async fn stored_password(
    cluster: &Cluster,
    record: &UserRecord,
) -> Result<Option<String>, ClusterError> {
    let Some(hex) = &record.password_sealed_hex else {
        return Ok(None);
    };
    let seal_key = cluster.seal_key().await?;
    let opened = hex_decode(hex).and_then(|b| auth::open_sealed(&seal_key, SEAL_AT_REST, &b));
    match opened.map(String::from_utf8) {
        Some(Ok(p)) => Ok(Some(p)),
        _ => Err(ClusterError::Invalid(format!(
            "user {}: the stored password does not open under the cluster's seal key",
            record.name
        ))),
    }
}

impl Mgmt {
    async fn unseal_transit(&self, caller: &str, hex: &str) -> Result<String, (ErrorCode, String)> {
        let key = caller_key(&self.cluster, caller).await?;
        let sealed = hex_decode(hex).ok_or_else(|| invalid("password_sealed_hex is not hex"))?;
        let plain = auth::open_sealed(&key, SEAL_IN_TRANSIT, &sealed).ok_or_else(|| {
            invalid("the password was not sealed under the requesting user's key")
        })?;
        let password = String::from_utf8(plain).map_err(|_| invalid("a password must be UTF-8"))?;
        check_password(&password)?;
        Ok(password)
    }

    pub(crate) async fn user_add(
        &self,
        caller: &str,
        r: op::UserAdd,
    ) -> Result<UserAdded, MgmtError> {
        let op::UserAdd {
            name,
            password_sealed_hex,
            admin,
        } = r;
        validate_name("user", &name).map_err(cluster_err)?;
        let password = self.unseal_transit(caller, &password_sealed_hex).await?;
        let record = user_record(&self.cluster, &name, &password, admin)
            .await
            .map_err(cluster_err)?;
        self.cluster
            .create_user(&record)
            .await
            .map_err(cluster_err)?;
        Ok(UserAdded { added: name, admin })
    }

    pub(crate) async fn user_passwd(
        &self,
        caller: &str,
        r: op::UserPasswd,
    ) -> Result<PasswordChanged, MgmtError> {
        let name = r.name;
        let password = self.unseal_transit(caller, &r.password_sealed_hex).await?;
        // Sealed once with a fresh nonce; the admin flag is kept from the record replaced.
        let fresh = user_record(&self.cluster, &name, &password, false)
            .await
            .map_err(cluster_err)?;
        self.cluster
            .update_user(&name, |old| UserRecord {
                admin: old.admin,
                ..fresh.clone()
            })
            .await
            .map_err(cluster_err)?;
        Ok(PasswordChanged { changed: name })
    }

    pub(crate) async fn user_remove(
        &self,
        caller: &str,
        r: op::UserRemove,
    ) -> Result<UserRemoved, MgmtError> {
        let name = r.name;
        if name == caller {
            return Err(invalid(format!(
                "user {name:?} cannot remove itself; ask as another admin"
            )));
        }
        self.cluster.remove_user(&name).await.map_err(cluster_err)?;
        let option = format!("{ACCESS_OPTION_PREFIX}{name}");
        for vol in self.cluster.list_volumes().await.map_err(cluster_err)? {
            if vol.options.contains_key(&option) {
                self.cluster
                    .update_volume(&vol.name, |v| {
                        v.options.remove(&option);
                        Ok(())
                    })
                    .await
                    .map_err(cluster_err)?;
            }
        }
        Ok(UserRemoved { removed: name })
    }

    pub(crate) async fn user_list(&self) -> Result<Users, MgmtError> {
        let volumes = self.cluster.list_volumes().await.map_err(cluster_err)?;
        let mut users = Vec::new();
        for u in self.cluster.list_users().await.map_err(cluster_err)? {
            let access: BTreeMap<String, _> = volumes
                .iter()
                .filter_map(|v| {
                    let (_, a) = v.share_access().into_iter().find(|(n, _)| *n == u.name)?;
                    Some((v.name.clone(), a))
                })
                .collect();
            users.push(UserEntry {
                smb: u.password_sealed_hex.is_some(),
                name: u.name,
                admin: u.admin,
                access,
            });
        }
        Ok(Users { users })
    }

    pub(crate) async fn share_users(
        &self,
        caller: &str,
        r: op::ShareUsers,
    ) -> Result<ShareSettings, MgmtError> {
        let volume = &r.volume;
        let vol = self.cluster.volume(volume).await.map_err(cluster_err)?;
        let key = caller_key(&self.cluster, caller).await?;
        let mut users = Vec::new();
        for (name, access) in vol.share_access() {
            let Some(record) = self.cluster.user(&name).await.map_err(cluster_err)? else {
                continue;
            };
            // A record that does not open is left out (and logged), not fatal to the others.
            let password = match stored_password(&self.cluster, &record).await {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("share users of {volume}: {e}");
                    continue;
                }
            };
            let sealed = auth::seal(&key, SEAL_IN_TRANSIT, rand::random(), password.as_bytes());
            users.push(ShareUser {
                name,
                access,
                password_sealed_hex: hex_encode(&sealed),
            });
        }
        Ok(ShareSettings {
            users,
            encrypt: vol.option("smb.encrypt") == "on",
            leases: vol.option("smb.leases") == "on",
        })
    }
}
