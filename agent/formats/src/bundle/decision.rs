//! Whether a device should take a verified bundle: a pure function of the
//! manifest and the running release.

use super::manifest::Manifest;
use crate::board::BoardId;
use crate::release::Release;
use semver::Version;
use serde::Serialize;
use std::fmt;

/// What to do with a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "decision")]
pub enum Decision {
    /// Install it into the inactive slot.
    Update { from: Version, to: Version },
    /// Leave the device as it is.
    Refuse(Reason),
}

/// Why a bundle is refused. Versions compare by semver precedence (build
/// metadata is ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum Reason {
    /// The bundle is of another image (another spec `name`).
    #[error("the bundle is of image {bundle}, this device runs {running}")]
    WrongImage { bundle: String, running: String },
    /// The bundle does not list the running board.
    #[error("the bundle is for {}, this device is {running}", boards_list(.bundle_boards))]
    WrongBoard {
        bundle_boards: Vec<BoardId>,
        running: BoardId,
    },
    /// The bundle's version is the running one.
    #[error("version {offered} is already running")]
    NotNewer { running: Version, offered: Version },
    /// The bundle's version is older than the running one.
    #[error("version {offered} is older than the running {running}")]
    Downgrade { running: Version, offered: Version },
    /// The running version is older than the bundle's `min_version`.
    #[error("the bundle replaces {min_version} or newer, this device runs {running}; install an intermediate release first")]
    BelowFloor {
        running: Version,
        min_version: Version,
    },
    /// A delta bundle made from another version than the running one.
    #[error(
        "the bundle is a delta from {base}, this device runs {running}; install the full bundle"
    )]
    WrongBase { running: Version, base: Version },
}

impl Reason {
    /// Whether the full bundle of the same version could still be taken.
    pub fn full_bundle_may_do(&self) -> bool {
        matches!(self, Reason::WrongBase { .. })
    }
}

fn boards_list(boards: &[BoardId]) -> String {
    boards
        .iter()
        .map(|b| b.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Update { from, to } => write!(f, "update from {from} to {to}"),
            Decision::Refuse(r) => write!(f, "refused: {r}"),
        }
    }
}

