//! Accepted and rejected documents, one rule at a time.

use super::file::CloudConfigFile;
use super::*;

const ED: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF6NQRJKMBKxUaJ/OuxPsA9euyg3IDST5vpgl1LYoGp7 ops@laptop";
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBM3yuMk3/gTkhaJ8DCmfjdq1XpUHij8SD5aWqh86uSvuD42TCd461OSqC97TzF1tT5+ADECMVN2eNkmiqWhsYOU= admin@desk";
const HASH: &str = "$6$basaltsalt$KWBFlRXgyJ9yS5SNzYGcMdQjGehSeTHatiRUkVW.a6TwR8XKn9sA7g7IBEnILlVhiYphbBf6mEUYcOdZHeQn51";
const K1: &str = "4321ce8d3d13cc4814865c22d45614e714d93d567cd357aeaab3e3c9a4e031c1";
const K2: &str = "2e11260b2cf24c8d592edd7fe52a3223976c30af98d6d61084557d38a3cd6bfe";
const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn doc(body: &str) -> String {
    format!("#cloud-config\n{body}")
}

fn ok(body: &str) -> CloudConfig {
    CloudConfig::parse("user-data", &doc(body))
        .unwrap_or_else(|e| panic!("should be accepted: {e}\n{body}"))
}

fn err(body: &str) -> CloudConfigError {
    match CloudConfig::parse("user-data", &doc(body)) {
        Ok(c) => panic!("should be refused:\n{body}\ngot {c:?}"),
        Err(e) => e,
    }
}

/// The error's text, checked to be one line that starts with the source.
fn msg(body: &str) -> String {
    let e = err(body).to_string();
    assert!(!e.contains('\n'), "not one line: {e}");
    assert!(e.starts_with("user-data:"), "no source: {e}");
    e
}

fn assert_msg(body: &str, field: &str, part: &str) {
    let e = err(body);
    assert_eq!(e.field().as_deref(), Some(field), "{e}");
    assert!(e.to_string().contains(part), "{e:?} lacks {part:?}");
    assert!(!e.to_string().contains('\n'), "not one line: {e}");
}

#[test]
fn header_is_required() {
    let e = CloudConfig::parse("user-data", "#!/bin/sh\necho hi\n").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("user-data: the first line must be `#cloud-config`, found \"#!/bin/sh\""),
        "{e}"
    );
    assert_eq!(e.line(), Some(1));
    assert!(CloudConfig::parse("x", "").is_err());
    assert!(CloudConfig::parse("x", "hostname: a\n").is_err());
    // A byte-order mark, CRLF and trailing blanks are fine.
    let c = CloudConfig::parse("x", "\u{feff}#cloud-config \r\nhostname: a\r\n").unwrap();
    assert_eq!(c.hostname.unwrap().as_str(), "a");
    assert_eq!(
        CloudConfig::parse("x", "#cloud-config\n").unwrap(),
        CloudConfig::default()
    );
}

#[test]
fn unknown_keys_and_wrong_types_have_positions() {
    let e = err("hostname: a\nhostnme: b\n");
    assert_eq!((e.line(), e.column()), (Some(3), Some(1)));
    assert_eq!(e.field().as_deref(), Some("hostnme"));
    assert!(
        e.to_string()
            .starts_with("user-data:3:1: unknown field `hostnme`"),
        "{e}"
    );
    let e = err("users:\n  - name: a\n    shel: /bin/sh\n");
    assert_eq!(e.field().as_deref(), Some("users[0].shel"));
    assert_eq!(e.line(), Some(4));
    let e = err("basalt:\n  version: 1\n  mesh: {token: t, secret: s}\n");
    assert_eq!(e.field().as_deref(), Some("basalt.mesh.secret"));
    let e = err("users: {name: a}\n");
    assert_eq!(e.field().as_deref(), Some("users"));
    assert!(e.reason().starts_with("invalid type: map"), "{e}");
    let e = err("write_files:\n  - path: /etc/x\n    encoding: rot13\n");
    assert!(e.to_string().contains("unknown variant `rot13`"), "{e}");
    let e = err("- just a list\n");
    assert!(
        e.to_string().contains("expected struct CloudConfigFile"),
        "{e}"
    );
}

