//! Every file in the repository's `cloud-config/` is loaded here: examples
//! must validate (against the rules and against `schema.json`), invalid
//! fixtures must fail with the error their first line expects.

use basalt_formats::cloud_config::{CloudConfig, BASALT_KEYS, TOP_LEVEL_KEYS};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cloud-config")
}

/// The `.yaml` files of a folder, sorted; at least one.
fn yaml_files(sub: &str) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(dir().join(sub))
        .unwrap_or_else(|e| panic!("cloud-config/{sub}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no files in cloud-config/{sub}");
    files
        .into_iter()
        .map(|p| {
            let name = format!("{sub}/{}", p.file_name().unwrap().to_string_lossy());
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

fn schema() -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join("schema.json")).unwrap();
    serde_json::from_str(&text).expect("schema.json is JSON")
}

#[test]
fn every_example_validates() {
    let files = yaml_files("examples");
    for required in [
        "minimal.yaml",
        "full.yaml",
        "mesh-node.yaml",
        "inference-node.yaml",
    ] {
        assert!(
            files
                .iter()
                .any(|(n, _)| n == &format!("examples/{required}")),
            "examples/{required} is missing"
        );
    }
    for (name, text) in files {
        if let Err(e) = CloudConfig::parse(&name, &text) {
            panic!("{e}");
        }
    }
}

#[test]
fn full_example_uses_every_key() {
    let text = std::fs::read_to_string(dir().join("examples/full.yaml")).unwrap();
    let c = CloudConfig::parse("full.yaml", &text).unwrap();
    assert_eq!(c.keys_set(), TOP_LEVEL_KEYS);
    let b = c.basalt.as_ref().unwrap();
    assert_eq!(b.keys_set(), &BASALT_KEYS[1..]);
    let raw: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    let used = |list: &str, key: &str| {
        raw[list]
            .as_array()
            .unwrap()
            .iter()
            .any(|item| item.get(key).is_some())
    };
    for key in [
        "name",
        "gecos",
        "groups",
        "passwd",
        "lock_passwd",
        "ssh_authorized_keys",
        "sudo",
        "shell",
    ] {
        assert!(used("users", key), "full.yaml: no user sets {key}");
    }
    for key in [
        "path",
        "content",
        "encoding",
        "permissions",
        "owner",
        "append",
        "reapply",
    ] {
        assert!(used("write_files", key), "full.yaml: no file sets {key}");
    }
}

#[test]
fn every_invalid_fixture_fails_as_expected() {
    for (name, text) in yaml_files("invalid") {
        let (first, document) = text.split_once('\n').unwrap_or((&text, ""));
        let expect = first
            .strip_prefix("# expect: ")
            .unwrap_or_else(|| panic!("{name}: the first line must be `# expect: <error text>`"))
            .trim();
        assert!(!expect.is_empty(), "{name}: empty expectation");
        match CloudConfig::parse(&name, document) {
            Ok(_) => panic!("{name}: accepted, but should fail with {expect:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(expect),
                    "{name}: error {msg:?} does not contain {expect:?}"
                );
                assert!(
                    msg.starts_with(&name),
                    "{name}: error does not name it: {msg}"
                );
                assert!(!msg.contains('\n'), "{name}: error is not one line: {msg}");
            }
        }
    }
}

#[test]
fn every_example_matches_the_schema() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let validator = jsonschema::draft202012::new(&schema).expect("schema.json is a valid schema");
    for (name, text) in yaml_files("examples") {
        let value: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{name} against schema.json:\n{}",
            errors.join("\n")
        );
    }
}

#[test]
fn schema_rejects_what_the_rules_reject_by_shape() {
    // Fixtures whose fault is one of shape or syntax: the schema must catch them too.
    let validator = jsonschema::draft202012::new(&schema()).unwrap();
    for file in [
        "unknown-key.yaml",
        "unknown-user-key.yaml",
        "wrong-type.yaml",
        "write-outside.yaml",
        "bad-hostname.yaml",
        "plain-password.yaml",
        "bad-user-name.yaml",
        "bad-ssh-key.yaml",
        "unsupported-basalt-version.yaml",
        "missing-basalt-version.yaml",
        "bad-model-name.yaml",
        "bad-model-url.yaml",
        "mesh-token-wrong-prefix.yaml",
        "unknown-basalt-key.yaml",
        "sudo-true.yaml",
    ] {
        let text = std::fs::read_to_string(dir().join("invalid").join(file)).unwrap();
        let value: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert!(
            !validator.is_valid(&value),
            "schema.json accepts invalid/{file}"
        );
    }
}

/// The schema describes exactly the keys the parser reads, at every level.
#[test]
fn schema_keys_equal_the_struct_keys() {
    fn struct_keys<T: serde::Serialize + Default>() -> BTreeSet<String> {
        serde_json::to_value(T::default())
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }
    fn schema_keys(node: &serde_json::Value, schema: &serde_json::Value) -> BTreeSet<String> {
        let node = match node.get("$ref").and_then(|r| r.as_str()) {
            Some(r) => {
                let name = r.strip_prefix("#/$defs/").unwrap();
                &schema["$defs"][name]
            }
            None => node,
        };
        assert_eq!(node["additionalProperties"], false, "{node}");
        node["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }
    use basalt_formats::cloud_config::file::*;
    let s = schema();
    let p = &s["properties"];
    assert_eq!(schema_keys(&s, &s), struct_keys::<CloudConfigFile>());
    assert_eq!(
        schema_keys(&p["users"]["items"], &s),
        struct_keys::<UserFile>()
    );
    assert_eq!(
        schema_keys(&p["write_files"]["items"], &s),
        struct_keys::<WriteFileFile>()
    );
    assert_eq!(schema_keys(&p["ntp"], &s), struct_keys::<NtpFile>());
    let b = &p["basalt"];
    assert_eq!(schema_keys(b, &s), struct_keys::<BasaltFile>());
    let bp = &b["properties"];
    assert_eq!(schema_keys(&bp["mesh"], &s), struct_keys::<MeshFile>());
    assert_eq!(schema_keys(&bp["update"], &s), struct_keys::<UpdateFile>());
    assert_eq!(
        schema_keys(&bp["models"]["items"], &s),
        struct_keys::<ModelFile>()
    );
    assert_eq!(
        schema_keys(&bp["inference"], &s),
        struct_keys::<InferenceFile>()
    );
    assert_eq!(schema_keys(&bp["health"], &s), struct_keys::<HealthFile>());
    assert_eq!(
        schema_keys(&bp["health"]["properties"]["checks"]["items"], &s),
        struct_keys::<HealthCheckFile>()
    );
    assert_eq!(
        schema_keys(&bp["allowed_clients"]["items"], &s),
        struct_keys::<AllowedClientFile>()
    );
}
