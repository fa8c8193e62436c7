//! First boot from cloud-config: a NoCloud CIDATA volume made by the test.

use basalt_formats::BoardId;
use qemu_tests::*;
use std::time::Duration;

/// A fresh SSH key pair for the test; returns the private key's path and the public key.
fn ssh_key(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let key = dir.join("id_ed25519");
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ops@laptop", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (openssh-client) runs");
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

/// Logs in as `ops` over the forwarded port and runs `hostname`, trying for
/// up to a minute while sshd starts.
fn ssh_hostname(key: &std::path::Path, port: u16) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let out = std::process::Command::new("ssh")
            .args(["-p", &port.to_string(), "-i"])
            .arg(key)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
                "ops@127.0.0.1",
                "hostname",
            ])
            .output()
            .expect("ssh runs");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ssh ops@127.0.0.1:{port} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

fn user_data(key: &str) -> String {
    format!(
        "#cloud-config
hostname: edge-7
users:
  - name: ops
    groups: [adm]
    ssh_authorized_keys: [\"{key}\"]
write_files:
  - path: /etc/basalt-test/hello.txt
    content: aGVsbG8gZnJvbSBjbG91ZC1jb25maWcK
    encoding: b64
    permissions: \"0640\"
runcmd:
  - touch /var/lib/basalt-test-runcmd
"
    )
}

#[test]
fn x86_64_provisions_from_cidata_and_keeps_the_last_good_config() {
    if qemu_opted_out() {
        eprintln!("BASALT_SKIP_QEMU=1: not booting the provisioning test");
        return;
    }
    let built = debug_image(BoardId::X86_64Uefi);
    let mut cfg = vm_config(BoardId::X86_64Uefi, &built.image, "x86_64-provision");
    let good = cfg.state_dir.join("cidata-good.img");
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    let (private, public) = ssh_key(&cfg.state_dir);
    let port = free_port();
    cfg.forwards = vec![(port, 22)];
    cidata_image(
        &good,
        &user_data(&public),
        "instance-id: iid-basalt-1\nlocal-hostname: ignored-by-user-data\n",
    );
    cfg.extra_args = extra_disk("cidata", &good);

    let (mut vm, line) = boot_to_ready(&cfg);
    assert!(line.contains("hostname=edge-7"), "{line}");
    let t = Duration::from_secs(60);
    vm.wait_for("login:", t)
        .or_else(|_| vm.wait_for("root@edge-7", t))
        .unwrap();
    let id = vm.run_ok("id ops", t).unwrap();
    assert!(id.contains("(ops)") && id.contains("(adm)"), "{id}");
    let keys = vm
        .run_ok(
            "cat /home/ops/.ssh/authorized_keys; stat -c '%a %U' /home/ops/.ssh/authorized_keys",
            t,
        )
        .unwrap();
    assert!(keys.contains(&public) && keys.contains("600 ops"), "{keys}");
    // Reachable over SSH with the key cloud-config gave the user.
    assert_eq!(ssh_hostname(&private, port), "edge-7");
    let file = vm
        .run_ok(
            "cat /etc/basalt-test/hello.txt; stat -c %a /etc/basalt-test/hello.txt",
            t,
        )
        .unwrap();
    assert!(
        file.contains("hello from cloud-config") && file.contains("640"),
        "{file}"
    );
    vm.run_ok("test -f /var/lib/basalt-test-runcmd", t).unwrap();
    let status = vm.run_ok("basalt-agent status --json", t).unwrap();
    let st: serde_json::Value = serde_json::from_str(&status[status.find('{').unwrap()..]).unwrap();
    assert_eq!(st["provision"]["instance_id"], "iid-basalt-1", "{st}");
    assert_eq!(st["provision"]["once_done"], true, "{st}");
    assert_eq!(
        st["provision"]["errors"].as_array().unwrap().len(),
        0,
        "{st}"
    );
    let node_id = st["node_id"].as_str().expect("node id").to_string();
    assert_eq!(node_id.len(), 43, "{st}");
    let mode = vm
        .run_ok("stat -c %a /data/basalt/identity/node.key", t)
        .unwrap();
    assert_eq!(mode.trim(), "600");
    vm.run_ok("sync", t).unwrap();
    vm.kill();

    // The same device with a broken user-data: it boots, says why, keeps edge-7.
    let bad = cfg.state_dir.join("cidata-bad.img");
    cidata_image(
        &bad,
        "#cloud-config\nhostname: broken\nuserz: []\n",
        "instance-id: iid-basalt-1\n",
    );
    cfg.extra_args = extra_disk("cidata", &bad);
    cfg.keep_state = true;
    let (mut vm, line) = boot_to_ready(&cfg);
    assert!(line.contains("hostname=edge-7"), "{line}");
    vm.wait_for("login:", t)
        .or_else(|_| vm.wait_for("root@edge-7", t))
        .unwrap();
    let status = vm.run_ok("basalt-agent status", t).unwrap();
    assert!(status.contains("last good kept"), "{status}");
    assert!(
        status.contains("config error: CIDATA:user-data:3:1: unknown field `userz`"),
        "{status}"
    );
    let journal = vm
        .run_ok(
            "journalctl -b -u basalt-agent --no-pager | grep -c 'cloud-config rejected'",
            t,
        )
        .unwrap();
    assert!(journal.trim() != "0", "{journal}");
    // The journal entries carry fields: the rejected source, the agent's version.
    let fields = vm
        .run_ok(
            "journalctl -b -u basalt-agent -o verbose --no-pager | grep -E '^ *(CLOUD_CONFIG_SOURCE|BASALT_VERSION)=' | sort -u",
            t,
        )
        .unwrap();
    assert!(fields.contains("CLOUD_CONFIG_SOURCE=CIDATA"), "{fields}");
    assert!(fields.contains("BASALT_VERSION="), "{fields}");
    vm.run_ok("id ops", t).unwrap();
    // Still reachable over SSH with the last good config.
    assert_eq!(ssh_hostname(&private, port), "edge-7");
    // The identity is the same after the reboot.
    let status = vm.run_ok("basalt-agent status --json", t).unwrap();
    let st: serde_json::Value = serde_json::from_str(&status[status.find('{').unwrap()..]).unwrap();
    assert_eq!(st["node_id"].as_str(), Some(node_id.as_str()), "{st}");
}
