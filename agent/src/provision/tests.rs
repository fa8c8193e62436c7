use super::*;
use basalt_formats::cloud_config::{Command, Ntp, SshPublicKey, User, WriteFile};

/// Records what provisioning asked for, in order; fails where told to.
#[derive(Default)]
struct Fake {
    calls: Vec<String>,
    fail_run: bool,
}

impl Host for Fake {
    fn set_hostname(&mut self, name: &str) -> host::HostResult {
        self.calls.push(format!("hostname {name}"));
        Ok(())
    }
    fn set_timezone(&mut self, zone: &str) -> host::HostResult {
        self.calls.push(format!("timezone {zone}"));
        Ok(())
    }
    fn set_ntp(&mut self, ntp: &Ntp) -> host::HostResult {
        self.calls.push(format!("ntp {}", ntp.servers.join(",")));
        Ok(())
    }
    fn write_file(&mut self, f: &WriteFile) -> host::HostResult {
        self.calls
            .push(format!("file {} {:o}", f.path.as_str(), f.mode));
        Ok(())
    }
    fn ensure_user(&mut self, u: &User) -> host::HostResult {
        self.calls.push(format!("user {}", u.name.as_str()));
        Ok(())
    }
    fn authorize_keys(&mut self, user: &str, keys: &[SshPublicKey]) -> host::HostResult {
        self.calls.push(format!("keys {user} {}", keys.len()));
        Ok(())
    }
    fn run(&mut self, c: &Command) -> host::HostResult {
        self.calls.push(format!("run {}", c.argv().join(" ")));
        if self.fail_run {
            Err("exited with 1".into())
        } else {
            Ok(())
        }
    }
}

fn src(kind: sources::Kind, name: &str, text: &str) -> SourceText {
    SourceText {
        kind,
        name: name.into(),
        text: text.into(),
    }
}

const GOOD: &str = "#cloud-config
hostname: edge-7
timezone: Europe/Paris
users:
  - name: ops
    ssh_authorized_keys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq3x8Qy0nZ3e0Yj3m7VvJcqZ9v0L1yF2Qm3b4c5d6e7 ops@laptop\"]
write_files:
  - path: /etc/motd
    content: hello
  - path: /etc/basalt/every-boot
    content: x
    reapply: true
bootcmd: [\"echo early\"]
runcmd: [\"echo late\"]
";

const META: &str = "instance-id: i-123\nlocal-hostname: from-meta\n";

#[test]
fn first_boot_runs_everything_in_order_then_only_every_boot_parts() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Fake::default();
    let found = vec![
        src(sources::Kind::MetaData, "CIDATA:meta-data", META),
        src(sources::Kind::NoCloudUserData, "CIDATA:user-data", GOOD),
    ];
    let st = provision(found.clone(), vec![], dir.path(), &mut h);
    assert!(st.errors.is_empty(), "{:?}", st.errors);
    assert!(st.config_current && st.once_done);
    assert_eq!(st.instance_id.as_deref(), Some("i-123"));
    assert_eq!(
        h.calls,
        [
            "run /bin/sh -c echo early",
            "hostname edge-7",
            "timezone Europe/Paris",
            "file /etc/basalt/every-boot 644",
            "user ops",
            "file /etc/motd 644",
            "run /bin/sh -c echo late",
        ]
    );

    // Second boot, same instance: only what reapplies.
    let mut h = Fake::default();
    let st = provision(found, vec![], dir.path(), &mut h);
    assert!(st.once_done);
    assert_eq!(
        h.calls,
        [
            "run /bin/sh -c echo early",
            "hostname edge-7",
            "timezone Europe/Paris",
            "file /etc/basalt/every-boot 644"
        ]
    );
}

#[test]
fn a_failed_runcmd_leaves_the_instance_to_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Fake {
        fail_run: true,
        ..Fake::default()
    };
    let found = vec![src(
        sources::Kind::NoCloudUserData,
        "CIDATA:user-data",
        GOOD,
    )];
    let st = provision(found.clone(), vec![], dir.path(), &mut h);
    assert!(!st.once_done);
    assert!(
        st.errors
            .iter()
            .any(|e| e.starts_with("runcmd[0]: exited with 1")),
        "{:?}",
        st.errors
    );
    let mut h = Fake::default();
    let st = provision(found, vec![], dir.path(), &mut h);
    assert!(st.once_done);
    assert!(h.calls.contains(&"user ops".to_string()), "{:?}", h.calls);
}

