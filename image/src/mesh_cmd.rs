//! `basalt mesh`: make and read the network tokens devices join a mesh with.

use anyhow::{Context, Result};
use basalt_formats::mesh::{
    BootstrapAddr, Ipv4Range, MeshPrefix, NetworkName, NetworkSecret, NetworkToken,
};
use clap::Subcommand;
use serde::Serialize;
use std::io::Read;

/// `basalt mesh …`
#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Make a new network token, with a fresh secret from the OS.
    ///
    /// The token is a secret: anyone holding it can join the network.
    #[command(
        after_help = "Examples:\n  basalt mesh token --network lab\n  basalt mesh token --network edge --bootstrap seed.example.com:51820 --bootstrap 192.0.2.10:51820\n  basalt mesh token --network edge --ipv4-range 172.20.0.0/16 --port 51900 --json"
    )]
    Token {
        /// Network name: 1-32 characters of a-z, 0-9 and '-'.
        #[arg(long)]
        network: NetworkName,
        /// A node new devices call first, as HOST:PORT (repeat for more; at most 16).
        #[arg(long = "bootstrap", value_name = "HOST:PORT")]
        bootstrap: Vec<BootstrapAddr>,
        /// Private IPv4 range for mesh addresses, /8 to /24 [default: 10.77.0.0/16].
        #[arg(long, value_name = "CIDR")]
        ipv4_range: Option<Ipv4Range>,
        /// Unique local IPv6 /48 (fdxx:xxxx:xxxx::/48) [default: derived from name and secret].
        #[arg(long, value_name = "PREFIX")]
        ipv6_prefix: Option<MeshPrefix>,
        /// The mesh port: gossip and beacons use it, WireGuard the port after it.
        #[arg(long, default_value_t = basalt_formats::mesh::token::DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// Print JSON for machines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Decode a token and show what it holds, except the secret.
    #[command(
        after_help = "Examples:\n  basalt mesh inspect basalt-mesh-v1:AQAD…\n  basalt mesh inspect - --json < token.txt"
    )]
    Inspect {
        /// The token, or '-' to read it from standard input (keeps it out of the shell history).
        token: String,
        /// Print JSON for machines instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What a token holds, less its secret.
#[derive(Debug, Serialize)]
pub struct TokenSummary {
    /// Binary format version.
    pub version: u8,
    /// Network name.
    pub network: String,
    /// The public network id derived from the secret.
    pub network_id: String,
    /// Mesh IPv6 /48.
    pub ipv6_prefix: String,
    /// Whether the prefix is the one derived from name and secret.
    pub ipv6_prefix_derived: bool,
    /// Mesh IPv4 range.
    pub ipv4_range: String,
    /// The mesh port: gossip and beacons use it, WireGuard the port after it.
    pub port: u16,
    /// Bootstrap addresses.
    pub bootstrap: Vec<String>,
}

impl TokenSummary {
    /// Everything in `token` but the secret.
    pub fn of(token: &NetworkToken) -> Self {
        TokenSummary {
            version: token.version(),
            network: token.name().to_string(),
            network_id: token.keys().network_id.to_string(),
            ipv6_prefix: token.ipv6_prefix().to_string(),
            ipv6_prefix_derived: token.ipv6_prefix_is_derived(),
            ipv4_range: token.ipv4_range().to_string(),
            port: token.port(),
            bootstrap: token.bootstrap().iter().map(|b| b.to_string()).collect(),
        }
    }

    fn human(&self) -> String {
        let bootstrap = if self.bootstrap.is_empty() {
            "none (devices find each other by LAN beacons)".to_string()
        } else {
            self.bootstrap.join(", ")
        };
        format!(
            "network:     {}\nversion:     {}\nnetwork id:  {}\nipv6 prefix: {}{}\nipv4 range:  {}\nport:        {}\nbootstrap:   {bootstrap}\nsecret:      (not shown)\n",
            self.network,
            self.version,
            self.network_id,
            self.ipv6_prefix,
            if self.ipv6_prefix_derived { " (derived)" } else { "" },
            self.ipv4_range,
            self.port,
        )
    }
}

/// The cloud-config lines that give a device `token`.
pub fn cloud_config(token: &NetworkToken) -> String {
    format!("basalt:\n  version: 1\n  mesh:\n    token: {token}\n")
}

/// A token for `name` with a secret from the OS's random source.
pub fn new_token(name: NetworkName) -> Result<NetworkToken> {
    let mut secret = [0u8; NetworkSecret::LEN];
    getrandom::fill(&mut secret)
        .map_err(|e| anyhow::anyhow!("reading the OS random source: {e}"))?;
    Ok(NetworkToken::new(name, NetworkSecret::from_bytes(secret)))
}

#[derive(Serialize)]
struct TokenOutput<'a> {
    token: String,
    cloud_config: String,
    #[serde(flatten)]
    summary: &'a TokenSummary,
}

/// Run a `basalt mesh` subcommand.
pub fn run(command: MeshCommand) -> Result<()> {
    match command {
        MeshCommand::Token {
            network,
            bootstrap,
            ipv4_range,
            ipv6_prefix,
            port,
            json,
        } => {
            let mut token = new_token(network)?
                .with_bootstrap(bootstrap)?
                .with_port(port)?;
            if let Some(r) = ipv4_range {
                token = token.with_ipv4_range(r);
            }
            if let Some(p) = ipv6_prefix {
                token = token.with_ipv6_prefix(p);
            }
            let summary = TokenSummary::of(&token);
            if json {
                let out = TokenOutput {
                    token: token.to_string(),
                    cloud_config: cloud_config(&token),
                    summary: &summary,
                };
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                eprintln!(
                    "New token for mesh network {:?}. It is a secret: anyone holding it can join.",
                    summary.network
                );
                println!("{token}\n");
                eprintln!("Give it to each device in its cloud-config:");
                print!("{}", cloud_config(&token));
            }
            Ok(())
        }
        MeshCommand::Inspect { token, json } => {
            let text = if token == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading the token from standard input")?;
                s
            } else {
                token
            };
            let token: NetworkToken = text.parse().context("reading the mesh token")?;
            let summary = TokenSummary::of(&token);
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", summary.human());
            }
            Ok(())
        }
    }
}