#[test]
fn host_names() {
    assert_eq!(
        ok("hostname: edge-7\n").hostname.unwrap().as_str(),
        "edge-7"
    );
    assert_msg("hostname: edge_7\n", "hostname", "not a host name");
    let long = format!("hostname: {}\n", "a".repeat(64));
    assert_msg(&long, "hostname", "at most 63");
    let c = ok("fqdn: edge-7.fleet.example\n");
    assert_eq!(c.fqdn.unwrap().as_str(), "edge-7.fleet.example");
    assert_msg("fqdn: edge-7\n", "fqdn", "has no domain");
    assert_msg("fqdn: edge..x\n", "fqdn", "empty label");
}

#[test]
fn users() {
    let c = ok(&format!(
        "users:\n  - name: ops\n    gecos: Operations\n    groups: adm, sudo ,video\n    passwd: '{HASH}'\n    lock_passwd: false\n    ssh_authorized_keys: ['{ED}']\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    shell: /bin/bash\n  - name: app\n    groups: [video]\n    sudo: false\n"
    ));
    let ops = &c.users[0];
    let groups: Vec<&str> = ops.groups.iter().map(UserName::as_str).collect();
    assert_eq!(groups, ["adm", "sudo", "video"]);
    assert_eq!(ops.sudo, ["ALL=(ALL) NOPASSWD:ALL"]);
    assert!(!ops.lock_passwd);
    assert_eq!(ops.passwd.as_ref().unwrap().as_str(), HASH);
    let app = &c.users[1];
    assert!(app.lock_passwd, "locked unless said otherwise");
    assert!(app.sudo.is_empty());
    let c = ok("users: [{name: a, sudo: ['ALL=(ALL) ALL', 'ALL=(ALL) NOPASSWD:/usr/bin/true']}]\n");
    assert_eq!(c.users[0].sudo.len(), 2);

    assert_msg(
        "users: [{name: Ops}]\n",
        "users[0].name",
        "not a valid Linux user name",
    );
    assert_msg(
        "users: [{name: a}, {name: a}]\n",
        "users[1].name",
        "already defined in users[0]",
    );
    assert_msg(
        "users: [{name: a, passwd: hunter2}]\n",
        "users[0].passwd",
        "plain-text passwords are not accepted",
    );
}

#[test]
fn user_rules() {
    ok("users: [{name: a, passwd: '!'}]\n");
    ok("users: [{name: a, passwd: '*'}]\n");
    assert_msg(
        "users: [{name: a, groups: 'adm,,video'}]\n",
        "users[0].groups",
        "not a valid group name",
    );
    assert_msg(
        "users: [{name: a, groups: [adm, Video]}]\n",
        "users[0].groups[1]",
        "\"Video\"",
    );
    assert_msg(
        "users: [{name: a, sudo: true}]\n",
        "users[0].sudo",
        "true is not a sudoers rule",
    );
    assert_msg(
        "users: [{name: a, sudo: ''}]\n",
        "users[0].sudo",
        "must not be empty",
    );
    assert_msg(
        "users: [{name: a, sudo: [ok, \"x\\ny\"]}]\n",
        "users[0].sudo[1]",
        "one line",
    );
    assert_msg(
        "users: [{name: a, shell: bash}]\n",
        "users[0].shell",
        "absolute path",
    );
    assert_msg(
        "users: [{name: a, gecos: 'a:b'}]\n",
        "users[0].gecos",
        "':'",
    );
    assert_msg(
        "users: [{name: a, ssh_authorized_keys: ['ssh-dss AAAA']}]\n",
        "users[0].ssh_authorized_keys[0]",
        "not a known SSH key type",
    );
    let e = err("users: [{name: a, lock_passwd: yes}]\n");
    assert!(e.to_string().contains("expected a boolean"), "{e}");
    let e = err("users: [{name: a, groups: 7}]\n");
    assert!(
        e.to_string().contains("a string or a list of strings"),
        "{e}"
    );
}

