//! The mesh on the host: nodes in network namespaces joined by a bridge,
//! each running `basalt-agent mesh run` over userspace WireGuard
//! (`wireguard-go`).
//!
//! Needs root, `ip`, `ping` and `wireguard-go`; fails (does not skip) when
//! they are missing unless `BASALT_SKIP_NETNS=1`. Every link, namespace and
//! process the test makes is named with a random suffix and removed in
//! `Drop`, even when an assertion fails. Run with `--nocapture` to see the
//! measured times.

use basalt_formats::mesh::{NetworkSecret, NetworkToken};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every pair must ping over both mesh addresses within this.
const REACHABILITY_BOUND: Duration = Duration::from_secs(30);
/// A killed node must be gone from every peer list within this: foca
/// probes each member about once a second and gives a suspect 4.8 s, plus a
/// second for the reconcile tick.
const FAILURE_BOUND: Duration = Duration::from_secs(30);
/// The port in the test tokens (gossip; WireGuard on the next one).
const PORT: u16 = 51820;

/// The labs take most of the two cores; one at a time keeps timings honest.
static SERIAL: Mutex<()> = Mutex::new(());

fn skip() -> bool {
    if std::env::var("BASALT_SKIP_NETNS").as_deref() == Ok("1") {
        eprintln!("mesh_netns: skipped (BASALT_SKIP_NETNS=1)");
        return true;
    }
    for (tool, arg) in [("ip", "-V"), ("wireguard-go", "--version"), ("ping", "-V")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            ok,
            "mesh_netns needs `{tool}` on PATH (set BASALT_SKIP_NETNS=1 to skip this test)"
        );
    }
    false
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "{} failed: {} (network namespaces need root; set BASALT_SKIP_NETNS=1 to skip)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

struct Node {
    ns: String,
    veth_host: String,
    veth_ns: String,
    iface: String,
    dir: PathBuf,
    ip: String,
    child: Option<Child>,
}

