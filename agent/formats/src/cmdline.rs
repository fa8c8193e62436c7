//! The `basalt.*` parameters of the kernel command line.
//!
//! The boot loader entry of each slot passes `basalt.slot=a` or `basalt.slot=b`;
//! the initrd uses it to pick the root partition. `basalt.cloud-config=` and
//! `basalt.cloud-config-url=` carry a cloud-config source; they are decoded by
//! [`crate::cloud_config::parse_kernel_cmdline`].

use crate::slot::Slot;

/// What the initrd and agent read from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelCmdline {
    /// `basalt.slot=`: the slot this boot belongs to.
    pub slot: Option<Slot>,
    /// `basalt.init=`: the init to execute in the new root (default `/sbin/init`).
    pub init: Option<String>,
    /// `basalt.shell`: drop to an emergency shell in the initrd instead of switching root.
    pub debug: bool,
    /// `basalt.live`: boot the live system from the installer ISO instead of a slot.
    pub live: bool,
    /// Whether `basalt.cloud-config=` or `basalt.cloud-config-url=` is present.
    pub cloud_config: bool,
    /// Problems found while parsing, reported by the caller (never fatal).
    pub warnings: Vec<String>,
}

impl KernelCmdline {
    pub fn parse(text: &str) -> Self {
        let mut out = KernelCmdline::default();
        for word in text.split_ascii_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            match (key, value) {
                ("basalt.slot", Some(v)) => match v.parse() {
                    Ok(s) => out.slot = Some(s),
                    Err(e) => out.warnings.push(format!("basalt.slot: {e}")),
                },
                ("basalt.init", Some(v)) => out.init = Some(v.to_string()),
                ("basalt.debug", None) => out.debug = true,
                ("basalt.live", None | Some("1")) => out.live = true,
                (
                    crate::cloud_config::sources::CMDLINE_DOCUMENT_PARAM
                    | crate::cloud_config::sources::CMDLINE_URL_PARAM,
                    Some(_),
                ) => out.cloud_config = true,
                (k, _) if k.starts_with("basalt.") => out
                    .warnings
                    .push(format!("unknown kernel parameter {word:?}")),
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_slot_and_ignores_others() {
        let c = KernelCmdline::parse("console=ttyS0 basalt.slot=b quiet\n");
        assert_eq!(c.slot, Some(Slot::B));
        assert!(c.warnings.is_empty());
        assert!(!c.debug);
        assert!(!c.cloud_config);
    }

    #[test]
    fn cloud_config_parameters_are_known() {
        let c = KernelCmdline::parse(
            "basalt.cloud-config=I2Nsb3VkLWNvbmZpZwo basalt.cloud-config-url=https://x.example/",
        );
        assert!(c.cloud_config);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn bad_values_are_warnings() {
        let c = KernelCmdline::parse("basalt.slot=c basalt.colour=red basalt.debug");
        assert_eq!(c.slot, None);
        assert_eq!(c.warnings.len(), 2);
        assert!(c.debug);
    }

    #[test]
    fn live_needs_no_slot() {
        for text in ["basalt.live", "basalt.live=1 console=ttyS0"] {
            let c = KernelCmdline::parse(text);
            assert!(c.live, "{text}");
            assert_eq!(c.slot, None);
            assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        }
        assert!(!KernelCmdline::parse("basalt.slot=a").live);
    }
}