#[test]
fn a_bad_config_keeps_the_last_good_one_and_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = vec![src(
        sources::Kind::NoCloudUserData,
        "CIDATA:user-data",
        GOOD,
    )];
    provision(good, vec![], dir.path(), &mut Fake::default());

    let bad = "#cloud-config\nhostname: other\nuserz: []\n";
    let mut h = Fake::default();
    let st = provision(
        vec![src(sources::Kind::NoCloudUserData, "CIDATA:user-data", bad)],
        vec![],
        dir.path(),
        &mut h,
    );
    assert!(!st.config_current);
    assert_eq!(st.errors.len(), 1, "{:?}", st.errors);
    assert!(
        st.errors[0].starts_with("CIDATA:user-data:3:1: unknown field `userz`"),
        "{}",
        st.errors[0]
    );
    assert!(
        h.calls.contains(&"hostname edge-7".to_string()),
        "{:?}",
        h.calls
    );
    assert!(!h.calls.iter().any(|c| c.contains("other")));
    let saved = load_status(dir.path()).unwrap();
    assert_eq!(saved.errors, st.errors);
}

#[test]
fn a_bad_config_on_first_boot_applies_what_is_valid_and_boots() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Fake::default();
    let st = provision(
        vec![
            src(
                sources::Kind::ImageDefault,
                "/usr/lib/basalt/cloud-config.yaml",
                "#cloud-config\nhostname: factory\n",
            ),
            src(
                sources::Kind::NoCloudUserData,
                "CIDATA:user-data",
                "#cloud-config\nwrite_files:\n  - path: /usr/bin/x\n    content: y\n",
            ),
        ],
        vec!["CIDATA volume /dev/vdb: mounting as iso9660: EINVAL".into()],
        dir.path(),
        &mut h,
    );
    assert!(!st.config_current);
    assert_eq!(st.errors.len(), 2, "{:?}", st.errors);
    assert!(
        st.errors[1].contains("write_files[0].path"),
        "{:?}",
        st.errors
    );
    assert_eq!(h.calls, ["hostname factory"]);
}

fn url_paths(dir: &Path, cmdline: &str) -> sources::Paths {
    std::fs::write(dir.join("cmdline"), cmdline).unwrap();
    std::fs::write(
        dir.join("image-default.yaml"),
        "#cloud-config\nhostname: factory\ntimezone: UTC\n",
    )
    .unwrap();
    sources::Paths {
        image_default: dir.join("image-default.yaml"),
        boot_partition: dir.join("no-boot-partition"),
        cidata_devices: vec![],
        cidata_mount: dir.join("cidata"),
        cmdline: dir.join("cmdline"),
        fetch: crate::fetch::tests::quick(),
        url_patience: std::time::Duration::from_secs(3),
    }
}

