//! The files in `deploy/` stay in step with the binary: the example config loads through the
//! node's own config loader (by way of `shoal configure`, which resolves it exactly as
//! `shoal node` does), the systemd unit runs the node on it, and the Kubernetes manifest is
//! well-formed YAML whose embedded config and initContainer command work.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("reading deploy/{file}: {e}"))
}

/// Runs `shoal ARGS` and returns its stdout, failing the test with stderr if it fails.
fn shoal<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .output()
        .expect("running shoal");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 stdout");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "shoal failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout
}

#[test]
fn the_example_config_loads_and_configures_containerd() {
    let config = deploy("shoal.toml");
    let out = shoal([
        "configure".as_ref(),
        "containerd".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    for wanted in [
        "config_path = \"/etc/containerd/certs.d\"",
        "# file: /etc/containerd/certs.d/docker.io/hosts.toml\n",
        "\nserver = \"https://registry-1.docker.io\"\n",
        "\n[host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
    ] {
        assert!(out.contains(wanted), "no {wanted:?} in:\n{out}");
    }
    let toml: toml::Table = toml::from_str(&read("shoal.toml")).expect("deploy/shoal.toml");
    assert_eq!(toml["data"].as_str(), Some("/var/lib/shoal"));
}

/// Uncomments every example setting in `text` (a later example of a key replaces the earlier
/// setting, and `[tables]` stay last) so that all of them go through the real loader.
fn uncomment_examples(text: &str) -> String {
    let is_setting = |line: &str| {
        line.starts_with('[')
            || line.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
            })
    };
    let mut settings: Vec<(String, String)> = Vec::new();
    let mut tables = String::new();
    for line in text.lines() {
        let line = line
            .strip_prefix("# ")
            .filter(|l| is_setting(l))
            .unwrap_or(line);
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with('[') || !tables.is_empty() {
            tables.push_str(line);
            tables.push('\n');
            continue;
        }
        let key = line.split(" = ").next().unwrap_or_default().to_owned();
        match settings.iter_mut().find(|(k, _)| *k == key) {
            Some(setting) => setting.1 = line.to_owned(),
            None => settings.push((key, line.to_owned())),
        }
    }
    let mut document: String = settings.into_iter().map(|(_, line)| line + "\n").collect();
    document.push_str(&tables);
    document
}

#[test]
fn every_example_in_the_example_config_is_valid() {
    let document = uncomment_examples(&read("shoal.toml"));
    for key in [
        "listen",
        "bootstrap",
        "mdns",
        "trust",
        "prefetch",
        "max-egress",
        "max-ingress",
        "tag-freshness",
        "log-level",
        "[credentials.\"ghcr.io\"]",
    ] {
        assert!(
            document.lines().any(|line| line.starts_with(key)),
            "no example of {key} in deploy/shoal.toml:\n{document}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shoal.toml");
    std::fs::write(&config, &document).unwrap();
    let out = shoal([
        "configure".as_ref(),
        "podman".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(
        out.contains("prefix = \"docker.io\"") && out.contains("prefix = \"ghcr.io\""),
        "{out}\nfrom:\n{document}"
    );
}

#[test]
fn the_example_config_writes_every_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let config = deploy("shoal.toml");
    let run = |runtime: &str, path: &Path| {
        shoal([
            "configure".as_ref(),
            runtime.as_ref(),
            "--write".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--path".as_ref(),
            path.as_os_str(),
        ])
    };
    let certs = dir.path().join("certs.d");
    let hosts = certs.join("docker.io/hosts.toml");
    assert_eq!(
        run("containerd", &certs),
        format!("wrote {}\n", hosts.display())
    );
    assert!(
        std::fs::read_to_string(&hosts)
            .unwrap()
            .contains("[host.\"http://127.0.0.1:5050\"]")
    );

    let daemon_json = dir.path().join("daemon.json");
    std::fs::write(&daemon_json, "{\"storage-driver\": \"overlay2\"}\n").unwrap();
    assert_eq!(
        run("docker", &daemon_json),
        format!("wrote {}\n", daemon_json.display())
    );
    let merged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&daemon_json).unwrap()).unwrap();
    assert_eq!(
        merged,
        serde_json::json!({
            "storage-driver": "overlay2",
            "registry-mirrors": ["http://127.0.0.1:5050"],
        })
    );

    let drop_in = dir.path().join("registries.conf.d/shoal.conf");
    run("podman", &drop_in);
    let conf: toml::Table = toml::from_str(&std::fs::read_to_string(&drop_in).unwrap()).unwrap();
    assert_eq!(
        conf["registry"][0]["mirror"][0]["location"].as_str(),
        Some("127.0.0.1:5050")
    );
}