#[test]
fn root_ssh_keys_are_checked_and_deduplicated() {
    let c = ok(&format!(
        "ssh_authorized_keys:\n  - '{ED}'\n  - '{ECDSA}'\n  - '{} other comment'\n",
        ED.rsplit_once(' ').unwrap().0
    ));
    assert_eq!(c.ssh_authorized_keys.len(), 2);
    assert_msg(
        "ssh_authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF6N']\n",
        "ssh_authorized_keys[0]",
        "truncated or malformed",
    );
}

#[test]
fn write_files_decode_contents() {
    let c = ok("write_files:\n  - path: /etc/motd\n    content: hi\n  - path: /var/lib/x\n    encoding: b64\n    content: aGVsbG8K\n  - path: /home/a/x\n    encoding: base64\n    content: |\n      aGVs\n      bG8K\n  - path: /data/x\n    encoding: gzip+base64\n    content: H4sIAAAAAAACAwtILcrNLAnKzy/xyU/PzFPIy+cCAK4Or1kTAAAA\n  - path: /root/x\n    encoding: gz+b64\n    content: H4sIAAAAAAACAwtILcrNLAnKzy/xyU/PzFPIy+cCAK4Or1kTAAAA\n  - path: /etc/empty\n");
    let contents: Vec<&[u8]> = c.write_files.iter().map(|f| f.content.as_slice()).collect();
    assert_eq!(
        contents,
        [
            &b"hi"[..],
            b"hello\n",
            b"hello\n",
            b"PermitRootLogin no\n",
            b"PermitRootLogin no\n",
            b""
        ]
    );
    let f = &c.write_files[0];
    assert_eq!(
        (f.mode, f.owner.to_string(), f.append, f.reapply),
        (0o644, "root:root".into(), false, false)
    );
}

#[test]
fn write_files_reject_bad_contents() {
    let e = msg("write_files:\n  - path: /etc/a\n  - path: /etc/b\n  - path: /etc/c\n    encoding: b64\n    content: aGVsbG8gd29ybGQ*ZZZZ\n");
    assert!(
        e.starts_with("user-data: write_files[2].content: invalid base64 at byte 15: '*'"),
        "{e}"
    );
    // Offsets count the text as written, line breaks included.
    let e = msg("write_files: [{path: /etc/a, encoding: b64, content: \"aGVs\\nbG8K\\n!!\"}]\n");
    assert!(e.contains("at byte 10"), "{e}");
    let e = msg("write_files: [{path: /etc/a, encoding: b64, content: aGVsb}]\n");
    assert!(e.contains("invalid base64"), "{e}");
    let e = msg("write_files: [{path: /etc/a, encoding: gzip+base64, content: aGVsbG8K}]\n");
    assert!(
        e.contains("write_files[0].content: invalid gzip data"),
        "{e}"
    );
    let e = msg("write_files: [{path: /etc/a, encoding: gzip+base64, content: ''}]\n");
    assert!(e.contains("invalid gzip data"), "{e}");
}

#[test]
fn gzip_bombs_are_refused() {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; MAX_FILE_BYTES + 1]).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    let e = msg(&format!(
        "write_files: [{{path: /data/big, encoding: gz+b64, content: {b64}}}]\n"
    ));
    assert!(e.contains("more than the 16 MiB"), "{e}");
}

#[test]
fn write_files_places_and_paths() {
    for p in ["/etc/a", "/var/a", "/home/u/a", "/root/a", "/data/a"] {
        ok(&format!("write_files: [{{path: {p}}}]\n"));
    }
    let e = err("write_files: [{path: /usr/bin/evil}]\n");
    assert_eq!(e.field().as_deref(), Some("write_files[0].path"));
    assert!(
        e.to_string().contains("\"/usr/bin/evil\" is on the read-only root file system; files can be written only below /etc/, /var/, /home/, /root/, /data/"),
        "{e}"
    );
    assert_msg(
        "write_files: [{path: etc/a}]\n",
        "write_files[0].path",
        "not an absolute path",
    );
    assert_msg(
        "write_files: [{path: /etc/../usr/a}]\n",
        "write_files[0].path",
        "'..'",
    );
    assert_msg(
        "write_files: [{path: /etc/a}, {path: /etc/a, append: true}]\n",
        "write_files[1].path",
        "also written by write_files[0]",
    );
}

