//! Membership at fleet sizes no host test can reach: N [`Membership`]
//! state machines (the agent's own code and foca configuration, sealed
//! datagrams included) on an in-memory network with 1–5 ms latency and
//! virtual time.
//!
//! Scenario per size: every node boots at once with node 0 as its only
//! bootstrap address (the mass boot of MESH-NOTES); the runtime's schedule
//! is followed (bootstrap every [`BOOTSTRAP_EVERY`] while alone, push-pull
//! when [`Membership::poll_sync`] finds one due).
//! Measured:
//!
//! - convergence: virtual time until every node has every other as a live
//!   member and holds every descriptor;
//! - gossip: bytes sent per node per second over the 30 s after convergence;
//! - failure detection: after killing one node, virtual time until every
//!   other node holds it as dead.
//!
//! Run: `cargo bench -p basalt-agent --bench mesh_sim -- 10 100 1000`
//! (sizes default to 10 100 1000).

use basalt_agent::mesh::gossip::{Membership, MembershipConfig, Now, OwnInfo};
use basalt_agent::mesh::runtime::BOOTSTRAP_EVERY;
use basalt_agent::mesh::Liveness;
use basalt_formats::mesh::{NetworkSecret, NetworkToken, WgPublicKey};
use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(100);
const LIMIT: Duration = Duration::from_secs(600);

/// A datagram in flight: delivery time, order, from, to, bytes.
type InFlight = Reverse<(Instant, u64, usize, usize, Vec<u8>)>;

struct Sim {
    nodes: Vec<Membership>,
    alive: Vec<bool>,
    by_addr: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<InFlight>,
    seq: u64,
    rng: StdRng,
    now: Now,
}

impl Sim {
    fn new(n: usize) -> Sim {
        let token = NetworkToken::new("sim".parse().unwrap(), NetworkSecret::from_bytes([9; 32]));
        let now = Now::real();
        let mut nodes = Vec::with_capacity(n);
        let mut by_addr = HashMap::new();
        for i in 0..n {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let addr: SocketAddr = format!("10.{}.{}.{}:51820", i >> 16, (i >> 8) & 0xff, i & 0xff)
                .parse()
                .unwrap();
            let mut wg = [0u8; 32];
            wg[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            let m = Membership::new(
                token.clone(),
                SigningKey::from_bytes(&seed),
                addr,
                OwnInfo {
                    wg_public_key: WgPublicKey::from_bytes(wg).unwrap(),
                    endpoints: vec![SocketAddr::new(addr.ip(), 51821)],
                    ipv4: "10.77.0.1".parse().unwrap(),
                    models: vec![],
                    load: basalt_formats::mesh::Load::new(0).unwrap(),
                    bundles: vec![],
                },
                MembershipConfig::default(),
                now,
                i as u64,
            )
            .unwrap();
            by_addr.insert(addr, i);
            nodes.push(m);
        }
        Sim {
            alive: vec![true; n],
            nodes,
            by_addr,
            queue: BinaryHeap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(1),
            now,
        }
    }

    fn collect(&mut self, i: usize) {
        for (to, d) in self.nodes[i].take_outgoing() {
            if let Some(&j) = self.by_addr.get(&to) {
                let delay = Duration::from_micros(self.rng.random_range(1000..5000));
                self.seq += 1;
                self.queue
                    .push(Reverse((self.now.mono + delay, self.seq, i, j, d)));
            }
        }
    }

    /// Advance virtual time by `d`, delivering datagrams and firing timers.
    fn advance(&mut self, d: Duration) {
        let end = self.now.mono + d;
        loop {
            let next_packet = self.queue.peek().map(|Reverse((at, ..))| *at);
            match next_packet {
                Some(at) if at <= end => {
                    let Reverse((at, _, from, to, data)) = self.queue.pop().unwrap();
                    self.set(at);
                    if self.alive[to] && self.alive[from] {
                        let src = self.nodes[from].identity().addr;
                        self.nodes[to].handle_datagram(src, &data, self.now);
                        self.collect(to);
                    }
                }
                _ => break,
            }
        }
        self.set(end);
        for i in 0..self.nodes.len() {
            if self.alive[i] {
                self.nodes[i].handle_timers(self.now);
                self.collect(i);
            }
        }
    }

    fn set(&mut self, at: Instant) {
        if at > self.now.mono {
            self.now = self.now.after(at - self.now.mono);
        }
    }

    fn sent(&self) -> u64 {
        self.nodes.iter().map(|n| n.sent().0).sum()
    }
}

fn run(n: usize) {
    let wall = Instant::now();
    let mut sim = Sim::new(n);
    let seed = sim.nodes[0].identity().addr;
    let start = sim.now.mono;
    let mut next_bootstrap = vec![start; n];

    let mut step = |sim: &mut Sim| {
        let now = sim.now;
        for (i, next_bootstrap) in next_bootstrap.iter_mut().enumerate() {
            if !sim.alive[i] {
                continue;
            }
            if sim.nodes[i].active_members() == 0 && now.mono >= *next_bootstrap {
                sim.nodes[i].bootstrap(&[seed], now);
                *next_bootstrap = now.mono + BOOTSTRAP_EVERY;
            }
            sim.nodes[i].poll_sync(now);
            sim.collect(i);
        }
        sim.advance(TICK);
    };

    let converged = loop {
        step(&mut sim);
        let done = sim
            .nodes
            .iter()
            .all(|m| m.active_members() == n - 1 && m.descriptor_count() == n);
        if done {
            break Some(sim.now.mono - start);
        }
        if sim.now.mono - start > LIMIT {
            break None;
        }
    };

    let before = sim.sent();
    let window = Duration::from_secs(30);
    let t0 = sim.now.mono;
    while sim.now.mono - t0 < window {
        step(&mut sim);
    }
    let steady = (sim.sent() - before) as f64 / n as f64 / window.as_secs_f64();

    let victim = n / 2;
    let victim_id = sim.nodes[victim].identity().node;
    sim.alive[victim] = false;
    let killed = sim.now.mono;
    let detected = loop {
        step(&mut sim);
        let done = (0..n).filter(|&i| i != victim).all(|i| {
            sim.nodes[i].liveness_of(&victim_id) != Some(Liveness::Alive)
                && sim.nodes[i].liveness_of(&victim_id) != Some(Liveness::Suspect)
        });
        if done {
            break Some(sim.now.mono - killed);
        }
        if sim.now.mono - killed > LIMIT {
            break None;
        }
    };
    let drops: u64 = sim.nodes.iter().map(|m| m.drops().total()).sum();
    let show = |d: Option<Duration>| {
        d.map_or_else(
            || format!(">{} s", LIMIT.as_secs()),
            |d| format!("{:.1} s", d.as_secs_f64()),
        )
    };
    println!(
        "| {n:>5} | {:>9} | {:>8.2} kB/s | {:>9} | {:>5} | {:>6.1} s |",
        show(converged),
        steady / 1000.0,
        show(detected),
        drops,
        wall.elapsed().as_secs_f64()
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    println!("| nodes | converged | gossip per node | detected | drops | wall |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for n in sizes {
        run(n);
    }
}
