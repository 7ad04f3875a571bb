//! Machines that run no node (a developer's laptop, a CI runner) pull from a site node's
//! gateway over TLS with credentials: the node in one network namespace serves its gateway on
//! its LAN address with a certificate from a throwaway CA, and docker, podman, skopeo, ctr and
//! curl run in another namespace that plays the developer's machine, trusting that CA and
//! configured the way `shoal configure` writes it. Users come from `shoal user add`; the
//! access rules give `dev` the `team/*` repositories and `ci` the `other/*` ones.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use shoal_tests::clients::{
    Containerd, ContainerdConfig, CtrPullOptions, Dockerd, DockerdConfig, NetNs, Podman,
    PodmanConfig, Skopeo, oci_layout_digest, require_tools, run_command,
};
use shoal_tests::image::ImageSpec;
use shoal_tests::lan::Lan;
use shoal_tests::node::{ShoalNode, add_gateway_user, shoal_binary};
use shoal_tests::tls::{TestCa, Validity};

const ACCESS: &str = r#"
[[rule]]
repositories = ["team/*"]
users = ["dev"]

[[rule]]
repositories = ["other/*"]
users = ["ci"]
"#;

const DEV_PASSWORD: &str = "correct horse";
const CI_PASSWORD: &str = "battery staple";
const PORT: u16 = 5443;

/// A node on host 0 of a LAN serving its gateway over TLS with credentials; hosts 1 and 2 run
/// no node.
struct Site {
    lan: Lan,
    ca: TestCa,
    node: ShoalNode,
    dir: tempfile::TempDir,
    /// `team/app:1`'s manifest digest.
    team_digest: String,
}

impl Site {
    fn start() -> Result<Site> {
        let dir = tempfile::tempdir()?;
        let lan = Lan::create(3)?;
        let ca = TestCa::new()?;
        let cert = ca.issue(&[&Lan::address(0)], Validity::Current)?;
        let htpasswd = dir.path().join("htpasswd");
        for (user, password) in [("dev", DEV_PASSWORD), ("ci", CI_PASSWORD)] {
            add_gateway_user(&htpasswd, user, password)?;
        }
        let access = dir.path().join("access.toml");
        std::fs::write(&access, ACCESS)?;
        let gateway = format!("{}:{PORT}", Lan::address(0));
        let path = |path: &Path| path.to_str().map(str::to_owned).context("path");
        let node = ShoalNode::start_in(
            lan.host(0),
            &dir.path().join("node"),
            &[
                "--gateway",
                &gateway,
                "--gateway-tls-cert",
                &path(&cert.cert_pem_path)?,
                "--gateway-tls-key",
                &path(&cert.key_pem_path)?,
                "--gateway-htpasswd",
                &path(&htpasswd)?,
                "--gateway-access",
                &path(&access)?,
            ],
        )?;
        let mut team_digest = String::new();
        for (seed, reference) in [(41, "team/app:1"), (42, "other/app:1")] {
            let image = ImageSpec::new(seed)
                .layer(400_000)
                .write_oci_layout(&dir.path().join(format!("image{seed}")), None)?;
            node.import_ok(&image.path, Some(reference))?;
            if seed == 41 {
                team_digest = oci_layout_digest(&image.path)?;
            }
        }
        Ok(Site {
            lan,
            ca,
            node,
            dir,
            team_digest,
        })
    }

    /// The developer's machine.
    fn laptop(&self) -> &NetNs {
        self.lan.host(1)
    }

