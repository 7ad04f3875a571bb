//! The gateway with credentials and access rules, end to end: a real `shoal node` with
//! `--gateway-htpasswd`, `--gateway-access` and `--gateway-auth-loopback` (so that clients on
//! 127.0.0.1 stand in for remote ones), users written by the real `htpasswd -B` and by
//! `shoal user add`, and skopeo (which follows the Bearer challenge to `/token`) and curl as
//! clients.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use shoal_tests::clients::{Credentials, Skopeo, require_tools, run_command};
use shoal_tests::image::ImageSpec;
use shoal_tests::node::{ShoalNode, add_gateway_user};

const ACCESS: &str = r#"
[groups]
team = ["alice"]

[[rule]]
repositories = ["team/*"]
groups = ["team"]

[[rule]]
repositories = ["other/*"]
users = ["bob"]
"#;

fn curl(args: &[&str]) -> Result<String> {
    let output = run_command(Command::new("curl").args(["-sS"]).args(args))?;
    Ok(output.stdout_text()?.to_owned())
}

/// A node in `dir/data` whose gateway asks loopback clients too for credentials, with the
/// users of `dir/htpasswd` and the rules [`ACCESS`] (written to `dir/access.toml`), holding
/// `team/app:1` and `other/app:1`; `extra` adds flags.
fn node_with_team_and_other(dir: &Path, extra: &[&str]) -> Result<ShoalNode> {
    let access = dir.join("access.toml");
    std::fs::write(&access, ACCESS)?;
    let htpasswd = dir.join("htpasswd");
    let mut args = vec![
        "--gateway-htpasswd",
        htpasswd.to_str().context("path")?,
        "--gateway-access",
        access.to_str().context("path")?,
        "--gateway-auth-loopback",
    ];
    args.extend(extra);
    let node = ShoalNode::start(&dir.join("data"), &args)?;
    for (seed, repository) in [(1, "team/app:1"), (2, "other/app:1")] {
        let image = ImageSpec::new(seed)
            .layer(300_000)
            .write_oci_layout(&dir.join(format!("layout{seed}")), None)?;
        node.import_ok(&image.path, Some(repository))?;
    }
    Ok(node)
}

