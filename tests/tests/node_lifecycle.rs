//! The node process itself: start, lock, identity, status and shutdown.

use shoal_tests::node::{ShoalNode, shoal};

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = ShoalNode::start(&data, &[]).unwrap();
    let second = shoal(&data, "node")
        .unwrap()
        .args(["--gateway", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(
        message.contains("already running on data directory"),
        "{message}"
    );
    assert!(
        message.contains(&first.pid().unwrap().to_string()),
        "{message}"
    );
    assert!(first.stop().unwrap().success());
    assert!(
        !data.join("shoal.sock").exists(),
        "the socket is removed on shutdown"
    );
}

#[test]
fn id_is_stable_and_matches_status() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let id = shoal(&data, "id").unwrap().output().unwrap();
    assert!(id.status.success());
    let id = String::from_utf8(id.stdout).unwrap().trim().to_owned();
    assert!(id.starts_with("12D3KooW"), "{id}");
    let node = ShoalNode::start(&data, &[]).unwrap();
    let status = node.status().unwrap();
    assert_eq!(status["peer_id"], id);
    assert_eq!(status["store"]["blobs"], 0);
    assert_eq!(status["gateway"], node.gateway().to_string());
}

#[test]
fn commands_without_a_running_node_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let output = shoal(dir.path(), "status").unwrap().output().unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("no shoal node is running"), "{message}");
}
