//! `basalt-agent run`: the systemd service (`Type=notify`, with watchdog).

use crate::status;
use log::{info, warn};
use std::path::Path;
use std::time::Duration;

/// Sends logs to journald when started by systemd, to stderr otherwise.
pub fn init_logging() {
    if systemd_journal_logger::connected_to_journal() {
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            // Every entry carries the agent's version; records add their own
            // fields (MODEL, CLOUD_CONFIG_SOURCE, ...) as key-values.
            let j = j
                .with_syslog_identifier("basalt-agent".to_string())
                .with_extra_fields(vec![("BASALT_VERSION", env!("CARGO_PKG_VERSION"))]);
            if j.install().is_ok() {
                log::set_max_level(log::LevelFilter::Info);
                return;
            }
        }
    }
    static STDERR: StderrLog = StderrLog;
    if log::set_logger(&STDERR).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        eprintln!(
            "basalt-agent: {}: {}",
            r.level().as_str().to_lowercase(),
            r.args()
        );
    }
    fn flush(&self) {}
}

/// Runs the mesh on its own thread for as long as the service runs. Loads
/// the kernel's WireGuard first, so the kernel backend is used where the
/// module exists.
fn start_mesh(token: basalt_formats::mesh::NetworkToken, key: ed25519_dalek::SigningKey) {
    let _ = std::process::Command::new("modprobe")
        .arg("wireguard")
        .status();
    let spawned = std::thread::Builder::new()
        .name("mesh".into())
        .spawn(move || {
            let mut config = crate::mesh::runtime::MeshConfig::new(
                token,
                std::path::PathBuf::from(crate::cli::DEVICE_MESH_DIR),
                "basalt0".to_string(),
            );
            config.advert = Some(crate::serve::route::ADVERT_PATH.into());
            if crate::update::share::configured() {
                config.bundles = Some(
                    crate::update::share::BundleCache::in_state_dir(Path::new(
                        crate::update::state::STATE_DIR,
                    ))
                    .dir,
                );
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return log::error!("mesh: starting the async runtime: {e}"),
            };
            match crate::mesh::runtime::Mesh::open(config, key) {
                Ok(mesh) => {
                    if let Err(e) = rt.block_on(mesh.run(std::future::pending())) {
                        log::error!("mesh stopped: {e}");
                    }
                }
                Err(e) => log::error!("mesh: {e}"),
            }
        });
    if let Err(e) = spawned {
        log::error!("mesh: starting its thread: {e}");
    }
}

