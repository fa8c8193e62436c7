//! The formats that basalt's builder (`basalt`) and device agent
//! (`basalt-agent`) both speak.
//!
//! Everything here is parsing and validation: no file, device or network
//! access. What a user writes (`*File` types, straight from serde) is kept
//! apart from the checked object the rest of the code works with. The
//! streaming bundle reader and writer ([`bundle::stream`]) are behind the
//! `stream` feature, as they bring zstd and tar.

pub mod board;
pub mod boot;
pub mod bundle;
pub mod channel;
pub mod cloud_config;
pub mod cmdline;
pub mod entry;
pub mod initrd;
pub mod layout;
pub mod mesh;
pub mod metering;
pub mod model;
pub mod record;
pub mod release;
pub mod size;
pub mod slot;
pub mod spec;
pub mod tryboot;
pub mod yaml;

pub use board::{Arch, Board, BoardId};
pub use cloud_config::CloudConfig;
pub use size::ByteSize;
pub use slot::Slot;
pub use spec::ImageSpec;