#[test]
fn write_files_modes_owners_flags() {
    let c = ok("write_files:\n  - {path: /etc/a, permissions: '0600', owner: 'ops:adm', append: true}\n  - {path: /etc/b, permissions: 04755, reapply: true}\n  - {path: /etc/c, permissions: '0o750'}\n");
    let w = &c.write_files;
    assert_eq!(
        (w[0].mode, w[0].owner.to_string().as_str(), w[0].append),
        (0o600, "ops:adm", true)
    );
    assert_eq!((w[1].mode, w[1].reapply), (0o4755, true));
    assert_eq!(w[2].mode, 0o750);
    assert_msg(
        "write_files: [{path: /etc/a, permissions: '0999'}]\n",
        "write_files[0].permissions",
        "not an octal mode",
    );
    assert_msg(
        "write_files: [{path: /etc/a, permissions: '644'}]\n",
        "write_files[0].permissions",
        "leading 0",
    );
    assert_msg(
        "write_files: [{path: /etc/a, permissions: '017777'}]\n",
        "write_files[0].permissions",
        "larger than 07777",
    );
    assert_msg(
        "write_files: [{path: /etc/a, owner: root}]\n",
        "write_files[0].owner",
        "not user:group",
    );
    assert_msg(
        "write_files: [{path: /etc/a, owner: 'root:Wheel'}]\n",
        "write_files[0].owner",
        "group",
    );
    assert_msg(
        "write_files: [{path: /etc/a, append: true, reapply: true}]\n",
        "write_files[0].reapply",
        "on every boot",
    );
}

#[test]
fn commands() {
    let c = ok("bootcmd: ['echo early > /dev/kmsg']\nruncmd:\n  - [systemctl, restart, ssh]\n  - touch /data/done\n");
    assert_eq!(
        c.bootcmd[0].argv(),
        ["/bin/sh", "-c", "echo early > /dev/kmsg"]
    );
    assert_eq!(
        c.runcmd[0],
        Command::Argv(vec!["systemctl".into(), "restart".into(), "ssh".into()])
    );
    assert_eq!(c.runcmd[1], Command::Shell("touch /data/done".into()));
    assert_msg("runcmd: ['  ']\n", "runcmd[0]", "empty command");
    assert_msg("bootcmd: [x, []]\n", "bootcmd[1]", "needs a program");
    assert_msg("runcmd: [['', x]]\n", "runcmd[0]", "needs a program");
    let e = err("runcmd: [{a: b}]\n");
    assert!(
        e.to_string().contains("a string or a list of strings"),
        "{e}"
    );
}

#[test]
fn timezone_and_ntp() {
    let c = ok("timezone: America/Argentina/Buenos_Aires\nntp: {servers: [10.0.0.1, 'fd00::1', ntp.example.com], pools: [pool.ntp.org]}\n");
    assert_eq!(
        c.timezone.unwrap().as_str(),
        "America/Argentina/Buenos_Aires"
    );
    let ntp = c.ntp.unwrap();
    assert!(ntp.enabled);
    assert_eq!(ntp.servers.len(), 3);
    assert!(!ok("ntp: {enabled: false}\n").ntp.unwrap().enabled);
    assert_msg(
        "timezone: Europe/../Berlin\n",
        "timezone",
        "not an IANA time zone",
    );
    assert_msg(
        "ntp: {servers: [ok.example, 'bad host']}\n",
        "ntp.servers[1]",
        "not a host name",
    );
    assert_msg("ntp: {pools: ['-x']}\n", "ntp.pools[0]", "starts or ends");
}

fn basalt(body: &str) -> String {
    format!("basalt:\n  version: 1\n{body}")
}

#[test]
fn basalt_version() {
    let c = ok("basalt: {version: 1}\n");
    assert_eq!(
        c.basalt.unwrap(),
        Basalt {
            version: 1,
            ..Basalt::default()
        }
    );
    let e = err("basalt: {version: 2, alias: x}\n");
    assert_eq!(
        e.to_string(),
        "user-data: basalt.version: version 2 is not supported; this basalt reads version 1"
    );
    assert_eq!(e.field().as_deref(), Some("basalt.version"));
    assert_eq!(
        e.reason(),
        "version 2 is not supported; this basalt reads version 1"
    );
    assert_msg("basalt: {alias: x}\n", "basalt.version", "missing");
}