/// Runs the inference server on its own thread: loads the image's and the
/// data partition's models and serves them on every address of the node.
fn start_inference(
    identity: Option<&crate::identity::NodeIdentity>,
    config: Option<&basalt_formats::cloud_config::Basalt>,
) {
    let limits = crate::serve::Limits::from_config(config.and_then(|b| b.inference.as_ref()));
    let token: Option<basalt_formats::mesh::NetworkToken> = config
        .and_then(|b| b.mesh.as_ref())
        .and_then(|m| m.token.as_str().parse().ok());
    let access = crate::serve::access::Access {
        mesh_v6: token.as_ref().map(|t| t.ipv6_prefix()),
        mesh_v4: token.as_ref().map(|t| t.ipv4_range()),
        clients_dir: std::path::PathBuf::from(crate::node::NODE_DIR),
    };
    let metering = identity.and_then(|id| {
        crate::metering::MeteringLog::open(
            Path::new(crate::metering::DEVICE_METERING_DIR),
            id.signing_key().clone(),
        )
        .map_err(|e| warn!("metering: {e}; requests are served but not metered"))
        .ok()
    });
    let config_models = config.and_then(|b| b.models.clone()).unwrap_or_default();
    let models = crate::serve::models::Registry::new(Some(crate::serve::MODELS_STATUS_PATH.into()));
    let mut server = crate::serve::Server::new(
        models,
        limits,
        access,
        metering,
        identity.map(|id| id.node_id()),
    );
    if token.is_some() {
        server = server.with_directory(std::sync::Arc::new(crate::serve::route::MeshDirectory {
            status_dir: std::path::PathBuf::from(crate::cli::DEVICE_MESH_DIR),
            port: crate::serve::DEFAULT_PORT,
        }));
        if crate::update::share::configured() {
            server = server.with_bundles(
                crate::update::share::BundleCache::in_state_dir(Path::new(
                    crate::update::state::STATE_DIR,
                ))
                .dir,
            );
        }
    }
    let spawned = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return log::error!("inference: starting the async runtime: {e}"),
            };
            rt.block_on(async move {
                let port = crate::serve::DEFAULT_PORT;
                // Dual-stack where IPv6 is on; IPv4 alone where it is not.
                let listener = match tokio::net::TcpListener::bind(("::", port)).await {
                    Ok(l) => l,
                    Err(_) => match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
                        Ok(l) => l,
                        Err(e) => return log::error!("inference: port {port}: {e}"),
                    },
                };
                info!("inference API on port {port}");
                server.advertise(crate::serve::route::ADVERT_PATH.into());
                // The image's models first; then cloud-config's, downloaded
                // onto the data partition (a same-named one replaces the image's).
                let image =
                    server.load_models(vec![basalt_formats::model::IMAGE_MODELS_DIR.into()]);
                let data_root = std::path::PathBuf::from(basalt_formats::model::DATA_MODELS_DIR);
                for m in &config_models {
                    let name = m.name.to_string();
                    server.models.pending(&name, data_root.join(&name));
                }
                let root = data_root.clone();
                let installed =
                    tokio::task::spawn_blocking(move || {
                        match crate::fetch::Fetcher::new(Default::default()) {
                            Ok(f) => crate::serve::install::install(&config_models, &root, &f),
                            Err(e) => config_models
                                .iter()
                                .map(|m| {
                                    (
                                        m.name.to_string(),
                                        crate::serve::install::Outcome::Failed(e.to_string()),
                                    )
                                })
                                .collect(),
                        }
                    })
                    .await
                    .unwrap_or_default();
                let _ = image.await;
                for (name, outcome) in installed {
                    if let crate::serve::install::Outcome::Failed(e) = outcome {
                        server.models.fail(&name, data_root.join(&name), e);
                    }
                }
                server.load_models(vec![data_root]);
                if let Err(e) = server.serve(listener, std::future::pending()).await {
                    log::error!("inference server stopped: {e}");
                }
            });
        });
    if let Err(e) = spawned {
        log::error!("inference: starting its thread: {e}");
    }
}

/// Polls the update channel for as long as the service runs: the first
/// poll a few minutes after start, then every `poll_interval` ±10 %. A newer
/// version is checked, staged, applied and rebooted into (see
/// [`crate::update::poll`]).
/// Runs `basalt.install` in the background, progress to the journal, then
/// reboots into the installed system when asked to.
fn start_install(i: basalt_formats::cloud_config::Install) {
    std::thread::spawn(move || {
        info!("basalt.install: installing onto {}", i.device);
        println!(
            "basalt-agent: installing onto {} (basalt.install)",
            i.device
        );
        let mut last = (String::new(), u64::MAX);
        let result = crate::install::install(&i.device, true, &mut |phase, n, total| {
            let tenth = n * 10 / total.max(1);
            if last.0 != phase || last.1 != tenth {
                last = (phase.to_string(), tenth);
                info!("install: {phase} {} % ({n} of {total} bytes)", tenth * 10);
                // On the console too: someone may be watching the installer.
                println!("basalt-agent: install: {phase} {} %", tenth * 10);
            }
        });
        match result {
            Ok(done) => {
                info!(
                    "install: done: {} {} on {}, SHA-256 {} verified in {:.1} s",
                    done.image,
                    done.version,
                    done.device.display(),
                    done.sha256,
                    done.duration_s
                );
                // The console line tests and operators watch for.
                println!(
                    "basalt-agent: installed {} onto {}{}",
                    done.version,
                    done.device.display(),
                    if i.reboot { ", rebooting" } else { "" }
                );
                if i.reboot {
                    let _ = std::process::Command::new("systemctl")
                        .args(["reboot", "--no-block"])
                        .status();
                }
            }
            Err(e) => {
                log::error!("install: {e}");
                println!("basalt-agent: install failed: {e}");
            }
        }
    });
}

