//! The `basalt` binary's handling of bad input.

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

#[test]
fn unknown_spec_key_is_an_error_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.yaml");
    std::fs::write(&spec, "spec_version: 1\nname: x\nversion: 1.0.0\ndebian: {suite: bookworm, mirror: 'http://deb.debian.org/debian'}\npackags: [vim]\n").unwrap();
    let (code, _, err) = basalt(&[
        "build",
        spec.to_str().unwrap(),
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("spec.yaml:5:1: unknown field `packags`"),
        "{err}"
    );
}

#[test]
fn missing_spec_file_is_named() {
    let (code, _, err) = basalt(&["build", "/nonexistent/spec.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("reading image spec /nonexistent/spec.yaml"),
        "{err}"
    );
}

#[test]
fn unknown_board_is_refused_by_the_parser() {
    let (code, _, err) = basalt(&["build", "--board", "pdp11"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown board \"pdp11\""), "{err}");
}

#[test]
fn the_pi_5_is_refused_with_the_reason_before_anything_is_downloaded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (code, _, err) = basalt(&["build", "--board", "rpi5", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("board rpi5 cannot be built")
            && err.contains("CONFIG_MMC_SDHCI_BRCMSTB is not set")
            && err.contains("hardware/rpi5.yaml"),
        "{err}"
    );
    assert!(!out.exists(), "the refused build made {}", out.display());
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    for sub in [
        "build",
        "run",
        "flash",
        "keygen",
        "bundle",
        "sign",
        "inspect",
        "channel",
        "completions",
        "man",
    ] {
        let (code, out, _) = basalt(&[sub, "--help"]);
        assert_eq!(code, 0);
        assert!(out.contains("Examples:"), "basalt {sub} --help:\n{out}");
    }
}