#[test]
fn basalt_alias_and_mesh() {
    let c = ok(&basalt(
        "  alias: edge-7\n  mesh: {token: 'basalt-mesh-v1:AQAHZmxlZXQtYd99nAzlMQv9sqax9tOdyaK-gjRkNaMJqDwcmFwwKm8TAQTAAAIKymw6n114'}\n",
    ));
    let b = c.basalt.unwrap();
    assert_eq!(b.alias.unwrap().as_str(), "edge-7");
    assert_eq!(
        b.mesh.unwrap().token.as_str(),
        "basalt-mesh-v1:AQAHZmxlZXQtYd99nAzlMQv9sqax9tOdyaK-gjRkNaMJqDwcmFwwKm8TAQTAAAIKymw6n114"
    );
    assert_msg(
        &basalt("  alias: Edge\n"),
        "basalt.alias",
        "not a valid name",
    );
    assert_msg(
        &basalt("  mesh: {token: ''}\n"),
        "basalt.mesh.token",
        "empty",
    );
    assert_msg(
        &basalt("  mesh: {token: 'a b'}\n"),
        "basalt.mesh.token",
        "starts with \"basalt-mesh-v1:\"",
    );
}

#[test]
fn basalt_update() {
    let b64 = base64::engine::general_purpose::STANDARD.encode(hex::decode(K2).unwrap());
    let c = ok(&basalt(&format!(
        "  update:\n    channel: https://updates.example/stable\n    trusted_keys: [{K1}, '{b64}']\n    threshold: 2\n    poll_interval: 600\n    share: false\n"
    )));
    let u = c.basalt.unwrap().update.unwrap();
    assert_eq!(u.trusted_keys[1].to_string(), K2);
    assert_eq!((u.threshold, u.poll_interval), (2, 600));
    assert_eq!(u.share, Some(false));
    assert!(!u.shares(true));
    let d = ok(&basalt(&format!(
        "  update: {{channel: 'http://10.0.0.2/u', trusted_keys: [{K1}]}}\n"
    )));
    let u = d.basalt.unwrap().update.unwrap();
    assert_eq!((u.threshold, u.poll_interval), (1, DEFAULT_POLL_INTERVAL_S));
    // Unset: shared exactly when the node has a mesh.
    assert_eq!(u.share, None);
    assert!(u.shares(true) && !u.shares(false));

    let upd = |rest: &str| {
        basalt(&format!(
            "  update: {{channel: 'https://u.example', {rest}}}\n"
        ))
    };
    assert_msg(
        &upd(&format!("trusted_keys: [{K1}, {K2}], threshold: 3")),
        "basalt.update.threshold",
        "3 is not between 1 and the number of trusted keys (2)",
    );
    assert_msg(
        &upd(&format!("trusted_keys: [{K1}], threshold: 0")),
        "basalt.update.threshold",
        "not between 1",
    );
    assert_msg(
        &upd("trusted_keys: []"),
        "basalt.update.trusted_keys",
        "at least one key",
    );
    assert_msg(
        &upd(&format!("trusted_keys: [{K1}, {K1}]")),
        "basalt.update.trusted_keys[1]",
        "listed twice",
    );
    assert_msg(
        &upd("trusted_keys: [abcd]"),
        "basalt.update.trusted_keys[0]",
        "not an Ed25519 public key",
    );
    assert_msg(
        &upd(&format!("trusted_keys: [{K1}], poll_interval: 0")),
        "basalt.update.poll_interval",
        "at least 1",
    );
    assert_msg(
        &basalt(&format!(
            "  update: {{channel: 'file:///x', trusted_keys: [{K1}]}}\n"
        )),
        "basalt.update.channel",
        "not an http:// or https:// URL",
    );
    let e = err(&upd(&format!("trusted_keys: [{K1}], share: sometimes")));
    assert!(e.to_string().contains("share"), "{e}");
    let e = err(&basalt("  update: {channel: 'https://u.example'}\n"));
    assert!(
        e.to_string().contains("missing field `trusted_keys`"),
        "{e}"
    );
}

