//! The crate graph keeps the architecture's promises (docs/architecture.md):
//! a backend, ours or a third party's, depends on the testbed contract
//! only, never on the engine.

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::process::Command;

/// The resolved workspace graph: package name -> names of its normal
/// (non-dev, non-build) dependencies.
fn normal_dependencies() -> HashMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| {
            let deps = node["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| names[d["pkg"].as_str().unwrap()].to_string())
                .collect();
            (names[node["id"].as_str().unwrap()].to_string(), deps)
        })
        .collect()
}

/// Every crate `root` links, itself excluded.
fn closure(graph: &HashMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_string()];
    while let Some(name) = todo.pop() {
        for dep in &graph[&name] {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

#[test]
fn backends_depend_on_the_testbed_contract_not_on_the_engine() {
    let graph = normal_dependencies();
    // Ours, and the example of a third party's.
    let backends: Vec<&String> = graph
        .keys()
        .filter(|name| name.starts_with("dep8-backend-") || *name == "dep8-example-backend")
        .collect();
    assert!(backends.len() >= 7, "backends found: {backends:?}");
    let engine = [
        "dep8-core",
        "debian-control",
        "deb822-lossless",
        "quick-junit",
    ];
    for backend in backends {
        let links = closure(&graph, backend);
        assert!(links.contains("dep8-testbed"), "{backend} links {links:?}");
        for crate_name in engine {
            assert!(
                !links.contains(crate_name),
                "{backend} links the engine's {crate_name}"
            );
        }
    }
}

/// The crates `cargo tree` lists for the dep8 binary built with `features`
/// alone.
fn dep8_links_with(features: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-p", "dep8", "-e", "normal", "--prefix", "none"])
        .args(["--no-default-features", "--features", features])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn each_backend_is_a_cargo_feature_of_the_binary() {
    let lxc_only = dep8_links_with("lxc");
    for always in [
        "dep8-backend-null",
        "dep8-backend-external",
        "dep8-backend-lxc",
    ] {
        assert!(lxc_only.contains(always), "{always} missing: {lxc_only:?}");
    }
    for left_out in [
        "dep8-backend-qemu",
        "dep8-backend-schroot",
        "dep8-backend-unshare",
    ] {
        assert!(
            !lxc_only.contains(left_out),
            "{left_out} linked: {lxc_only:?}"
        );
    }
}
