//! `brick user ...`: users of the cluster, for the native protocol and the SMB gateways.
//! New passwords are read from stdin (never from the command line, where `ps` shows them)
//! and sent sealed under the password key of the admin running the command.

use crate::{show, Out};
use anyhow::{bail, Context, Result};
use brick_client::Client;
use brick_cluster::mgmt::{UserAdd, UserList, UserPasswd, UserRemove};
use brick_cluster::{hex_encode, SEAL_IN_TRANSIT};
use brick_tuning::PASSWORD_BYTES_MAX;
use brick_wire::auth;
use clap::Subcommand;
use std::io::BufRead;

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user; the password is read from stdin (one line).
    Add {
        name: String,
        /// May change the cluster (volumes, users); otherwise only reads and writes files.
        #[arg(long)]
        admin: bool,
    },
    /// Set a user's password, read from stdin (one line). Their SMB sessions end.
    Passwd { name: String },
    /// Remove a user and their access to every volume.
    Remove { name: String },
    /// Every user, with the volumes they may use over SMB (`brick volume set V access.USER`).
    List,
}

/// The new password: the first line of stdin, without its line end.
fn read_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the new password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
        bail!("the new password (first line of stdin) must be 1 to {PASSWORD_BYTES_MAX} bytes");
    }
    Ok(password)
}

/// `password` sealed for the management plane under the caller's password key, in hex.
fn sealed(caller_key: &[u8; 32], password: &str) -> String {
    hex_encode(&auth::seal(
        caller_key,
        SEAL_IN_TRANSIT,
        rand::random(),
        password.as_bytes(),
    ))
}

pub async fn run(client: &Client, caller_key: &[u8; 32], out: &Out, cmd: UserCmd) -> Result<()> {
    match cmd {
        UserCmd::Add { name, admin } => {
            let req = UserAdd {
                name,
                password_sealed_hex: sealed(caller_key, &read_password()?),
                admin,
            };
            show(client, out, &req).await
        }
        UserCmd::Passwd { name } => {
            let req = UserPasswd {
                name,
                password_sealed_hex: sealed(caller_key, &read_password()?),
            };
            show(client, out, &req).await
        }
        UserCmd::Remove { name } => show(client, out, &UserRemove { name }).await,
        UserCmd::List => show(client, out, &UserList {}).await,
    }
}