fn start_update_poller(update: basalt_formats::cloud_config::Update) {
    use crate::update::poll;
    let spawned = std::thread::Builder::new()
        .name("update-poll".into())
        .spawn(move || {
            let interval = Duration::from_secs(update.poll_interval);
            let fetcher = match crate::fetch::Fetcher::new(crate::fetch::FetchOptions::default()) {
                Ok(f) => f,
                Err(e) => return log::error!("automatic updates: {e}"),
            };
            let sharing =
                crate::update::share::Sharing::on_device(crate::update::share::configured());
            let mut wait = poll::first_delay(interval, rand::random());
            info!(
                "automatic updates: polling {} every {} s (±10 %), first in {} s",
                update.channel,
                update.poll_interval,
                wait.as_secs()
            );
            loop {
                std::thread::sleep(wait);
                match crate::update::Device::open() {
                    // The outcome is logged and kept in poll.json.
                    Ok(device) => {
                        let _ = poll::poll_shared(
                            &device,
                            &update.channel,
                            &fetcher,
                            poll::Mode::Apply,
                            &mut || crate::update::reboot_into_armed(&device),
                            &sharing,
                        );
                    }
                    Err(e) => log::error!("update poll: {e}"),
                }
                wait = poll::jittered(interval, rand::random());
            }
        });
    if let Err(e) = spawned {
        log::error!("automatic updates: starting their thread: {e}");
    }
}

/// Runs `f` while telling systemd the service is alive and still starting
/// (a cloud-config URL may take up to a minute while the network comes up).
fn keep_alive_while<T>(f: impl FnOnce() -> T) -> T {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut ticks = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                ticks += 1;
                if ticks.is_multiple_of(25) {
                    let _ = sd_notify::notify(
                        false,
                        &[
                            sd_notify::NotifyState::Watchdog,
                            sd_notify::NotifyState::ExtendTimeoutUsec(30_000_000),
                        ],
                    );
                }
            }
        });
        let out = f();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    })
}