#[test]
fn the_systemd_unit_runs_the_node_on_the_example_config() {
    let unit = read("shoal.service");
    let mut section = String::new();
    let mut settings: Vec<(String, String, String)> = Vec::new();
    for (number, line) in unit.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("shoal.service:{}: not KEY=VALUE: {line}", number + 1));
        assert!(
            !section.is_empty(),
            "shoal.service: {key} outside a section"
        );
        settings.push((section.clone(), key.to_owned(), value.to_owned()));
    }
    let get = |section: &str, key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    assert_eq!(
        get("Service", "ExecStart"),
        ["/usr/local/bin/shoal node --config /etc/shoal/shoal.toml"]
    );
    assert_eq!(get("Service", "Restart"), ["on-failure"]);
    assert_eq!(get("Service", "StateDirectory"), ["shoal"]);
    assert_eq!(get("Service", "NoNewPrivileges"), ["yes"]);
    assert_eq!(get("Service", "ProtectSystem"), ["strict"]);
    assert_eq!(get("Install", "WantedBy"), ["multi-user.target"]);
    assert_eq!(get("Service", "LimitNOFILE").len(), 1);
    // The data directory of the example config is the state directory, writable under
    // ProtectSystem=strict.
    let toml: toml::Table = toml::from_str(&read("shoal.toml")).unwrap();
    let data = toml["data"].as_str().unwrap();
    assert_eq!(data, "/var/lib/shoal");
    assert!(get("Service", "ReadWritePaths").contains(&data));
}

/// One line of YAML outside block scalars.
#[derive(Debug)]
struct YamlLine<'a> {
    number: usize,
    indent: usize,
    text: &'a str,
}

/// A block-style YAML check without a YAML parser: spaces only, two-space steps, every line a
/// `key: value`, `key:` or `- item`, nesting only under a line that opens it, balanced flow
/// brackets and quotes. Returns each document's lines and the contents of block scalars
/// (`key: |`) by key.
fn check_yaml(text: &str) -> (Vec<Vec<YamlLine<'_>>>, Vec<(String, String)>) {
    assert!(!text.contains('\t'), "tabs in YAML");
    let mut documents: Vec<Vec<YamlLine<'_>>> = vec![Vec::new()];
    let mut scalars: Vec<(String, String)> = Vec::new();
    let mut block: Option<usize> = None;
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let indent = raw.len() - raw.trim_start().len();
        let text = raw.trim();
        if let Some(block_indent) = block {
            if text.is_empty() || indent > block_indent {
                let (_, content) = scalars.last_mut().unwrap();
                content.push_str(raw.get(block_indent + 2..).unwrap_or(""));
                content.push('\n');
                continue;
            }
            block = None;
        }
        if text == "---" {
            assert_eq!(indent, 0, "line {number}: indented ---");
            documents.push(Vec::new());
            continue;
        }
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        assert_eq!(indent % 2, 0, "line {number}: odd indentation");
        let body = text.strip_prefix("- ").unwrap_or(text);
        let key_value = body
            .split_once(": ")
            .or(body.strip_suffix(':').map(|k| (k, "")));
        if let Some((key, value)) = key_value {
            assert!(
                !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b)),
                "line {number}: bad key {key:?}"
            );
            if value == "|" || value == "|-" {
                block = Some(indent);
                scalars.push((key.to_owned(), String::new()));
            }
            check_flow(number, value);
        } else {
            assert!(text.starts_with("- "), "line {number}: not YAML: {text}");
            check_flow(number, body);
        }
        documents.last_mut().unwrap().push(YamlLine {
            number,
            indent,
            text,
        });
    }
    for document in &documents {
        for pair in document.windows(2) {
            let (line, next) = (&pair[0], &pair[1]);
            let item = line.text.starts_with("- ");
            let opens = line.text.ends_with(':');
            let child = line.indent + if item { 2 } else { 0 };
            let allowed = if opens {
                next.indent == child + 2 || (next.indent == child && next.text.starts_with("- "))
            } else {
                next.indent <= child
            };
            assert!(
                allowed,
                "line {}: indentation {} does not follow line {} ({:?})",
                next.number, next.indent, line.number, line.text
            );
        }
        if let Some(last) = document.last() {
            assert!(!last.text.ends_with(':'), "line {}: empty", last.number);
        }
    }
    documents.retain(|document| !document.is_empty());
    (documents, scalars)
}

