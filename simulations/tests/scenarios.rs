//! Every shipped scenario file parses and describes a valid run.

use std::path::Path;

use shoal_simulations::Scenario;

#[test]
fn every_scenario_file_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut seen = 0;
    for dir in [root.clone(), root.join("extra")] {
        for entry in std::fs::read_dir(&dir).expect("the scenarios directory exists") {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).expect("readable");
                let scenario = Scenario::from_toml(&text)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                let stem = path.file_stem().and_then(|s| s.to_str());
                assert_eq!(Some(scenario.name.as_str()), stem, "name = file name");
                seen += 1;
            }
        }
    }
    assert!(seen >= 6, "found {seen} scenarios");
}

#[test]
fn unknown_keys_are_refused() {
    let text = "name = \"x\"\nseed = 1\nnodes = 2\nimage_mib = 1\ntypo = 3\n\
                [origin]\nup_mbps = 10\n[[links]]\nup_mbps = 1\ndown_mbps = 1\n";
    assert!(Scenario::from_toml(text).is_err());
}
