//! `basalt config validate` on the repository's examples and fixtures.

use std::path::PathBuf;
use std::process::Command;

fn basalt(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fixture(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../cloud-config")
        .join(rel)
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn example_is_valid() {
    let file = fixture("examples/full.yaml");
    let (code, out, err) = basalt(&["config", "validate", &file]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("{file}: valid (hostname edge-7, 3 users, 7 files, basalt: alias, mesh, update, models, inference, health, allowed_clients, api_tokens, install)")
    );
}

#[test]
fn example_is_valid_as_json() {
    let file = fixture("examples/mesh-node.yaml");
    let (code, out, err) = basalt(&["config", "validate", &file, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["hostname"], "mesh-node-3");
    assert_eq!(v["basalt"], serde_json::json!(["alias", "mesh", "update"]));
}

#[test]
fn invalid_file_fails_with_the_error() {
    let file = fixture("invalid/write-outside.yaml");
    let (code, out, err) = basalt(&["config", "validate", &file]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    // The fixture's first line is a comment, so the document has no header.
    assert!(
        err.starts_with(&format!("{file}: the first line must be `#cloud-config`")),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("user-data");
    std::fs::write(
        &path,
        "#cloud-config\nwrite_files:\n  - path: /usr/local/bin/tool\n",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    let (code, _, err) = basalt(&["config", "validate", path]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        format!("{path}: write_files[0].path: \"/usr/local/bin/tool\" is on the read-only root file system; files can be written only below /etc/, /var/, /home/, /root/, /data/")
    );
}

#[test]
fn invalid_file_as_json_has_position_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("user-data");
    std::fs::write(
        &path,
        "#cloud-config\nhostname: a\nusers:\n  - name: ops\n    pasword: x\n",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    let (code, out, _) = basalt(&["config", "validate", path, "--json"]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with(r#"{"valid":false,"error":{"source":"#),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], false);
    let e = &v["error"];
    assert_eq!(e["source"], path);
    assert_eq!(e["field"], "users[0].pasword");
    assert_eq!(
        (e["line"].as_u64(), e["column"].as_u64()),
        (Some(5), Some(5))
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("unknown field `pasword`"),
        "{e}"
    );
}

#[test]
fn missing_file_is_named() {
    let (code, out, err) = basalt(&["config", "validate", "/nonexistent/user-data"]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.contains("reading cloud-config /nonexistent/user-data"),
        "{err}"
    );
}

#[test]
fn config_help_has_examples() {
    for args in [&["config", "--help"][..], &["config", "validate", "--help"]] {
        let (code, out, _) = basalt(args);
        assert_eq!(code, 0);
        assert!(out.contains("Examples:"), "basalt {args:?}:\n{out}");
    }
}
