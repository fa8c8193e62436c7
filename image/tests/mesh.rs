//! `basalt mesh token` and `basalt mesh inspect`, run as a user would.

use std::io::Write;
use std::process::{Command, Stdio};

fn basalt(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn token_then_inspect_round_trip() {
    let (code, out, err) = basalt(
        &[
            "mesh",
            "token",
            "--network",
            "edge-lab",
            "--bootstrap",
            "seed.example.com:51820",
            "--bootstrap",
            "[2001:db8::1]:4000",
            "--ipv4-range",
            "172.20.0.0/16",
            "--ipv6-prefix",
            "fd00:aa:bb::/48",
            "--port",
            "51900",
            "--json",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let made = json(&out);
    let token = made["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("basalt-mesh-v1:"), "{token}");
    assert_eq!(
        made["cloud_config"],
        format!("basalt:\n  version: 1\n  mesh:\n    token: {token}\n")
    );

    let (code, out, err) = basalt(&["mesh", "inspect", &token, "--json"], None);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(&token["basalt-mesh-v1:".len()..]), "{out}");
    let seen = json(&out);
    assert_eq!(seen["network"], "edge-lab");
    assert_eq!(seen["version"], 1);
    assert_eq!(seen["ipv4_range"], "172.20.0.0/16");
    assert_eq!(seen["ipv6_prefix"], "fd00:aa:bb::/48");
    assert_eq!(seen["ipv6_prefix_derived"], false);
    assert_eq!(seen["port"], 51900);
    assert_eq!(
        seen["bootstrap"],
        serde_json::json!(["seed.example.com:51820", "[2001:db8::1]:4000"])
    );
    assert_eq!(seen["network_id"], made["network_id"]);
    assert_eq!(seen["network_id"].as_str().unwrap().len(), 32);
    assert!(seen.get("secret").is_none());
}

#[test]
fn text_output_and_defaults() {
    let (code, out, err) = basalt(&["mesh", "token", "--network", "lab"], None);
    assert_eq!(code, 0, "{err}");
    let token = out.lines().next().unwrap();
    assert!(token.starts_with("basalt-mesh-v1:"), "{out}");
    assert!(
        out.contains(&format!(
            "basalt:\n  version: 1\n  mesh:\n    token: {token}\n"
        )),
        "{out}"
    );
    assert!(err.contains("It is a secret"), "{err}");

    // From standard input, with the newline a pasted token carries.
    let (code, out, err) = basalt(&["mesh", "inspect", "-"], Some(&format!("{token}\n")));
    assert_eq!(code, 0, "{err}");
    for want in [
        "network:     lab",
        "ipv4 range:  10.77.0.0/16",
        "port:        51820",
        "(derived)",
        "secret:      (not shown)",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }

    // Two tokens for one name have different secrets.
    let (_, again, _) = basalt(&["mesh", "token", "--network", "lab"], None);
    assert_ne!(again.lines().next().unwrap(), token);
}

#[test]
fn corrupted_token_is_rejected_without_echoing_it() {
    let (_, out, _) = basalt(&["mesh", "token", "--network", "lab", "--json"], None);
    let token = json(&out)["token"].as_str().unwrap().to_string();
    let mut bytes = token.clone().into_bytes();
    let i = "basalt-mesh-v1:".len() + 8;
    bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(bytes).unwrap();
    let cut = &token[..token.len() - 4];
    for bad in [typo.as_str(), cut] {
        let (code, out, err) = basalt(&["mesh", "inspect", bad], None);
        assert_eq!(code, 1, "{err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains("token checksum mismatch: the token was changed or cut short"),
            "{err}"
        );
        assert!(!err.contains(&bad["basalt-mesh-v1:".len()..]), "{err}");
    }
    let (code, _, err) = basalt(&["mesh", "inspect", "basalt-mesh-v7:AAAA"], None);
    assert_eq!(code, 1);
    assert!(err.contains("version 7 is not supported"), "{err}");
}

#[test]
fn bad_options_are_refused_by_the_parser() {
    for (args, want) in [
        (vec!["--network", "Lab"], "invalid network name \"Lab\""),
        (
            vec!["--network", "lab", "--ipv4-range", "8.8.0.0/16"],
            "private range",
        ),
        (
            vec!["--network", "lab", "--ipv4-range", "10.0.0.0/28"],
            "between /8 and /24",
        ),
        (
            vec!["--network", "lab", "--ipv6-prefix", "fd00::/64"],
            "always a /48",
        ),
        (
            vec!["--network", "lab", "--bootstrap", "seed.example.com"],
            "host:port",
        ),
        (vec!["--network", "lab", "--port", "0"], "--port"),
    ] {
        let mut all = vec!["mesh", "token"];
        all.extend(args);
        let (code, _, err) = basalt(&all, None);
        assert_eq!(code, 2, "{all:?}: {err}");
        assert!(err.contains(want), "{all:?}: {err}");
    }
}

#[test]
fn mesh_help_has_examples() {
    for sub in [
        &["mesh", "--help"][..],
        &["mesh", "token", "--help"],
        &["mesh", "inspect", "--help"],
    ] {
        let (code, out, _) = basalt(sub, None);
        assert_eq!(code, 0);
        assert!(out.contains("Examples:"), "basalt {sub:?}:\n{out}");
    }
}