/// Decides whether the device running `running` should install the bundle
/// described by `manifest` (already verified).
pub fn check(manifest: &Manifest, running: &Release) -> Decision {
    if manifest.name != running.name {
        return Decision::Refuse(Reason::WrongImage {
            bundle: manifest.name.clone(),
            running: running.name.clone(),
        });
    }
    if !manifest.boards.contains(&running.board) {
        return Decision::Refuse(Reason::WrongBoard {
            bundle_boards: manifest.boards.clone(),
            running: running.board,
        });
    }
    let (offered, current) = (&manifest.version, &running.version);
    match offered.cmp_precedence(current) {
        std::cmp::Ordering::Less => {
            return Decision::Refuse(Reason::Downgrade {
                running: current.clone(),
                offered: offered.clone(),
            })
        }
        std::cmp::Ordering::Equal => {
            return Decision::Refuse(Reason::NotNewer {
                running: current.clone(),
                offered: offered.clone(),
            })
        }
        std::cmp::Ordering::Greater => {}
    }
    if current.cmp_precedence(&manifest.min_version).is_lt() {
        return Decision::Refuse(Reason::BelowFloor {
            running: current.clone(),
            min_version: manifest.min_version.clone(),
        });
    }
    if let Some(base) = &manifest.base_version {
        if base.cmp_precedence(current).is_ne() {
            return Decision::Refuse(Reason::WrongBase {
                running: current.clone(),
                base: base.clone(),
            });
        }
    }
    Decision::Update {
        from: current.clone(),
        to: offered.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Arch;
    use crate::bundle::manifest::tests::manifest;
    use crate::spec::RootfsType;
    use BoardId::{Arm64Uefi as Arm, X86_64Uefi as X86};

    fn release(version: &str, board: BoardId) -> Release {
        Release {
            name: "basalt-appliance".into(),
            version: version.parse().unwrap(),
            board,
            arch: Arch::Amd64,
            rootfs_type: RootfsType::Squashfs,
            build_time: 0,
        }
    }

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn another_image_is_refused() {
        let mut m = manifest("0.1.0", "0.0.0", &[BoardId::X86_64Uefi]);
        m.name = "other-appliance".into();
        let running = release("0.0.1", m.boards[0]);
        assert_eq!(
            check(&m, &running),
            Decision::Refuse(Reason::WrongImage {
                bundle: "other-appliance".into(),
                running: "basalt-appliance".into()
            })
        );
    }

    #[test]
    fn a_delta_needs_its_base_version() {
        let mut m = manifest("1.2.0", "0.0.0", &[X86]);
        m.base_version = Some(v("1.1.0"));
        assert_eq!(
            check(&m, &release("1.1.0", X86)),
            Decision::Update {
                from: v("1.1.0"),
                to: v("1.2.0")
            }
        );
        let refused = check(&m, &release("1.0.0", X86));
        let Decision::Refuse(reason) = refused else {
            panic!("{refused:?}")
        };
        assert!(reason.full_bundle_may_do());
        assert_eq!(
            reason.to_string(),
            "the bundle is a delta from 1.1.0, this device runs 1.0.0; install the full bundle"
        );
        // Other refusals come first: a delta is no way around a downgrade.
        assert!(matches!(
            check(&m, &release("1.3.0", X86)),
            Decision::Refuse(Reason::Downgrade { .. })
        ));
    }

    #[test]
    fn decisions() {
        // (bundle version, bundle floor, bundle boards, running version, running board, expected)
        let update = |from: &str, to: &str| Decision::Update {
            from: v(from),
            to: v(to),
        };
        let refuse = Decision::Refuse;
        type Case = (
            &'static str,
            &'static str,
            &'static [BoardId],
            &'static str,
            BoardId,
            Decision,
        );
        let cases: Vec<Case> = vec![
            (
                "1.2.0",
                "1.0.0",
                &[X86],
                "1.1.0",
                X86,
                update("1.1.0", "1.2.0"),
            ),
            (
                "1.2.0",
                "1.0.0",
                &[X86],
                "1.0.0",
                X86,
                update("1.0.0", "1.2.0"),
            ),
            (
                "1.2.0",
                "0.0.0",
                &[Arm, X86],
                "0.1.0",
                X86,
                update("0.1.0", "1.2.0"),
            ),
            (
                "1.2.0",
                "1.1.0",
                &[X86],
                "1.2.0-rc.1",
                X86,
                update("1.2.0-rc.1", "1.2.0"),
            ),
            (
                "2.0.0-rc.1",
                "1.0.0",
                &[X86],
                "1.9.9",
                X86,
                update("1.9.9", "2.0.0-rc.1"),
            ),
            (
                "1.2.0",
                "1.0.0",
                &[Arm],
                "1.1.0",
                X86,
                refuse(Reason::WrongBoard {
                    bundle_boards: vec![Arm],
                    running: X86,
                }),
            ),
            (
                "1.2.0",
                "1.0.0",
                &[X86],
                "1.2.0",
                X86,
                refuse(Reason::NotNewer {
                    running: v("1.2.0"),
                    offered: v("1.2.0"),
                }),
            ),
            (
                "1.2.0+build.2",
                "1.0.0",
                &[X86],
                "1.2.0+build.1",
                X86,
                refuse(Reason::NotNewer {
                    running: v("1.2.0+build.1"),
                    offered: v("1.2.0+build.2"),
                }),
            ),
            (
                "1.2.0",
                "1.0.0",
                &[X86],
                "1.3.0",
                X86,
                refuse(Reason::Downgrade {
                    running: v("1.3.0"),
                    offered: v("1.2.0"),
                }),
            ),
            (
                "1.2.0-rc.1",
                "1.0.0",
                &[X86],
                "1.2.0",
                X86,
                refuse(Reason::Downgrade {
                    running: v("1.2.0"),
                    offered: v("1.2.0-rc.1"),
                }),
            ),
            (
                "2.0.0",
                "1.5.0",
                &[X86],
                "1.4.9",
                X86,
                refuse(Reason::BelowFloor {
                    running: v("1.4.9"),
                    min_version: v("1.5.0"),
                }),
            ),
            (
                "1.2.0",
                "1.2.0",
                &[X86],
                "1.2.0-rc.1",
                X86,
                refuse(Reason::BelowFloor {
                    running: v("1.2.0-rc.1"),
                    min_version: v("1.2.0"),
                }),
            ),
            // The board is checked before the versions.
            (
                "0.1.0",
                "0.0.0",
                &[Arm],
                "9.0.0",
                X86,
                refuse(Reason::WrongBoard {
                    bundle_boards: vec![Arm],
                    running: X86,
                }),
            ),
        ];
        for (version, floor, boards, running, board, expected) in cases {
            let m = manifest(version, floor, boards);
            let got = check(&m, &release(running, board));
            assert_eq!(
                got, expected,
                "bundle {version} (floor {floor}, {boards:?}) on {running} {board}"
            );
        }
    }

    #[test]
    fn messages() {
        let m = manifest("2.0.0", "1.5.0", &[Arm, X86]);
        assert_eq!(
            check(&m, &release("1.4.0", X86)).to_string(),
            "refused: the bundle replaces 1.5.0 or newer, this device runs 1.4.0; install an intermediate release first"
        );
        let m = manifest("2.0.0", "1.5.0", &[Arm]);
        assert_eq!(
            check(&m, &release("1.6.0", X86)).to_string(),
            "refused: the bundle is for arm64-uefi, this device is x86_64-uefi"
        );
        assert_eq!(
            check(&manifest("2.0.0", "1.5.0", &[X86]), &release("1.6.0", X86)).to_string(),
            "update from 1.6.0 to 2.0.0"
        );
        let json = serde_json::to_value(check(&m, &release("1.6.0", X86))).unwrap();
        assert_eq!(json["reason"], "wrong-board", "{json}");
    }
}