#[test]
fn basalt_models() {
    let c = ok(&basalt(&format!(
        "  models:\n    - {{name: resnet50, url: 'https://m.example/resnet50.onnx', sha256: {SHA}, batch_max: 8}}\n    - {{name: tiny.v2, url: 'https://m.example/t.onnx', sha256: {}}}\n",
        SHA.to_uppercase()
    )));
    let models = c.basalt.unwrap().models.unwrap();
    assert_eq!(models[0].batch_max, Some(8));
    assert_eq!(hex::encode(models[1].sha256), SHA);
    let m = |rest: &str| basalt(&format!("  models: [{{{rest}}}]\n"));
    assert_msg(
        &m(&format!(
            "name: ResNet, url: 'https://x.example/m', sha256: {SHA}"
        )),
        "basalt.models[0].name",
        "not a model name",
    );
    assert_msg(
        &m("name: r, url: 'https://x.example/m', sha256: abc"),
        "basalt.models[0].sha256",
        "64 hex digits",
    );
    assert_msg(
        &m(&format!("name: r, url: 's3://b/m', sha256: {SHA}")),
        "basalt.models[0].url",
        "not an http",
    );
    assert_msg(
        &m(&format!(
            "name: r, url: 'https://x.example/m', sha256: {SHA}, batch_max: 0"
        )),
        "basalt.models[0].batch_max",
        "at least 1",
    );
    assert_msg(
        &basalt(&format!("  models:\n    - {{name: r, url: 'https://a.example/m', sha256: {SHA}}}\n    - {{name: r, url: 'https://b.example/m', sha256: {SHA}}}\n")),
        "basalt.models[1].name",
        "already listed in basalt.models[0]",
    );
}

#[test]
fn basalt_inference_health_clients() {
    let c = ok(&basalt(&format!(
        "  inference: {{max_request_bytes: 1048576, queue_capacity: 32, timeout_ms: 5000, threads: 4}}\n  health:\n    checks:\n      - {{name: gpu, command: [/usr/bin/true], timeout_s: 5}}\n      - {{name: disk, command: [test, -w, /data]}}\n  allowed_clients:\n    - {{key: {K1}, alias: gateway}}\n    - {{key: {K2}}}\n"
    )));
    let b = c.basalt.unwrap();
    assert_eq!(b.inference.unwrap().queue_capacity, Some(32));
    let h = b.health.unwrap();
    assert_eq!(h.checks[1].timeout_s, DEFAULT_HEALTH_TIMEOUT_S);
    assert_eq!(
        b.allowed_clients.unwrap()[0]
            .alias
            .as_ref()
            .unwrap()
            .as_str(),
        "gateway"
    );
    assert_eq!(
        ok(&basalt("  inference: {}\n")).basalt.unwrap().inference,
        Some(Inference::default())
    );

    assert_msg(
        &basalt("  inference: {threads: 0}\n"),
        "basalt.inference.threads",
        "at least 1",
    );
    assert_msg(
        &basalt("  inference: {queue_capacity: 5000000000}\n"),
        "basalt.inference.queue_capacity",
        "too large",
    );
    assert_msg(
        &basalt("  health: {checks: [{name: x, command: []}]}\n"),
        "basalt.health.checks[0].command",
        "needs a program",
    );
    assert_msg(
        &basalt("  health: {checks: [{name: x, command: [a], timeout_s: 9999}]}\n"),
        "basalt.health.checks[0].timeout_s",
        "not between 1 and 600",
    );
    assert_msg(
        &basalt("  health: {checks: [{name: x, command: [a]}, {name: x, command: [b]}]}\n"),
        "basalt.health.checks[1].name",
        "already defined",
    );
    assert_msg(
        &basalt("  health: {checks: [{name: 'X Y', command: [a]}]}\n"),
        "basalt.health.checks[0].name",
        "not a valid name",
    );
    assert_msg(
        &basalt(&format!(
            "  allowed_clients: [{{key: {K1}}}, {{key: {K1}}}]\n"
        )),
        "basalt.allowed_clients[1].key",
        "already listed",
    );
    assert_msg(
        &basalt(&format!(
            "  allowed_clients: [{{key: {K1}, alias: a}}, {{key: {K2}, alias: a}}]\n"
        )),
        "basalt.allowed_clients[1].alias",
        "already used",
    );
    assert_msg(
        &basalt("  allowed_clients: [{key: nope}]\n"),
        "basalt.allowed_clients[0].key",
        "not an Ed25519 public key",
    );
    assert_msg(
        &basalt("  allowed_clients: [{key: 'n*pe'}]\n"),
        "basalt.allowed_clients[0].key",
        "64 hex digits or the base64",
    );
}