fn check_flow(number: usize, value: &str) {
    let mut depth = 0i32;
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            '[' | '{' if !quoted => depth += 1,
            ']' | '}' if !quoted => depth -= 1,
            _ => {}
        }
        assert!(depth >= 0, "line {number}: unbalanced brackets");
    }
    assert!(depth == 0 && !quoted, "line {number}: unbalanced {value:?}");
}

/// The `- item` lines directly under the first `key:` line after `after`.
fn list_under<'a>(lines: &[YamlLine<'a>], after: &str, key: &str) -> Vec<&'a str> {
    let start = lines
        .iter()
        .position(|l| l.text == after)
        .unwrap_or_else(|| panic!("no {after:?}"));
    let open = start
        + lines[start..]
            .iter()
            .position(|l| l.text == key)
            .unwrap_or_else(|| panic!("no {key:?} after {after:?}"));
    lines[open + 1..]
        .iter()
        .take_while(|l| l.indent > lines[open].indent)
        .filter_map(|l| l.text.strip_prefix("- "))
        .collect()
}

#[test]
fn the_kubernetes_manifest_is_well_formed_and_its_init_container_works() {
    let text = read("kubernetes/shoal-daemonset.yaml");
    let (documents, scalars) = check_yaml(&text);
    let kinds: Vec<&str> = documents
        .iter()
        .map(|document| {
            let top: Vec<&str> = document
                .iter()
                .filter(|l| l.indent == 0)
                .map(|l| l.text)
                .collect();
            assert!(top.iter().any(|t| t.starts_with("apiVersion: ")), "{top:?}");
            top.iter()
                .find_map(|t| t.strip_prefix("kind: "))
                .expect("a kind")
        })
        .collect();
    assert_eq!(kinds, ["Namespace", "ConfigMap", "Service", "DaemonSet"]);

    let daemonset = &documents[3];
    let has = |text: &str| daemonset.iter().any(|l| l.text == text);
    for wanted in [
        "hostNetwork: true",
        "- operator: Exists",
        "path: /var/lib/shoal",
        "path: /etc/containerd/certs.d",
        "mountPath: /host/etc/containerd/certs.d",
        "livenessProbe:",
        "host: 127.0.0.1",
        "path: /v2/",
        "port: 5050",
        "resources:",
        "requests:",
        "limits:",
    ] {
        assert!(has(wanted), "no {wanted:?} in the DaemonSet");
    }
    assert_eq!(
        list_under(daemonset, "- name: shoal", "command:"),
        [
            "/usr/local/bin/shoal",
            "node",
            "--config",
            "/etc/shoal/shoal.toml"
        ]
    );

    check_image_and_bootstrap(&documents[2], daemonset, &scalars);

    // The ConfigMap's shoal.toml loads, and the initContainer's own command, pointed at a
    // temporary directory, writes containerd's hosts.toml from it.
    let [(key, config)] = scalars.as_slice() else {
        panic!("expected one block scalar, found {scalars:?}");
    };
    assert_eq!(key, "shoal.toml");
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("shoal.toml");
    std::fs::write(&config_path, config).unwrap();
    let certs = dir.path().join("certs.d");
    let command = list_under(daemonset, "- name: configure-containerd", "command:");
    assert_eq!(command[0], "/usr/local/bin/shoal");
    let args: Vec<std::ffi::OsString> = command[1..]
        .iter()
        .map(|arg| match *arg {
            "/etc/shoal/shoal.toml" => config_path.clone().into_os_string(),
            "/host/etc/containerd/certs.d" => certs.clone().into_os_string(),
            arg => arg.into(),
        })
        .collect();
    assert!(args.iter().any(|a| a == "--write"), "{args:?}");
    let out = shoal(&args);
    let hosts = certs.join("docker.io/hosts.toml");
    assert_eq!(out, format!("wrote {}\n", hosts.display()));
    let written = std::fs::read_to_string(&hosts).unwrap();
    assert!(
        written.contains("server = \"https://registry-1.docker.io\"")
            && written.contains("[host.\"http://127.0.0.1:5050\"]"),
        "{written}"
    );
}