#[test]
fn credentials_and_rules_decide_what_real_clients_pull() -> Result<()> {
    if !require_tools(&["skopeo", "htpasswd", "curl"])? {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let htpasswd = dir.path().join("htpasswd");
    // alice by Apache's htpasswd, bob by shoal itself: the node reads both, and Apache's
    // `htpasswd -v` reads shoal's line.
    run_command(
        Command::new("htpasswd")
            .args(["-c", "-B", "-b", "-C", "10"])
            .arg(&htpasswd)
            .args(["alice", "wonderland"]),
    )?;
    add_gateway_user(&htpasswd, "bob", "builder")?;
    run_command(
        Command::new("htpasswd")
            .args(["-v", "-b"])
            .arg(&htpasswd)
            .args(["bob", "builder"]),
    )?;
    let node = node_with_team_and_other(dir.path(), &["--metrics", "127.0.0.1:0"])?;
    let gateway = node.gateway();
    let alice = Skopeo::new().with_credentials(Credentials::new("alice", "wonderland"));
    let bob = Skopeo::new().with_credentials(Credentials::new("bob", "builder"));

    // Valid credentials pull (skopeo gets a 401 + Bearer challenge on /v2/ and asks /token).
    alice.copy_to_oci(
        &format!("{gateway}/team/app:1"),
        &dir.path().join("a"),
        false,
    )?;
    bob.copy_to_oci(
        &format!("{gateway}/other/app:1"),
        &dir.path().join("b"),
        false,
    )?;
    // A team/* user cannot pull other/*; a wrong password and no credentials pull nothing.
    let denied = alice.copy_to_oci(
        &format!("{gateway}/other/app:1"),
        &dir.path().join("c"),
        false,
    );
    let wrong = Skopeo::new()
        .with_credentials(Credentials::new("alice", "nope"))
        .copy_to_oci(
            &format!("{gateway}/team/app:1"),
            &dir.path().join("d"),
            false,
        );
    let anonymous = Skopeo::new().copy_to_oci(
        &format!("{gateway}/team/app:1"),
        &dir.path().join("e"),
        false,
    );
    ensure!(
        denied.is_err() && wrong.is_err() && anonymous.is_err(),
        "{denied:?} {wrong:?} {anonymous:?}"
    );
    ensure!(format!("{:#}", denied.unwrap_err()).contains("denied"));

    // curl: the catalog shows each user only what the rules grant; no credentials, a 401
    // challenge naming the token endpoint.
    let catalog = format!("http://{gateway}/v2/_catalog");
    let seen = curl(&["-u", "alice:wonderland", &catalog])?;
    ensure!(seen.trim() == r#"{"repositories":["team/app"]}"#, "{seen}");
    let seen = curl(&["-u", "bob:builder", &catalog])?;
    ensure!(seen.trim() == r#"{"repositories":["other/app"]}"#, "{seen}");
    let head = curl(&["-i", &format!("http://{gateway}/v2/")])?;
    ensure!(head.starts_with("HTTP/1.1 401"), "{head}");
    ensure!(
        head.to_ascii_lowercase().contains(&format!(
            "www-authenticate: bearer realm=\"http://{gateway}/token\",service=\"shoal\""
        )),
        "{head}"
    );

    let metrics = node.metrics().context("metrics address")?;
    let page = curl(&[&format!("http://{metrics}/metrics")])?;
    // Every series exists from the start at zero: these must have counted.
    for series in [
        "shoal_gateway_pulls_total{kind=\"blob\",zone=\"loopback\"}",
        "shoal_gateway_auth_failures_total{reason=\"credentials\"}",
        "shoal_gateway_auth_failures_total{reason=\"denied\"}",
    ] {
        let value: f64 = page
            .lines()
            .find_map(|line| line.strip_prefix(series))
            .with_context(|| format!("no {series} in\n{page}"))?
            .trim()
            .parse()?;
        ensure!(value >= 1.0, "{series} is {value}");
    }
    Ok(())
}

/// `curl -u USER:PASSWORD` for the catalog; the body, trimmed.
fn catalog_as(gateway: std::net::SocketAddr, user_password: &str) -> Result<String> {
    Ok(curl(&[
        "-u",
        user_password,
        &format!("http://{gateway}/v2/_catalog"),
    ])?
    .trim()
    .to_owned())
}

#[test]
fn users_and_rules_change_on_sighup_without_a_restart() -> Result<()> {
    if !require_tools(&["curl", "kill"])? {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let htpasswd = dir.path().join("htpasswd");
    add_gateway_user(&htpasswd, "alice", "wonderland")?;
    let access = dir.path().join("access.toml");
    let node = node_with_team_and_other(dir.path(), &[])?;
    let gateway = node.gateway();
    ensure!(catalog_as(gateway, "alice:wonderland")? == r#"{"repositories":["team/app"]}"#);
    let carol = catalog_as(gateway, "carol:secret")?;
    ensure!(carol.contains("UNAUTHORIZED"), "{carol}");

    // A new user, and alice given every repository; then SIGHUP.
    add_gateway_user(&htpasswd, "carol", "secret")?;
    std::fs::write(
        &access,
        "[[rule]]\nrepositories = [\"*\"]\nusers = [\"alice\", \"carol\"]\n",
    )?;
    let pid = node.pid().context("the node's pid")?;
    run_command(Command::new("kill").args(["-HUP", &pid.to_string()]))?;
    shoal_tests::clients::wait_until(
        "the new rules to apply",
        std::time::Duration::from_secs(30),
        || Ok(catalog_as(gateway, "alice:wonderland")?.contains("other/app")),
    )?;
    let both = r#"{"repositories":["other/app","team/app"]}"#;
    ensure!(catalog_as(gateway, "alice:wonderland")? == both);
    ensure!(catalog_as(gateway, "carol:secret")? == both);

    // A broken access file on SIGHUP keeps the rules in force, and the node serving.
    std::fs::write(&access, "[[rule]\nthis is not toml")?;
    run_command(Command::new("kill").args(["-HUP", &pid.to_string()]))?;
    shoal_tests::clients::wait_until(
        "the failed reload to be logged",
        std::time::Duration::from_secs(30),
        || Ok(node.logs().contains("not reloaded; the previous ones stay")),
    )?;
    ensure!(catalog_as(gateway, "carol:secret")? == both);
    ensure!(node.pid() == Some(pid), "the node ended on SIGHUP");
    Ok(())
}