#[test]
fn api_tokens_are_names_and_hashes() {
    let h = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let c = ok(&basalt(&format!(
        "  api_tokens:\n    - {{name: dashboard, sha256: {h}}}\n    - {{name: ci, sha256: {}}}\n",
        h.to_uppercase().replace('9', "a")
    )));
    let t = c.basalt.unwrap().api_tokens.unwrap();
    assert_eq!(t[0].name.as_str(), "dashboard");
    assert_eq!(hex::encode(t[0].sha256), h);
    assert_eq!(t.len(), 2);
    assert_msg(
        &basalt("  api_tokens: [{name: a, sha256: bst_plaintext}]\n"),
        "basalt.api_tokens[0].sha256",
        "is not a SHA-256: write 64 hex digits",
    );
    assert_msg(
        &basalt(&format!(
            "  api_tokens: [{{name: a, sha256: {h}}}, {{name: b, sha256: {h}}}]\n"
        )),
        "basalt.api_tokens[1].sha256",
        "already listed",
    );
    assert_msg(
        &basalt(&format!(
            "  api_tokens: [{{name: a, sha256: {h}}}, {{name: a, sha256: {}}}]\n",
            "0".repeat(64)
        )),
        "basalt.api_tokens[1].name",
        "already used",
    );
    assert_msg(
        &basalt(&format!(
            "  api_tokens: [{{name: 'No Way', sha256: {h}}}]\n"
        )),
        "basalt.api_tokens[0].name",
        "",
    );
}

#[test]
fn install_names_a_device_or_auto() {
    let c = ok(&basalt("  install: {device: /dev/vda}\n"));
    assert_eq!(
        c.basalt.unwrap().install.unwrap(),
        Install {
            device: InstallTarget::Device("/dev/vda".into()),
            reboot: true,
        }
    );
    let c = ok(&basalt("  install: {device: auto, reboot: false}\n"));
    let i = c.basalt.unwrap().install.unwrap();
    assert_eq!(i.device, InstallTarget::Auto);
    assert!(!i.reboot);
    for bad in ["vda", "/dev/", "/dev/../etc/passwd", "'/dev/sd a'", "Auto"] {
        assert_msg(
            &basalt(&format!("  install: {{device: {bad}}}\n")),
            "basalt.install.device",
            "neither `auto` nor a device path",
        );
    }
    let e = err(&basalt("  install: {device: auto, wipe: true}\n"));
    assert!(e.to_string().contains("wipe"), "{e}");
}

#[test]
fn key_lists_match_the_raw_types() {
    let top = serde_json::to_value(CloudConfigFile::default()).unwrap();
    let keys: Vec<&str> = top
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = TOP_LEVEL_KEYS.to_vec();
    expected.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, expected);
    let basalt = serde_json::to_value(file::BasaltFile::default()).unwrap();
    let mut keys: Vec<&str> = basalt
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    let mut expected = BASALT_KEYS.to_vec();
    expected.sort();
    assert_eq!(keys, expected);
}

#[test]
fn serialised_form_leaves_unset_keys_out() {
    let c = ok("hostname: a\nwrite_files: [{path: /etc/a, content: hi, permissions: '0600'}]\n");
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(
        json,
        r#"{"hostname":"a","write_files":[{"path":"/etc/a","content":"aGk=","mode":"0600","owner":"root:root","append":false,"reapply":false}]}"#
    );
    assert_eq!(c.keys_set(), ["hostname", "write_files"]);
}

#[test]
fn trusted_keys_accept_the_form_basalt_keygen_prints() {
    let k: super::value::Ed25519PublicKey =
        "basalt-ed25519:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"
            .parse()
            .unwrap();
    assert_eq!(k.0, [1u8; 32]);
}