/// The value of the first `key: value` line of `lines` whose key is `key`.
fn value_of<'a>(lines: &[YamlLine<'a>], key: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| {
        l.text
            .strip_prefix("- ")
            .unwrap_or(l.text)
            .strip_prefix(key)?
            .strip_prefix(": ")
    })
}

/// Both containers run the image `deploy/image/build` makes (`localhost/shoal:<version>`), and
/// the config bootstraps through the headless Service's DNS name, with nothing else (mDNS off)
/// that could find peers instead.
fn check_image_and_bootstrap(
    service: &[YamlLine<'_>],
    daemonset: &[YamlLine<'_>],
    scalars: &[(String, String)],
) {
    let images: Vec<&str> = daemonset
        .iter()
        .filter_map(|l| l.text.strip_prefix("image: "))
        .collect();
    let wanted = format!("localhost/shoal:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(images, [wanted.as_str(), wanted.as_str()]);
    let build = read("image/build");
    assert!(
        build.contains("tag=$(\"$binary\" --version"),
        "deploy/image/build no longer tags the image with the binary's version"
    );

    for wanted in [
        "clusterIP: None",
        "publishNotReadyAddresses: true",
        "port: 4050",
    ] {
        assert!(
            service.iter().any(|l| l.text == wanted),
            "no {wanted:?} in the Service"
        );
    }
    let name = value_of(service, "name").expect("the Service's name");
    let namespace = value_of(service, "namespace").expect("the Service's namespace");
    let selector = service
        .iter()
        .position(|l| l.text == "selector:")
        .expect("the Service's selector");
    let selected = service[selector + 1].text;
    assert!(
        list_under(daemonset, "template:", "labels:").is_empty()
            && daemonset
                .iter()
                .skip_while(|l| l.text != "template:")
                .any(|l| l.text == selected),
        "the Service selects {selected:?}, which the DaemonSet's pods do not carry"
    );

    let (_, config) = scalars.first().expect("the ConfigMap's shoal.toml");
    let config: toml::Table = toml::from_str(config).expect("the ConfigMap's shoal.toml");
    let bootstrap: Vec<&str> = config["bootstrap"]
        .as_array()
        .expect("a bootstrap list")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        bootstrap,
        [format!("/dns4/{name}.{namespace}.svc/tcp/4050")]
    );
    assert_eq!(config["mdns"].as_bool(), Some(false));
}
