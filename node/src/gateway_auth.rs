//! The gateway's users and access rules as the node configures them: read from the files
//! `--gateway-htpasswd` and `--gateway-access` name when the node starts (a bad file stops the
//! start, with the line), and again on SIGHUP (a bad file then keeps the rules in force and logs
//! why). The checking itself is the gateway's (`shoal_gateway::auth`).

use anyhow::Context;
use shoal_gateway::auth::access::AccessRules;
use shoal_gateway::auth::htpasswd::Htpasswd;
use shoal_gateway::{Auth, AuthConfig};

use crate::config::GatewayAuthFiles;

fn load(files: &GatewayAuthFiles) -> anyhow::Result<(Htpasswd, AccessRules)> {
    let htpasswd = match &files.htpasswd {
        Some(path) => Htpasswd::load(path)?,
        None => Htpasswd::default(),
    };
    let rules = match &files.access {
        Some(path) => AccessRules::load(path).with_context(|| format!("in {}", path.display()))?,
        None => AccessRules::any_user_pulls_everything(),
    };
    Ok((htpasswd, rules))
}

pub fn start(files: &GatewayAuthFiles) -> anyhow::Result<Auth> {
    let (htpasswd, rules) = load(files)?;
    tracing::info!(
        users = htpasswd.len(),
        loopback_requires_auth = files.loopback,
        "gateway requires credentials"
    );
    Auth::new(AuthConfig {
        htpasswd,
        rules,
        loopback_requires_auth: files.loopback,
        token_lifetime: files.token_lifetime,
    })
    .context("no random bytes for the gateway's token key")
}

/// Re-reads the files (on SIGHUP): new users and rules apply to the next request, tokens
/// already issued included; a bad file keeps the rules in force and logs why.
pub async fn reload(auth: &Auth, files: &GatewayAuthFiles) -> anyhow::Result<()> {
    let reading = files.clone();
    match tokio::task::spawn_blocking(move || load(&reading)).await? {
        Ok((htpasswd, rules)) => {
            tracing::info!(
                users = htpasswd.len(),
                "gateway users and access rules reloaded"
            );
            auth.reload(htpasswd, rules);
        }
        Err(error) => {
            tracing::error!(
                error = format!("{error:#}"),
                "gateway users and access rules not reloaded; the previous ones stay"
            )
        }
    }
    Ok(())
}
