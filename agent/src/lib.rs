//! The basalt device agent.
//!
//! | module | what it does |
//! | --- | --- |
//! | [`initrd`] | PID 1 of the initrd: modules, partitions, mounts, `switch_root` |
//! | [`install`] | the installer ISO's live system: write the image it carries onto a disk |
//! | [`disk`] | finding basalt's partitions on the block devices, growing the data partition |
//! | [`fetch`] | HTTP(S) downloads with timeouts and resume (`Range`), for bundles, the update channel and cloud-config URLs |
//! | [`provision`] | cloud-config: sources, merge, apply once or every boot |
//! | [`service`] | `basalt-agent run`, the systemd service |
//! | [`identity`] | the node's Ed25519 key, made on first use |
//! | [`mesh`] | the WireGuard mesh: membership, wanted peers, the reconcile loop |
//! | [`node`] | node operations: info, alias, allowed clients, resource history |
//! | [`update`] | signed A/B updates: check, stage, apply, revert, health, rollback detection |
//! | [`status`] | what the operator sees: `basalt-agent status` |
//! | [`cli`] | the command line |

pub mod cli;
pub mod disk;
pub mod fetch;
pub mod identity;
pub mod initrd;
pub mod install;
pub mod kmsg;
pub mod mesh;
pub mod metering;
pub mod node;
pub mod provision;
pub mod serve;
pub mod service;
pub mod status;
pub mod update;