pub fn run() -> anyhow::Result<()> {
    // Provisioning never fails the service: problems are in its status.
    let prov = keep_alive_while(|| {
        let mut paths = crate::provision::sources::Paths::default();
        // On the Pi, a card's user-data is on the autoboot partition.
        match crate::update::pi_boot_partition() {
            Some(Ok(dir)) => paths.boot_partition = dir,
            Some(Err(e)) => warn!("boot partition user-data not read: {e}"),
            None => {}
        }
        let (found, read_errors) = crate::provision::sources::read_all(&paths);
        crate::provision::provision(
            found,
            read_errors,
            Path::new(crate::provision::STATE_DIR),
            &mut crate::provision::host::System::default(),
        )
    });
    if !prov.errors.is_empty() {
        let _ = sd_notify::notify(
            false,
            &[sd_notify::NotifyState::Status(&format!(
                "cloud-config: {} error(s)",
                prov.errors.len()
            ))],
        );
    }
    // The node's identity: made on first boot, kept on the data partition.
    let identity = match crate::identity::NodeIdentity::load_or_create(Path::new(
        crate::identity::DEVICE_IDENTITY_DIR,
    )) {
        Ok(id) => {
            let node_id = id.node_id().to_string();
            let public =
                Path::new(crate::identity::DEVICE_IDENTITY_DIR).join(crate::identity::NODE_ID_FILE);
            if std::fs::read_to_string(&public).ok().as_deref() != Some(node_id.as_str()) {
                if let Err(e) = crate::provision::atomic_write(&public, node_id.as_bytes(), 0o644) {
                    warn!("{}: {e}", public.display());
                }
            }
            info!("node id {node_id}");
            Some(id)
        }
        Err(e) => {
            warn!("node identity: {e}");
            None
        }
    };
    // The mesh, when cloud-config names a network.
    let token = crate::provision::current_config(Path::new(crate::provision::STATE_DIR))
        .and_then(|c| c.basalt)
        .and_then(|b| b.mesh)
        .map(|m| m.token);
    match (token, &identity) {
        (Some(t), Some(id)) => match t.as_str().parse() {
            Ok(token) => start_mesh(token, id.signing_key().clone()),
            Err(e) => warn!("basalt.mesh.token: {e}"),
        },
        (Some(_), None) => warn!("not joining the mesh: this node has no identity"),
        (None, _) => {}
    }
    // cloud-config's alias and allowed clients, on top of what operators set.
    if let Some(b) = crate::provision::current_config(Path::new(crate::provision::STATE_DIR))
        .and_then(|c| c.basalt)
    {
        let dir = Path::new(crate::node::NODE_DIR);
        if let Some(a) = &b.alias {
            if crate::node::alias(dir).as_deref() != Some(a.as_str()) {
                if let Err(e) = crate::node::set_alias(dir, a.as_str()) {
                    warn!("alias: {e}");
                }
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for t in b.api_tokens.iter().flatten() {
            if let Err(e) =
                crate::serve::tokens::add_hash(dir, t.name.as_str(), &hex::encode(t.sha256), now)
            {
                warn!("api token: {e}");
            }
        }
        for c in b.allowed_clients.iter().flatten() {
            if let Err(e) = crate::node::allow(
                dir,
                &c.key.to_string(),
                c.alias.as_ref().map(|a| a.as_str()),
            ) {
                warn!("allowed client: {e}");
            }
        }
    }
    start_inference(
        identity.as_ref(),
        crate::provision::current_config(Path::new(crate::provision::STATE_DIR))
            .and_then(|c| c.basalt)
            .as_ref(),
    );
    let live = crate::install::live_boot().is_ok();
    if live {
        info!("live system from the installer ISO: no slots, no updates");
    } else {
        match crate::update::Device::open() {
            Ok(device) => crate::update::reconcile_on_boot(&device),
            Err(e) => warn!("update state not checked: {e}"),
        }
        // Automatic updates, when cloud-config names a channel.
        if let Some(u) = crate::provision::current_config(Path::new(crate::provision::STATE_DIR))
            .and_then(|c| c.basalt)
            .and_then(|b| b.update)
        {
            start_update_poller(u);
        }
    }
    let st = status::collect(Path::new("/"));
    for e in &st.errors {
        warn!("{e}");
    }
    if let Some(b) = &st.boot {
        info!(
            "booted slot {} from {} in {} ms to root",
            b.slot, b.disk, b.initrd_done_ms
        );
        if let Some(g) = &b.data_grown {
            info!(
                "data partition grew from {} to {} bytes",
                g.from_bytes, g.to_bytes
            );
        }
    }
    // The ready line goes to stdout, which the unit sends to the journal and the console.
    println!("{}", st.ready_line());
    // basalt-health.service checks for this file before the boot is blessed.
    if let Err(e) = std::fs::write(crate::update::health::READY_PATH, st.ready_line() + "\n") {
        warn!("{}: {e}", crate::update::health::READY_PATH);
    }
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("running"),
        ],
    );

    // An unattended installation, when cloud-config asks for one on a live system.
    let install = crate::provision::current_config(Path::new(crate::provision::STATE_DIR))
        .and_then(|c| c.basalt)
        .and_then(|b| b.install);
    if let (true, Some(i)) = (live, install) {
        start_install(i);
    }

    let mut usec = 0;
    let interval = if sd_notify::watchdog_enabled(false, &mut usec) {
        Duration::from_micros(usec / 2)
    } else {
        Duration::from_secs(30)
    };
    // Resource history: a sample a minute on the data partition.
    let node_dir = Path::new(crate::node::NODE_DIR);
    let mut cpu = None;
    let mut next_sample = std::time::Instant::now();
    loop {
        if std::time::Instant::now() >= next_sample {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let sample = crate::node::sample(now, &mut cpu, Path::new("/data"));
            if let Err(e) = crate::node::record(node_dir, &sample) {
                warn!("history: {e}");
            }
            next_sample += Duration::from_secs(60);
        }
        std::thread::sleep(interval.min(Duration::from_secs(60)));
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
    }
}
