//! The host side of the mesh, behind narrow traits with in-memory fakes:
//!
//! - [`WgDevice`]: the WireGuard device, through `wireguard-control`
//!   ([`WireGuardControl`]): the kernel backend where the module is loaded,
//!   the userspace one (`wireguard-go`) otherwise.
//! - [`Tools`]: running external programs ([`HostTools`]); the interface's
//!   addresses are set with `ip` through it ([`IpAddresses`]).
//!
//! `wireguard-control`'s userspace backend starts the daemon itself and
//! waits a fixed 100 ms before connecting to its socket, which races a slow
//! start; [`WireGuardControl::ensure`] starts the daemon itself and waits for
//! the socket with a bounded retry, so the library always finds it up.

use super::diff::{ActualPeer, PeerDiff};
use basalt_formats::mesh::WgPublicKey;
use ipnet::IpNet;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};
use wireguard_control::{
    AllowedIp, Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder,
};

/// Where userspace WireGuard daemons put their control sockets (shared by
/// every network namespace on the host).
pub const USERSPACE_SOCKET_DIR: &str = "/var/run/wireguard";
/// How long to wait for a userspace daemon's socket.
pub const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// Why the WireGuard device could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not a valid interface name.
    #[error("invalid WireGuard interface name {name:?}: {reason}")]
    Name {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The userspace daemon did not start.
    #[error("interface {iface}: starting {program}: {reason}")]
    Start {
        /// The interface.
        iface: String,
        /// The daemon.
        program: String,
        /// Why.
        reason: String,
    },
    /// The userspace daemon's socket did not come up.
    #[error("interface {iface}: {program} started but its socket {socket} did not accept connections within {waited:?}")]
    SocketTimeout {
        /// The interface.
        iface: String,
        /// The daemon.
        program: String,
        /// The socket.
        socket: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// A `wireguard-control` call failed.
    #[error("interface {iface} ({backend} backend): {op}: {source}")]
    Control {
        /// The interface.
        iface: String,
        /// Kernel or userspace.
        backend: String,
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The device reported a key that is not a valid public key.
    #[error("interface {iface}: the device reports an invalid peer key {key}")]
    BadPeerKey {
        /// The interface.
        iface: String,
        /// The key, base64.
        key: String,
    },
}

/// The WireGuard device, as the reconcile loop uses it.
pub trait WgDevice {
    /// The interface name.
    fn name(&self) -> &str;
    /// Create the device if needed and set its private key and listen port.
    fn ensure(&mut self, private_key: &[u8; 32], listen_port: u16) -> Result<(), DeviceError>;
    /// The device's peers now.
    fn peers(&mut self) -> Result<Vec<ActualPeer>, DeviceError>;
    /// Apply a diff in one update.
    fn apply(&mut self, diff: &PeerDiff) -> Result<(), DeviceError>;
    /// Remove the device.
    fn delete(&mut self) -> Result<(), DeviceError>;
}

/// The public key of a WireGuard private key.
pub fn wg_public_key(private_key: &[u8; 32]) -> WgPublicKey {
    let public = Key(*private_key).get_public();
    WgPublicKey::from_bytes(public.0).expect("a curve25519 public key is never all zeros")
}

/// Clamp 32 random bytes into a Curve25519 private key.
pub fn clamp_private_key(mut k: [u8; 32]) -> [u8; 32] {
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

/// The real device, through `wireguard-control`.
pub struct WireGuardControl {
    iface: InterfaceName,
    name: String,
    backend: Backend,
}

impl fmt::Debug for WireGuardControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireGuardControl")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .finish()
    }
}

/// The userspace daemon `wireguard-control` would start.
pub fn userspace_program() -> String {
    std::env::var("WG_USERSPACE_IMPLEMENTATION")
        .or_else(|_| std::env::var("WG_QUICK_USERSPACE_IMPLEMENTATION"))
        .unwrap_or_else(|_| "wireguard-go".to_string())
}

impl WireGuardControl {
    /// The device `name`, with the kernel backend if the `wireguard` module
    /// is loaded and the userspace one otherwise.
    pub fn new(name: &str) -> Result<Self, DeviceError> {
        let backend = if Path::new("/sys/module/wireguard").exists() {
            Backend::Kernel
        } else {
            Backend::Userspace
        };
        Self::with_backend(name, backend)
    }

    /// The device `name` with a chosen backend.
    pub fn with_backend(name: &str, backend: Backend) -> Result<Self, DeviceError> {
        let iface: InterfaceName = name.parse().map_err(|e| DeviceError::Name {
            name: name.to_string(),
            reason: format!("{e}"),
        })?;
        Ok(WireGuardControl {
            iface,
            name: name.to_string(),
            backend,
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn control(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> DeviceError + '_ {
        move |source| DeviceError::Control {
            iface: self.name.clone(),
            backend: self.backend.to_string(),
            op,
            source,
        }
    }

    fn socket(&self) -> PathBuf {
        Path::new(USERSPACE_SOCKET_DIR).join(format!("{}.sock", self.name))
    }

    fn socket_up(&self) -> bool {
        std::os::unix::net::UnixStream::connect(self.socket()).is_ok()
    }

    fn start_userspace(&self) -> Result<(), DeviceError> {
        if self.socket_up() {
            return Ok(());
        }
        let program = userspace_program();
        let start = |reason: String| DeviceError::Start {
            iface: self.name.clone(),
            program: program.clone(),
            reason,
        };
        std::fs::create_dir_all(USERSPACE_SOCKET_DIR)
            .map_err(|e| start(format!("creating {USERSPACE_SOCKET_DIR}: {e}")))?;
        let out = Command::new(&program)
            .arg(&self.name)
            .output()
            .map_err(|e| start(e.to_string()))?;
        if !out.status.success() {
            return Err(start(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let started = std::time::Instant::now();
        while started.elapsed() < SOCKET_WAIT {
            if self.socket_up() {
                log::info!(
                    "interface {}: {program} up after {} ms",
                    self.name,
                    started.elapsed().as_millis()
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(DeviceError::SocketTimeout {
            iface: self.name.clone(),
            program,
            socket: self.socket(),
            waited: SOCKET_WAIT,
        })
    }
}

fn allowed(ips: &[IpNet]) -> Vec<AllowedIp> {
    ips.iter()
        .map(|n| AllowedIp {
            address: n.addr(),
            cidr: n.prefix_len(),
        })
        .collect()
}

impl WgDevice for WireGuardControl {
    fn name(&self) -> &str {
        &self.name
    }

    fn ensure(&mut self, private_key: &[u8; 32], listen_port: u16) -> Result<(), DeviceError> {
        if self.backend == Backend::Userspace {
            self.start_userspace()?;
        }
        DeviceUpdate::new()
            .set_private_key(Key(*private_key))
            .set_listen_port(listen_port)
            .apply(&self.iface, self.backend)
            .map_err(self.control("set private key and listen port"))
    }

    fn peers(&mut self) -> Result<Vec<ActualPeer>, DeviceError> {
        let dev = Device::get(&self.iface, self.backend).map_err(self.control("read peers"))?;
        let now = SystemTime::now();
        dev.peers
            .into_iter()
            .map(|p| {
                let public_key = WgPublicKey::from_bytes(p.config.public_key.0).map_err(|_| {
                    DeviceError::BadPeerKey {
                        iface: self.name.clone(),
                        key: p.config.public_key.to_base64(),
                    }
                })?;
                let last_handshake = p
                    .stats
                    .last_handshake_time
                    .filter(|t| *t > SystemTime::UNIX_EPOCH)
                    .map(|t| now.duration_since(t).unwrap_or_default());
                Ok(ActualPeer {
                    public_key,
                    endpoint: p.config.endpoint,
                    allowed_ips: p
                        .config
                        .allowed_ips
                        .iter()
                        .filter_map(|a| IpNet::new(a.address, a.cidr).ok())
                        .collect(),
                    keepalive: p.config.persistent_keepalive_interval,
                    last_handshake,
                    rx_bytes: p.stats.rx_bytes,
                    tx_bytes: p.stats.tx_bytes,
                })
            })
            .collect()
    }

    fn apply(&mut self, diff: &PeerDiff) -> Result<(), DeviceError> {
        if diff.is_empty() {
            return Ok(());
        }
        let mut update = DeviceUpdate::new();
        for p in &diff.add {
            let mut b = PeerConfigBuilder::new(&Key(*p.public_key.as_bytes()))
                .add_allowed_ips(&allowed(&p.allowed_ips));
            if let Some(e) = p.endpoint {
                b = b.set_endpoint(e);
            }
            if let Some(k) = p.keepalive {
                b = b.set_persistent_keepalive_interval(k);
            }
            update = update.add_peer(b);
        }
        for u in &diff.update {
            let mut b = PeerConfigBuilder::new(&Key(*u.public_key.as_bytes()));
            if let Some(e) = u.endpoint.as_ref().and_then(|c| c.to) {
                b = b.set_endpoint(e);
            }
            if let Some(c) = &u.allowed_ips {
                b = b.replace_allowed_ips().add_allowed_ips(&allowed(&c.to));
            }
            if let Some(c) = &u.keepalive {
                b = b.set_persistent_keepalive_interval(c.to.unwrap_or(0));
            }
            update = update.add_peer(b);
        }
        for k in &diff.remove {
            update = update.remove_peer_by_key(&Key(*k.as_bytes()));
        }
        update
            .apply(&self.iface, self.backend)
            .map_err(self.control("apply peer changes"))
    }

    fn delete(&mut self) -> Result<(), DeviceError> {
        match Device::get(&self.iface, self.backend) {
            Ok(dev) => dev.delete().map_err(self.control("delete")),
            Err(_) => Ok(()),
        }
    }
}

/// An in-memory device for tests: it keeps peers and applies diffs.
#[derive(Debug, Default)]
pub struct FakeDevice {
    /// Its name.
    pub name: String,
    /// Private key and port, once set.
    pub config: Option<([u8; 32], u16)>,
    /// Its peers.
    pub peers: BTreeMap<WgPublicKey, ActualPeer>,
    /// Diffs applied, in order.
    pub applied: Vec<PeerDiff>,
    /// Whether it was deleted.
    pub deleted: bool,
}

impl WgDevice for FakeDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn ensure(&mut self, private_key: &[u8; 32], listen_port: u16) -> Result<(), DeviceError> {
        self.config = Some((*private_key, listen_port));
        Ok(())
    }

    fn peers(&mut self) -> Result<Vec<ActualPeer>, DeviceError> {
        Ok(self.peers.values().cloned().collect())
    }

    fn apply(&mut self, diff: &PeerDiff) -> Result<(), DeviceError> {
        for p in &diff.add {
            self.peers.insert(
                p.public_key,
                ActualPeer {
                    public_key: p.public_key,
                    endpoint: p.endpoint,
                    allowed_ips: p.allowed_ips.clone(),
                    keepalive: p.keepalive,
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                },
            );
        }
        for u in &diff.update {
            if let Some(p) = self.peers.get_mut(&u.public_key) {
                if let Some(c) = &u.endpoint {
                    p.endpoint = c.to;
                }
                if let Some(c) = &u.allowed_ips {
                    p.allowed_ips = c.to.clone();
                }
                if let Some(c) = &u.keepalive {
                    p.keepalive = c.to;
                }
            }
        }
        for k in &diff.remove {
            self.peers.remove(k);
        }
        self.applied.push(diff.clone());
        Ok(())
    }

    fn delete(&mut self) -> Result<(), DeviceError> {
        self.deleted = true;
        self.peers.clear();
        Ok(())
    }
}

/// Why an external program failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// It could not be started.
    #[error("running {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It exited with an error.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// Its output made no sense.
    #[error("{command}: unexpected output: {reason}")]
    Output {
        /// The command line.
        command: String,
        /// Why.
        reason: String,
    },
}

/// Runs external programs.
pub trait Tools {
    /// Run `program` with `args`; its stdout on success.
    fn run(&self, program: &str, args: &[&str]) -> Result<String, ToolError>;
}

/// Runs programs on the host.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostTools;

impl Tools for HostTools {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, ToolError> {
        let command = format!("{program} {}", args.join(" "));
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|source| ToolError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(ToolError::Failed {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A fake that records commands and answers from a script.
#[derive(Debug, Default)]
pub struct FakeTools {
    /// Command lines run, in order.
    pub calls: RefCell<Vec<String>>,
    /// Stdout for a command line (program and args joined by spaces);
    /// unknown commands print nothing.
    pub answers: BTreeMap<String, String>,
}

impl Tools for FakeTools {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, ToolError> {
        let line = format!("{program} {}", args.join(" "));
        self.calls.borrow_mut().push(line.clone());
        Ok(self.answers.get(&line).cloned().unwrap_or_default())
    }
}

#[derive(serde::Deserialize)]
struct IpLink {
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(serde::Deserialize)]
struct IpAddrInfo {
    local: std::net::IpAddr,
    prefixlen: u8,
    #[serde(default)]
    scope: String,
}

/// Sets an interface's addresses with `ip`.
#[derive(Debug)]
pub struct IpAddresses<T> {
    tools: T,
}

impl<T: Tools> IpAddresses<T> {
    /// Use these tools.
    pub fn new(tools: T) -> Self {
        IpAddresses { tools }
    }

    /// The tools, for tests.
    pub fn tools(&self) -> &T {
        &self.tools
    }

    /// Give `iface` exactly the global addresses `want` and bring it up.
    /// Link-local addresses are left alone.
    pub fn ensure(&self, iface: &str, want: &[IpNet]) -> Result<(), ToolError> {
        let args = ["-j", "addr", "show", "dev", iface];
        let out = self.tools.run("ip", &args)?;
        let links: Vec<IpLink> = if out.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&out).map_err(|e| ToolError::Output {
                command: format!("ip {}", args.join(" ")),
                reason: e.to_string(),
            })?
        };
        let up = links.iter().any(|l| l.flags.iter().any(|f| f == "UP"));
        let have: Vec<IpNet> = links
            .iter()
            .flat_map(|l| &l.addr_info)
            .filter(|a| a.scope != "link" && a.scope != "host")
            .filter_map(|a| IpNet::new(a.local, a.prefixlen).ok())
            .collect();
        for w in want {
            if !have.contains(w) {
                self.tools
                    .run("ip", &["addr", "add", &w.to_string(), "dev", iface])?;
            }
        }
        for h in &have {
            if !want.contains(h) {
                self.tools
                    .run("ip", &["addr", "del", &h.to_string(), "dev", iface])?;
            }
        }
        if !up {
            self.tools.run("ip", &["link", "set", "dev", iface, "up"])?;
        }
        Ok(())
    }

    /// Remove the interface (which stops a userspace daemon).
    pub fn delete(&self, iface: &str) -> Result<(), ToolError> {
        self.tools
            .run("ip", &["link", "del", "dev", iface])
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::diff::{diff, WantedPeer};

    #[test]
    fn addresses_are_added_removed_and_the_link_raised() {
        let mut tools = FakeTools::default();
        tools.answers.insert(
            "ip -j addr show dev wgt0".to_string(),
            r#"[{"ifname":"wgt0","flags":["POINTOPOINT","NOARP"],"addr_info":[
                {"family":"inet","local":"10.77.0.9","prefixlen":16,"scope":"global"},
                {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"},
                {"family":"inet6","local":"fd00:1:2::5","prefixlen":48,"scope":"global"}]}]"#
                .to_string(),
        );
        let ip = IpAddresses::new(tools);
        let want: Vec<IpNet> = vec![
            "fd00:1:2::5/48".parse().unwrap(),
            "10.77.0.3/16".parse().unwrap(),
        ];
        ip.ensure("wgt0", &want).unwrap();
        assert_eq!(
            *ip.tools().calls.borrow(),
            [
                "ip -j addr show dev wgt0",
                "ip addr add 10.77.0.3/16 dev wgt0",
                "ip addr del 10.77.0.9/16 dev wgt0",
                "ip link set dev wgt0 up",
            ]
        );
    }

    #[test]
    fn nothing_to_do_runs_only_the_query() {
        let mut tools = FakeTools::default();
        tools.answers.insert(
            "ip -j addr show dev wgt0".to_string(),
            r#"[{"flags":["UP"],"addr_info":[{"local":"10.77.0.3","prefixlen":16,"scope":"global"}]}]"#
                .to_string(),
        );
        let ip = IpAddresses::new(tools);
        ip.ensure("wgt0", &["10.77.0.3/16".parse().unwrap()])
            .unwrap();
        assert_eq!(ip.tools().calls.borrow().len(), 1);
    }

    #[test]
    fn bad_output_names_the_command() {
        let mut tools = FakeTools::default();
        tools.answers.insert(
            "ip -j addr show dev wgt0".to_string(),
            "not json".to_string(),
        );
        let e = IpAddresses::new(tools)
            .ensure("wgt0", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ip -j addr show dev wgt0"), "{e}");
    }

    #[test]
    fn fake_device_converges_under_diff() {
        let mut dev = FakeDevice::default();
        let k = WgPublicKey::from_bytes([5; 32]).unwrap();
        let want = vec![WantedPeer {
            public_key: k,
            endpoint: Some("192.0.2.5:51821".parse().unwrap()),
            allowed_ips: vec!["10.77.0.5/32".parse().unwrap()],
            keepalive: Some(25),
        }];
        let d = diff(&want, &dev.peers().unwrap());
        dev.apply(&d).unwrap();
        assert!(diff(&want, &dev.peers().unwrap()).is_empty());
        let d = diff(&[], &dev.peers().unwrap());
        assert_eq!(d.remove, vec![k]);
        dev.apply(&d).unwrap();
        assert!(dev.peers.is_empty());
    }

    #[test]
    fn keys() {
        let private = clamp_private_key([9; 32]);
        assert_eq!(private[0] & 7, 0);
        assert_eq!(private[31] & 0xc0, 0x40);
        assert_eq!(
            wg_public_key(&private),
            WgPublicKey::from_bytes(Key(private).get_public().0).unwrap()
        );
        assert!(WireGuardControl::new("this-name-is-far-too-long").is_err());
    }
}