/// A bridge and namespaces; everything goes in `Drop`.
struct Lab {
    suffix: String,
    bridge: String,
    subnet: String,
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(count: usize) -> Lab {
        let r: u32 = rand::random();
        let suffix = format!("{:06x}", r & 0xff_ffff);
        let subnet = format!("10.{}.{}", 100 + (r >> 24) % 100, (r >> 16) & 0xff);
        let mut lab = Lab {
            bridge: format!("bb{suffix}"),
            suffix,
            subnet,
            nodes: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        run(&["ip", "link", "add", &lab.bridge, "type", "bridge"]);
        run(&["ip", "link", "set", &lab.bridge, "up"]);
        for i in 1..=count {
            lab.add_node(i);
        }
        lab
    }

    fn add_node(&mut self, i: usize) {
        let s = &self.suffix;
        let node = Node {
            ns: format!("basalt-{s}-{i}"),
            veth_host: format!("bh{s}{i}"),
            veth_ns: format!("bn{s}{i}"),
            iface: format!("bw{s}{i}"),
            dir: self.dir.path().join(format!("n{i}")),
            ip: format!("{}.{}", self.subnet, 10 + i),
            child: None,
        };
        // Pushed first so that Drop cleans up whatever the next lines make.
        self.nodes.push(node);
        let n = self.nodes.last().unwrap();
        run(&["ip", "netns", "add", &n.ns]);
        run(&[
            "ip",
            "link",
            "add",
            &n.veth_host,
            "type",
            "veth",
            "peer",
            "name",
            &n.veth_ns,
        ]);
        run(&["ip", "link", "set", &n.veth_ns, "netns", &n.ns]);
        run(&[
            "ip",
            "link",
            "set",
            &n.veth_host,
            "master",
            &self.bridge,
            "up",
        ]);
        run(&["ip", "-n", &n.ns, "link", "set", "lo", "up"]);
        run(&[
            "ip",
            "-n",
            &n.ns,
            "addr",
            "add",
            &format!("{}/24", n.ip),
            "brd",
            "+",
            "dev",
            &n.veth_ns,
        ]);
        run(&["ip", "-n", &n.ns, "link", "set", &n.veth_ns, "up"]);
        std::fs::create_dir_all(&n.dir).unwrap();
    }

    fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    fn start(&mut self, i: usize, token: &NetworkToken) {
        let n = &mut self.nodes[i - 1];
        let token_file = n.dir.join("token");
        std::fs::write(&token_file, token.to_string()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("agent.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &n.ns, env!("CARGO_BIN_EXE_basalt-agent")])
            .args(["mesh", "run", "--token-file"])
            .arg(&token_file)
            .arg("--state-dir")
            .arg(&n.dir)
            .arg("--identity-dir")
            .arg(n.dir.join("identity"))
            .args(["--interface", &n.iface])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting basalt-agent mesh run");
        n.child = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i - 1].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn status(&self, i: usize) -> Option<Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_basalt-agent"))
            .args(["mesh", "status", "--json", "--state-dir"])
            .arg(&self.node(i).dir)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn peers(&self, i: usize) -> Vec<Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_basalt-agent"))
            .args(["mesh", "peers", "--json", "--state-dir"])
            .arg(&self.node(i).dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mesh peers on node {i}");
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.node(i).dir.join("agent.log")).unwrap_or_default()
    }

    fn logs(&self) -> String {
        (1..=self.nodes.len())
            .map(|i| {
                let l = self.log(i);
                let tail: Vec<&str> = l.lines().rev().take(25).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- node {i} ---\n{}\n", tail.join("\n"))
            })
            .collect()
    }

    /// Mesh addresses (IPv6, IPv4) of the given nodes, once all have written a status.
    fn addresses(&self, nodes: &[usize], deadline: Instant) -> Vec<(String, String)> {
        loop {
            let got: Option<Vec<(String, String)>> = nodes
                .iter()
                .map(|&i| {
                    let s = self.status(i)?;
                    Some((
                        s["ipv6"].as_str()?.to_string(),
                        s["ipv4"].as_str()?.to_string(),
                    ))
                })
                .collect();
            if let Some(a) = got {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "not every node wrote a status in time\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ping every ordered pair over both addresses, in parallel, until all
    /// answer; returns the time taken from `since`.
    fn all_pairs_ping(&self, nodes: &[usize], since: Instant, bound: Duration) -> Duration {
        let deadline = since + bound;
        let mut pending: Vec<(usize, String)> = Vec::new();
        loop {
            // Addresses can move (IPv4 collisions), so read them each round.
            let addrs = self.addresses(nodes, deadline);
            if pending.is_empty() {
                for &a in nodes {
                    for (k, &b) in nodes.iter().enumerate() {
                        if a != b {
                            pending.push((a, addrs[k].0.clone()));
                            pending.push((a, addrs[k].1.clone()));
                        }
                    }
                }
            }
            let children: Vec<(usize, String, Child)> = pending
                .drain(..)
                .map(|(a, addr)| {
                    let c = Command::new("ip")
                        .args([
                            "netns",
                            "exec",
                            &self.node(a).ns,
                            "ping",
                            "-c1",
                            "-W1",
                            &addr,
                        ])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap();
                    (a, addr, c)
                })
                .collect();
            for (a, addr, mut c) in children {
                if !c.wait().unwrap().success() {
                    pending.push((a, addr));
                }
            }
            if pending.is_empty() {
                return since.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "not every pair pings within {bound:?}; failing: {pending:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 1..=self.nodes.len() {
            self.kill(i);
        }
        for n in &self.nodes {
            // wireguard-go daemons outlive the agent when it is killed.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &n.ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    quiet(&["kill", "-9", pid]);
                }
            }
            quiet(&["ip", "netns", "del", &n.ns]);
            quiet(&["ip", "link", "del", &n.veth_host]);
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", n.iface));
        }
        quiet(&["ip", "link", "del", &self.bridge]);
    }
}

fn token(bootstrap: Option<&str>, secret: [u8; 32]) -> NetworkToken {
    let t = NetworkToken::new("lab".parse().unwrap(), NetworkSecret::from_bytes(secret));
    match bootstrap {
        Some(b) => t
            .with_bootstrap(vec![format!("{b}:{PORT}").parse().unwrap()])
            .unwrap(),
        None => t,
    }
}

fn node_id(lab: &Lab, i: usize) -> String {
    lab.status(i).unwrap()["node_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn listed(peers: &[Value], id: &str) -> Option<Value> {
    peers
        .iter()
        .find(|p| p["node_id"].as_str() == Some(id))
        .cloned()
}

#[test]
fn five_nodes_bootstrap_fail_move_and_refuse_a_wrong_token() {
    if skip() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(6);
    let secret: [u8; 32] = rand::random();
    let good = token(Some(&lab.node(1).ip.clone()), secret);
    let mut wrong_secret = secret;
    wrong_secret[0] ^= 1;
    let wrong = token(Some(&lab.node(1).ip.clone()), wrong_secret);

    let started = Instant::now();
    for i in 1..=5 {
        lab.start(i, &good);
    }
    lab.start(6, &wrong);
    let all = [1, 2, 3, 4, 5];
    let took = lab.all_pairs_ping(&all, started, REACHABILITY_BOUND);
    println!(
        "mesh_netns: 5 nodes (bootstrap via node 1): every pair pings over mesh IPv6 and IPv4 {:.2} s after start",
        took.as_secs_f64()
    );
    for i in all {
        let peers = lab.peers(i);
        assert_eq!(peers.len(), 4, "node {i}: {peers:?}");
        for p in &peers {
            // A busy host can leave a probe unanswered for a moment: suspect
            // members stay peers.
            assert_ne!(p["state"], "dead", "node {i}: {p}");
            assert_eq!(p["on_device"], true, "node {i}: {p}");
        }
    }

    // Node 5 dies: it leaves every peer list (or stays only as dead, off the device).
    let id5 = node_id(&lab, 5);
    lab.kill(5);
    let killed = Instant::now();
    loop {
        let gone = [1, 2, 3, 4].iter().all(|&i| {
            listed(&lab.peers(i), &id5)
                .is_none_or(|p| p["state"] == "dead" && p["on_device"] == false)
        });
        if gone {
            break;
        }
        assert!(
            killed.elapsed() < FAILURE_BOUND,
            "node 5 still a peer {FAILURE_BOUND:?} after it was killed\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "mesh_netns: killed node 5 removed from every peer list after {:.2} s",
        killed.elapsed().as_secs_f64()
    );

    // Node 4 restarts on a new underlay address.
    lab.kill(4);
    let (ns4, veth4, old4) = {
        let n = lab.node(4);
        (n.ns.clone(), n.veth_ns.clone(), n.ip.clone())
    };
    let new4 = format!("{}.{}", lab.subnet, 104);
    run(&[
        "ip",
        "-n",
        &ns4,
        "addr",
        "del",
        &format!("{old4}/24"),
        "dev",
        &veth4,
    ]);
    run(&[
        "ip",
        "-n",
        &ns4,
        "addr",
        "add",
        &format!("{new4}/24"),
        "brd",
        "+",
        "dev",
        &veth4,
    ]);
    lab.nodes[3].ip = new4.clone();
    let restarted = Instant::now();
    lab.start(4, &good);
    let took = lab.all_pairs_ping(&[1, 2, 3, 4], restarted, REACHABILITY_BOUND);
    println!(
        "mesh_netns: node 4 restarted on {new4} (was {old4}): every pair pings again after {:.2} s",
        took.as_secs_f64()
    );
    let endpoint4 = format!("{new4}:{}", PORT + 1);
    let id4 = node_id(&lab, 4);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let moved = [1, 2, 3].iter().all(|&i| {
            listed(&lab.peers(i), &id4).is_some_and(|p| p["endpoint"] == endpoint4.as_str())
        });
        if moved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "peers did not pick up node 4's endpoint {endpoint4}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The node with the wrong token was never admitted and learnt nothing.
    let id6 = node_id(&lab, 6);
    for i in [1, 2, 3, 4] {
        assert!(
            listed(&lab.peers(i), &id6).is_none(),
            "node {i} lists the wrong-token node"
        );
    }
    // Node 4's counters restarted with it.
    for i in [1, 2, 3] {
        let st = lab.status(i).unwrap();
        assert!(
            st["drops"]["wrong_network"].as_u64().unwrap() > 0,
            "node {i} should have dropped the wrong-token node's datagrams: {}",
            st["drops"]
        );
    }
    let st6 = lab.status(6).unwrap();
    assert_eq!(
        lab.peers(6),
        Vec::<Value>::new(),
        "wrong-token node's peers"
    );
    assert_eq!(st6["members_alive"], 0);
    assert!(
        st6["drops"]["wrong_network"].as_u64().unwrap() > 0,
        "{}",
        st6["drops"]
    );
    assert_eq!(st6["drops"]["forged"], 0);
}

#[test]
fn lan_beacons_alone_form_the_mesh() {
    if skip() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(5);
    let t = token(None, rand::random());
    let started = Instant::now();
    for i in 1..=5 {
        lab.start(i, &t);
    }
    let took = lab.all_pairs_ping(&[1, 2, 3, 4, 5], started, REACHABILITY_BOUND);
    println!(
        "mesh_netns: 5 nodes (no bootstrap, LAN beacons only): every pair pings over mesh IPv6 and IPv4 {:.2} s after start",
        took.as_secs_f64()
    );
    for i in 1..=5 {
        assert_eq!(lab.peers(i).len(), 4, "node {i}");
    }
}