#[test]
fn a_config_url_on_the_command_line_is_fetched_and_merged_last() {
    use crate::fetch::test_server::{Behaviour, TestServer};
    let server = TestServer::start();
    // The network comes up after a few tries.
    server.route(
        "/edge-7.yaml",
        "#cloud-config\nhostname: from-url\n",
        Behaviour::FailFirst(2),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/edge-7.yaml");
    let paths = url_paths(
        dir.path(),
        &format!("quiet basalt.cloud-config-url={url}\n"),
    );
    let (found, errors) = sources::read_all(&paths);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(found.len(), 2);
    assert_eq!(
        (found[1].kind, found[1].name.as_str()),
        (sources::Kind::Url, url.as_str())
    );
    let mut h = Fake::default();
    let st = provision(found, errors, &dir.path().join("state"), &mut h);
    assert!(st.config_current && st.errors.is_empty(), "{st:?}");
    assert_eq!(h.calls[..2], ["hostname from-url", "timezone UTC"]);
    assert!(st
        .provenance
        .contains(&("hostname".into(), vec![format!("{url} (url)")])));
    assert_eq!(st.sources[1].kind, "url");
}

#[test]
fn an_unreachable_or_bad_config_url_is_one_error_and_the_rest_applies() {
    use crate::fetch::test_server::{Behaviour, TestServer};
    let server = TestServer::start();
    server.route("/gone.yaml", "", Behaviour::Status(404));
    server.route("/bad.yaml", "#cloud-config\nhostnme: x\n", Behaviour::Serve);
    let dir = tempfile::tempdir().unwrap();

    let url = server.url("/gone.yaml");
    let paths = url_paths(dir.path(), &format!("basalt.cloud-config-url={url}"));
    let (found, errors) = sources::read_all(&paths);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0],
        format!("cloud-config URL (basalt.cloud-config-url on the kernel command line): {url}: the server answered HTTP 404 Not Found")
    );
    let mut h = Fake::default();
    let st = provision(found, errors, &dir.path().join("state1"), &mut h);
    assert_eq!(st.errors.len(), 1);
    assert!(!st.config_current);
    assert_eq!(h.calls[..2], ["hostname factory", "timezone UTC"]);

    // Nothing listens: connection refused until the patience runs out.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/x.yaml");
    let paths = url_paths(dir.path(), &format!("basalt.cloud-config-url={url}"));
    let started = std::time::Instant::now();
    let (found, errors) = sources::read_all(&paths);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!((found.len(), errors.len()), (1, 1), "{errors:?}");
    assert!(
        errors[0].contains(&format!("{url}: cannot connect")),
        "{errors:?}"
    );

    // Content that is not a valid cloud-config: the error names the URL and the field.
    let url = server.url("/bad.yaml");
    let paths = url_paths(dir.path(), &format!("basalt.cloud-config-url={url}"));
    let (found, errors) = sources::read_all(&paths);
    assert!(errors.is_empty());
    let mut h = Fake::default();
    let st = provision(found, errors, &dir.path().join("state2"), &mut h);
    assert_eq!(st.errors.len(), 1, "{:?}", st.errors);
    assert!(
        st.errors[0].starts_with(&format!("{url}:2:1: unknown field `hostnme`")),
        "{:?}",
        st.errors
    );
    assert_eq!(h.calls[..2], ["hostname factory", "timezone UTC"]);
}

#[test]
fn an_include_document_is_replaced_by_the_documents_it_names() {
    use crate::fetch::test_server::{Behaviour, TestServer};
    let server = TestServer::start();
    server.route(
        "/site.yaml",
        "#cloud-config\nhostname: from-include\n",
        Behaviour::Serve,
    );
    server.route("/gone.yaml", "", Behaviour::Status(404));
    server.route(
        "/loop.yaml",
        "#include\nhttp://127.0.0.1:1/x\n",
        Behaviour::Serve,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut paths = url_paths(dir.path(), "quiet\n");
    let boot = dir.path().join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    paths.boot_partition = boot.clone();
    let (site, gone, looped) = (
        server.url("/site.yaml"),
        server.url("/gone.yaml"),
        server.url("/loop.yaml"),
    );
    std::fs::write(
        boot.join("user-data"),
        format!("#include\n# what the site gives every device\n{site}\n{gone}\n{looped}\n"),
    )
    .unwrap();
    let (found, errors) = sources::read_all(&paths);
    let including = boot.join("user-data").display().to_string();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(
        errors[0],
        format!("{gone} (#include in {including}): {gone}: the server answered HTTP 404 Not Found")
    );
    assert!(
        errors[1].contains("is itself an #include document"),
        "{errors:?}"
    );
    // The included document takes the boot partition's place: after the
    // image default, so its hostname wins.
    assert_eq!(found.len(), 2);
    assert_eq!(found[1].kind, sources::Kind::BootPartition);
    assert_eq!(found[1].name, format!("{site} (#include in {including})"));
    let mut h = Fake::default();
    let st = provision(found, errors, &dir.path().join("state"), &mut h);
    assert_eq!(h.calls[..2], ["hostname from-include", "timezone UTC"]);
    assert_eq!(st.errors.len(), 2, "{:?}", st.errors);

    // An empty document counts as none.
    std::fs::write(boot.join("user-data"), "\n  \n").unwrap();
    let (found, errors) = sources::read_all(&paths);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(found.len(), 1, "only the image default");

    // A malformed include list is one error naming the line.
    std::fs::write(boot.join("user-data"), "#include\nfile:///etc/passwd\n").unwrap();
    let (found, errors) = sources::read_all(&paths);
    assert_eq!(found.len(), 1);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(&including) && errors[0].contains("#include line 2"),
        "{errors:?}"
    );
}