    fn gateway(&self) -> String {
        format!("{}:{PORT}", Lan::address(0))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `shoal configure RUNTIME` for this gateway and CA, written; `extra` adds options.
    fn configure(&self, runtime: &str, extra: &[&str]) -> Result<()> {
        run_command(
            Command::new(shoal_binary()?)
                .args(["configure", runtime, "--write", "--gateway"])
                .arg(self.gateway())
                .arg("--gateway-ca")
                .arg(self.ca.cert_pem_path())
                .args(extra),
        )
        .map(drop)
    }
}

fn skopeo(site: &Site, credentials: Option<(&str, &str)>) -> Skopeo {
    let skopeo = Skopeo::new()
        .in_netns(site.laptop())
        .with_cert_dir(&site.ca.cert_dir());
    match credentials {
        Some((user, password)) => {
            skopeo.with_credentials(shoal_tests::clients::Credentials::new(user, password))
        }
        None => skopeo,
    }
}

/// `curl` on `netns` trusting the test CA, as `user:password`: the status code of each of
/// `urls` (asked in order, over one connection where it stays open).
fn curl_codes(netns: &NetNs, ca: &TestCa, credentials: &str, urls: &[&str]) -> Result<Vec<String>> {
    let mut curl = netns.command("curl");
    curl.args(["-sS", "-w", "%{http_code}\\n", "--cacert"])
        .arg(ca.cert_pem_path())
        .args(["-u", credentials]);
    for url in urls {
        curl.args(["-o", "/dev/null", url]);
    }
    let output = run_command(&mut curl)?;
    Ok(output.stdout_text()?.lines().map(str::to_owned).collect())
}

#[test]
fn skopeo_and_curl_pull_with_credentials_and_get_nothing_without() -> Result<()> {
    if !require_tools(&["skopeo", "curl"])? {
        return Ok(());
    }
    let site = Site::start()?;
    let gateway = site.gateway();
    let team = format!("{gateway}/team/app:1");
    let digest = skopeo(&site, Some(("dev", DEV_PASSWORD))).copy_to_oci(
        &team,
        &site.path("pulled"),
        false,
    )?;
    ensure!(
        digest == site.team_digest,
        "{digest} != {}",
        site.team_digest
    );

    let refused = [
        (skopeo(&site, None), team.clone(), "no credentials"),
        (
            skopeo(&site, Some(("dev", "wrong"))),
            team.clone(),
            "a wrong password",
        ),
        (
            skopeo(&site, Some(("dev", DEV_PASSWORD))),
            format!("{gateway}/other/app:1"),
            "another team's repository",
        ),
    ];
    for (index, (client, reference, what)) in refused.into_iter().enumerate() {
        let pulled = client.copy_to_oci(&reference, &site.path(&format!("no{index}")), false);
        let error = format!(
            "{:#}",
            pulled.err().with_context(|| format!("{what} pulled"))?
        );
        ensure!(
            error.contains("unauthorized") || error.contains("denied"),
            "{what}: {error}"
        );
    }

    // The catalog lists what the caller may pull; `other/app` exists but is not shown.
    let catalog = run_command(
        site.laptop()
            .command("curl")
            .args(["-sS", "--cacert"])
            .arg(site.ca.cert_pem_path())
            .args(["-u", &format!("dev:{DEV_PASSWORD}")])
            .arg(format!("https://{gateway}/v2/_catalog")),
    )?;
    let catalog = catalog.stdout_text()?.trim().to_owned();
    ensure!(catalog == r#"{"repositories":["team/app"]}"#, "{catalog}");

    // The certificate is trusted through the CA only: without it curl refuses the server.
    let untrusted = site
        .laptop()
        .command("curl")
        .args(["-sS", "-o", "/dev/null"])
        .arg(format!("https://{gateway}/v2/"))
        .status()?;
    ensure!(
        untrusted.code() == Some(60),
        "curl without the CA: {untrusted}"
    );

    // 1,000 wrong passwords from the laptop: a few are checked, then the address is refused
    // without a check; the other machine still logs in.
    let url = format!("https://{gateway}/v2/");
    let guesses = vec![url.as_str(); 1000];
    let codes = curl_codes(site.laptop(), &site.ca, "dev:guess", &guesses)?;
    ensure!(codes.len() == 1000, "{} answers", codes.len());
    let limited = codes.iter().filter(|code| *code == "429").count();
    let checked = codes.iter().filter(|code| *code == "401").count();
    ensure!(
        limited >= 980 && checked + limited == 1000 && checked >= 1,
        "401: {checked}, 429: {limited}"
    );
    let other = curl_codes(
        site.lan.host(2),
        &site.ca,
        &format!("ci:{CI_PASSWORD}"),
        &[&url],
    )?;
    ensure!(other == ["200"], "the other machine got {other:?}");
    ensure!(
        !site.node.logs().contains("guess"),
        "the log holds a password"
    );
    Ok(())
}

#[test]
fn podman_logs_in_and_pulls_through_the_tls_mirror_shoal_configure_wrote() -> Result<()> {
    if !require_tools(&["podman"])? {
        return Ok(());
    }
    let site = Site::start()?;
    let conf = site.path("registries.conf");
    let certs = site.path("certs.d");
    site.configure(
        "podman",
        &[
            "--path",
            conf.to_str().context("path")?,
            "--certs-dir",
            certs.to_str().context("path")?,
        ],
    )?;
    let cert_dir = certs.join(site.gateway());
    ensure!(
        cert_dir.join("ca.crt").exists(),
        "no CA in {}",
        cert_dir.display()
    );
    let podman = Podman::with_config(PodmanConfig {
        netns: Some(site.laptop().clone()),
        registries_conf: Some(conf),
        credentials: None,
    })?;
    let authfile = site.path("auth.json");
    let login = |password: &str| {
        run_command(
            podman
                .podman()
                .args(["login", "--authfile"])
                .arg(&authfile)
                .arg("--cert-dir")
                .arg(&cert_dir)
                .args(["-u", "dev", "-p", password])
                .arg(site.gateway()),
        )
    };
    ensure!(login("wrong").is_err(), "a wrong password logged in");
    login(DEV_PASSWORD)?;
    // docker.io/team/app goes to the mirror (the node), with the mirror's credentials from
    // the login; the namespace has no route to Docker Hub, so only the mirror can answer.
    let pull = |reference: &str| {
        run_command(
            podman
                .podman()
                .args(["pull", "--quiet", "--authfile"])
                .arg(&authfile)
                .arg("--cert-dir")
                .arg(&cert_dir)
                .arg(reference),
        )
    };
    pull("docker.io/team/app:1")?;
    let digest = podman.image_digest("docker.io/team/app:1")?;
    ensure!(
        digest == site.team_digest,
        "{digest} != {}",
        site.team_digest
    );
    ensure!(
        pull(&format!("{}/other/app:1", site.gateway())).is_err(),
        "dev pulled another team's image"
    );
    Ok(())
}

#[test]
fn ctr_pulls_through_the_hosts_toml_shoal_configure_wrote() -> Result<()> {
    if !require_tools(&["containerd", "ctr"])? {
        return Ok(());
    }
    let site = Site::start()?;
    let credentials = site.path("credentials");
    std::fs::write(&credentials, format!("dev:{DEV_PASSWORD}\n"))?;
    let with_credentials = site.path("hosts");
    let without = site.path("hosts-anonymous");
    site.configure(
        "containerd",
        &[
            "--path",
            with_credentials.to_str().context("path")?,
            "--gateway-credentials",
            credentials.to_str().context("path")?,
        ],
    )?;
    site.configure("containerd", &["--path", without.to_str().context("path")?])?;
    let containerd = Containerd::start_with(ContainerdConfig {
        netns: Some(site.laptop().clone()),
    })?;
    let pull = |hosts_dir: &Path| {
        containerd.pull_with(
            "docker.io/team/app:1",
            &CtrPullOptions {
                hosts_dir: Some(hosts_dir.to_owned()),
                https: true,
                ..CtrPullOptions::default()
            },
        )
    };
    ensure!(pull(&without).is_err(), "pulled without credentials");
    pull(&with_credentials)?;
    let digest = containerd.image_digest("docker.io/team/app:1")?;
    ensure!(
        digest == site.team_digest,
        "{digest} != {}",
        site.team_digest
    );
    Ok(())
}

#[test]
fn docker_logs_in_and_pulls_over_tls() -> Result<()> {
    if !require_tools(&["dockerd", "docker"])? {
        return Ok(());
    }
    let site = Site::start()?;
    // dockerd reads a registry's CA only from /etc/docker/certs.d/HOST:PORT/ca.crt: it runs
    // with this directory as its /etc/docker, holding what `shoal configure docker` wrote.
    let etc_docker = site.path("etc-docker");
    site.configure(
        "docker",
        &[
            "--path",
            etc_docker.join("daemon.json").to_str().context("path")?,
            "--certs-dir",
            etc_docker.join("certs.d").to_str().context("path")?,
        ],
    )?;
    let dockerd = Dockerd::start_with(DockerdConfig {
        netns: Some(site.laptop().clone()),
        etc_docker: Some(etc_docker),
        ..DockerdConfig::default()
    })?;
    let gateway = site.gateway();
    let wrong = dockerd.login(
        &gateway,
        &shoal_tests::clients::Credentials::new("dev", "wrong"),
    );
    ensure!(wrong.is_err(), "docker login took a wrong password");
    dockerd.login(
        &gateway,
        &shoal_tests::clients::Credentials::new("dev", DEV_PASSWORD),
    )?;
    let team = format!("{gateway}/team/app:1");
    dockerd.pull(&team)?;
    let digest = dockerd.image_digest(&team)?;
    ensure!(
        digest == site.team_digest,
        "{digest} != {}",
        site.team_digest
    );
    let other = dockerd.pull(&format!("{gateway}/other/app:1"));
    let error = format!("{:#}", other.err().context("dev pulled other/app")?);
    ensure!(error.contains("denied"), "{error}");
    Ok(())
}
