//! `basalt channel`: the update channel's documents for a bundle, so that no
//! one writes them by hand.
//!
//! For each board in the bundle's manifest, `<DIR>/<board>.json` is written
//! ([`basalt_formats::channel`]): the manifest's version, the bundle's size,
//! the bundle named relative to the document (or the URL given), and the
//! rollout share and recalled versions asked for. Signatures are not
//! checked here (devices check them before writing a byte); the manifest is
//! only read. Each document is replaced in one step (a temporary file renamed
//! over it), so a device never reads half of one, and each is read back
//! through [`Channel::parse`], the device's own reader, before it is written.

use basalt_formats::bundle::stream::{BundleError, BundleReader};
use basalt_formats::bundle::Manifest;
use basalt_formats::channel::rollout::Percent;
use basalt_formats::channel::{Channel, ChannelFile, DeltaFile, RolloutFile, CHANNEL_FORMAT};
use basalt_formats::BoardId;
use serde::Serialize;
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// What went wrong, naming the file or the option. The cause is part of
/// the message and not a separate source, so `{:#}` says it once.
#[derive(Debug, thiserror::Error)]
pub enum ChannelCmdError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: {error}")]
    Bundle { path: PathBuf, error: BundleError },
    #[error("--recall {version}: that is the bundle's own version; a channel cannot offer a version and recall it")]
    RecallsItself { version: semver::Version },
    #[error("--delta {path}: {reason}")]
    Delta { path: PathBuf, reason: String },
    #[error("--bundle-url: {reason}")]
    BundleUrl { reason: String },
    #[error("{path}: the bundle cannot be named relative to {dir}: {reason}; give --bundle-url")]
    Relative {
        path: PathBuf,
        dir: PathBuf,
        reason: String,
    },
    /// The document would not be read by a device. The options are checked
    /// one by one before, so this names what slipped through them.
    #[error("{path}: {reason}")]
    Check { path: PathBuf, reason: String },
}

type Result<T> = std::result::Result<T, ChannelCmdError>;

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ChannelCmdError + '_ {
    move |error| ChannelCmdError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// What `basalt channel` is asked to do.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    /// The bundle the channel offers.
    pub bundle: PathBuf,
    /// The channel's directory (made if missing).
    pub out: PathBuf,
    /// The share of devices that take the version now; `None` writes no
    /// `rollout` (every device).
    pub percent: Option<Percent>,
    /// Versions to recall.
    pub recall: Vec<semver::Version>,
    /// Delta bundles of the same version (`basalt bundle --delta-from`),
    /// named relative to `out` in the documents.
    pub deltas: Vec<PathBuf>,
    /// The bundle's URL as written in the documents (absolute, or relative
    /// to them); by default its path relative to `out`.
    pub bundle_url: Option<String>,
}

/// One document written.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub path: PathBuf,
    pub document: ChannelFile,
    /// The version of the document this one replaced.
    pub replaced: Option<semver::Version>,
    /// Versions the replaced document recalled that this one does not.
    pub dropped_recalls: Vec<String>,
}

/// What `basalt channel` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelOutcome {
    pub bundle: PathBuf,
    pub documents: Vec<Written>,
}

/// A base URL for checking documents as a device would: the reference
/// resolves against it, and it is cut out of error messages.
fn check_base(board: BoardId) -> String {
    format!("https://channel.invalid/{board}.json")
}

/// Writes the channel's documents for `opts.bundle`. See the module docs.
pub fn channel(opts: &ChannelOptions) -> Result<ChannelOutcome> {
    let (manifest, size) = read_manifest(&opts.bundle)?;
    if manifest.is_delta() {
        return Err(ChannelCmdError::Delta {
            path: opts.bundle.clone(),
            reason: "is a delta bundle; give the full bundle, and the delta with --delta".into(),
        });
    }

    let mut recalled: Vec<semver::Version> = Vec::new();
    for v in &opts.recall {
        if v.cmp_precedence(&manifest.version).is_eq() {
            return Err(ChannelCmdError::RecallsItself { version: v.clone() });
        }
        if !recalled.iter().any(|r| r.cmp_precedence(v).is_eq()) {
            recalled.push(v.clone());
        }
    }

    std::fs::create_dir_all(&opts.out).map_err(io_at(&opts.out))?;
    let reference = match &opts.bundle_url {
        Some(url) => {
            basalt_formats::channel::resolve(&check_base(manifest.boards[0]), url)
                .map_err(|reason| ChannelCmdError::BundleUrl { reason })?;
            url.clone()
        }
        None => relative_reference(&opts.out, &opts.bundle)?,
    };

    let mut deltas: Vec<(Vec<BoardId>, DeltaFile)> = Vec::new();
    for path in &opts.deltas {
        let (m, size) = read_manifest(path)?;
        let refuse = |reason: String| ChannelCmdError::Delta {
            path: path.clone(),
            reason,
        };
        let Some(from) = m.base_version.clone() else {
            return Err(refuse(
                "is a full bundle, not a delta (made without --delta-from)".into(),
            ));
        };
        if m.name != manifest.name || m.version.cmp_precedence(&manifest.version).is_ne() {
            return Err(refuse(format!(
                "is a delta to {} {}, but the channel offers {} {}",
                m.name, m.version, manifest.name, manifest.version
            )));
        }
        if deltas
            .iter()
            .any(|(_, d)| d.from.cmp_precedence(&from).is_eq())
        {
            return Err(refuse(format!("another --delta is also from {from}")));
        }
        deltas.push((
            m.boards.clone(),
            DeltaFile {
                from,
                bundle: relative_reference(&opts.out, path)?,
                size: Some(size),
            },
        ));
    }

    let mut documents = Vec::new();
    for &board in &manifest.boards {
        let path = opts.out.join(format!("{board}.json"));
        let document = ChannelFile {
            format: CHANNEL_FORMAT,
            board,
            version: manifest.version.clone(),
            bundle: reference.clone(),
            size: Some(size),
            rollout: opts.percent.map(|p| RolloutFile {
                percent: p.to_json(),
            }),
            recalled: recalled.iter().map(|v| v.to_string()).collect(),
            deltas: deltas
                .iter()
                .filter(|(boards, _)| boards.contains(&board))
                .map(|(_, d)| d.clone())
                .collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&document).expect("serialises");
        bytes.push(b'\n');
        let base = check_base(board);
        Channel::parse(&base, &bytes).map_err(|e| ChannelCmdError::Check {
            path: path.clone(),
            reason: e
                .to_string()
                .trim_start_matches(&format!("{base}: "))
                .to_string(),
        })?;
        let (replaced, dropped_recalls) = match previous(&path) {
            Some(old) => {
                let dropped = old
                    .recalled
                    .iter()
                    .filter(|r| {
                        r.parse::<semver::Version>().map_or(true, |r| {
                            !recalled.iter().any(|n| n.cmp_precedence(&r).is_eq())
                                && !r.cmp_precedence(&manifest.version).is_eq()
                        })
                    })
                    .cloned()
                    .collect();
                (Some(old.version), dropped)
            }
            None => (None, Vec::new()),
        };
        write_replacing(&path, &bytes)?;
        documents.push(Written {
            path,
            document,
            replaced,
            dropped_recalls,
        });
    }
    Ok(ChannelOutcome {
        bundle: opts.bundle.clone(),
        documents,
    })
}

/// A bundle's manifest (signatures not checked) and the bundle's size.
fn read_manifest(path: &Path) -> Result<(Manifest, u64)> {
    let file = File::open(path).map_err(io_at(path))?;
    let size = file.metadata().map_err(io_at(path))?.len();
    let manifest = BundleReader::new(BufReader::new(file))
        .and_then(|r| r.without_verification())
        .map_err(|error| ChannelCmdError::Bundle {
            path: path.to_path_buf(),
            error,
        })?
        .manifest()
        .clone();
    Ok((manifest, size))
}

/// The document already at `path`, when there is one that reads.
fn previous(path: &Path) -> Option<ChannelFile> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Writes `path` through a temporary file in its directory renamed over it.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".basalt-channel-")
        .tempfile_in(dir)
        .map_err(io_at(dir))?;
    tmp.write_all(bytes).map_err(io_at(path))?;
    let file = tmp.as_file();
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| file.sync_all())
        .map_err(io_at(path))?;
    tmp.persist(path).map_err(|e| io_at(path)(e.error))?;
    Ok(())
}

/// `bundle`'s path relative to the directory `dir`, as a URL path: `x.basalt`,
/// `../bundles/x.basalt`. Bytes other than letters, digits and `-._~+` are
/// percent-encoded.
pub fn relative_reference(dir: &Path, bundle: &Path) -> Result<String> {
    let relative_err = |reason: String| ChannelCmdError::Relative {
        path: bundle.to_path_buf(),
        dir: dir.to_path_buf(),
        reason,
    };
    let dir_abs = dir.canonicalize().map_err(io_at(dir))?;
    let bundle_abs = bundle.canonicalize().map_err(io_at(bundle))?;
    let parts = |p: &Path| -> Vec<Vec<u8>> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.as_bytes().to_vec()),
                _ => None,
            })
            .collect()
    };
    let (d, b) = (parts(&dir_abs), parts(&bundle_abs));
    let common = d.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == b.len() {
        return Err(relative_err("it is a directory above it".into()));
    }
    let mut segments: Vec<String> = vec!["..".to_string(); d.len() - common];
    segments.extend(b[common..].iter().map(|s| percent_encode(s)));
    Ok(segments.join("/"))
}

fn percent_encode(segment: &[u8]) -> String {
    let mut out = String::new();
    for &c in segment {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+') {
            out.push(c as char);
        } else {
            out += &format!("%{c:02X}");
        }
    }
    out
}

impl ChannelOutcome {
    /// One line per document, then a note for each recall the replaced
    /// document had that the new one drops.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for w in &self.documents {
            let d = &w.document;
            let share = match &d.rollout {
                Some(r) => format!("{} % of devices", r.percent),
                None => "every device".into(),
            };
            out += &format!(
                "{}: {} for {share}, bundle {}{}{}\n",
                w.path.display(),
                d.version,
                d.bundle,
                d.size.map(|s| format!(" ({s} bytes)")).unwrap_or_default(),
                if d.recalled.is_empty() {
                    String::new()
                } else {
                    format!(", recalls {}", d.recalled.join(", "))
                }
            );
            for delta in &d.deltas {
                out += &format!(
                    "  delta for devices running {}: {}{}\n",
                    delta.from,
                    delta.bundle,
                    delta
                        .size
                        .map(|s| format!(" ({s} bytes)"))
                        .unwrap_or_default()
                );
            }
            for r in &w.dropped_recalls {
                out += &format!(
                    "note: {} recalled {r} before; it no longer does (add --recall {r} to keep it)\n",
                    w.path.display()
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_formats::bundle::stream::BundleWriter;
    use basalt_formats::bundle::{
        Manifest, Payload, PayloadName, SecretKey, SignatureEntry, Signatures, MANIFEST_FORMAT,
    };
    use basalt_formats::spec::RootfsType;

    /// A small signed bundle of `version` for `boards`.
    fn write_bundle(path: &Path, version: &str, boards: &[BoardId]) {
        write_bundle_from(path, version, boards, None)
    }

    /// [`write_bundle`], as a delta from `base` when given (the payloads
    /// are not real deltas: only the manifest is read here).
    fn write_bundle_from(path: &Path, version: &str, boards: &[BoardId], base: Option<&str>) {
        let parts: Vec<(PayloadName, Vec<u8>)> = PayloadName::UEFI
            .iter()
            .map(|n| (*n, format!("{n} of {version}").into_bytes()))
            .collect();
        let compressed: Vec<Vec<u8>> = parts
            .iter()
            .map(|(_, b)| zstd::encode_all(&b[..], 1).unwrap())
            .collect();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: "demo".into(),
            version: version.parse().unwrap(),
            boards: boards.to_vec(),
            min_version: semver::Version::new(0, 0, 0),
            created: 1,
            rootfs_type: RootfsType::Squashfs,
            payloads: parts
                .iter()
                .zip(&compressed)
                .map(|((name, raw), c)| Payload {
                    base: base.map(|_| basalt_formats::bundle::PayloadBase {
                        size: 1,
                        sha256: basalt_formats::bundle::Sha256Digest::of(b"x"),
                    }),
                    ..Payload::zstd(*name, raw, c)
                })
                .collect(),
            base_version: base.map(|b| b.parse().unwrap()),
        };
        let bytes = manifest.to_bytes();
        let sigs = Signatures(vec![SignatureEntry::sign(
            &SecretKey::from_seed(&[5; 32]),
            &bytes,
        )]);
        let mut w = BundleWriter::new(Vec::new(), &bytes, &sigs).unwrap();
        for ((name, _), c) in parts.iter().zip(compressed) {
            w.payload(*name, &c[..]).unwrap();
        }
        std::fs::write(path, w.finish().unwrap()).unwrap();
    }

    fn opts(bundle: &Path, out: &Path) -> ChannelOptions {
        ChannelOptions {
            bundle: bundle.to_path_buf(),
            out: out.to_path_buf(),
            percent: None,
            recall: Vec::new(),
            bundle_url: None,
            deltas: Vec::new(),
        }
    }

    #[test]
    fn deltas_are_listed_for_their_boards() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        write_bundle(
            &p("full.basalt"),
            "0.4.0",
            &[BoardId::X86_64Uefi, BoardId::Arm64Uefi],
        );
        write_bundle_from(
            &p("d1.basalt"),
            "0.4.0",
            &[BoardId::X86_64Uefi],
            Some("0.3.0"),
        );
        write_bundle_from(
            &p("d2.basalt"),
            "0.4.0",
            &[BoardId::X86_64Uefi, BoardId::Arm64Uefi],
            Some("0.3.1"),
        );
        let out = p("www");
        let done = channel(&ChannelOptions {
            deltas: vec![p("d1.basalt"), p("d2.basalt")],
            ..opts(&p("full.basalt"), &out)
        })
        .unwrap();
        let x86 = Channel::parse(
            "https://u.example/c/x86_64-uefi.json",
            &std::fs::read(out.join("x86_64-uefi.json")).unwrap(),
        )
        .unwrap();
        let d = x86.delta_for(&"0.3.0".parse().unwrap()).unwrap();
        assert_eq!(d.bundle.as_str(), "https://u.example/d1.basalt");
        assert_eq!(
            d.size,
            Some(std::fs::metadata(p("d1.basalt")).unwrap().len())
        );
        assert!(x86.delta_for(&"0.3.1".parse().unwrap()).is_some());
        let arm = &done.documents[1].document;
        assert_eq!(arm.board, BoardId::Arm64Uefi);
        assert_eq!(arm.deltas.len(), 1, "{arm:?}");
        assert!(
            done.render()
                .contains("delta for devices running 0.3.0: ../d1.basalt ("),
            "{}",
            done.render()
        );

        let refused = |deltas: &[&str], bundle: &str| {
            channel(&ChannelOptions {
                deltas: deltas.iter().map(|d| p(d)).collect(),
                ..opts(&p(bundle), &out)
            })
            .unwrap_err()
            .to_string()
        };
        write_bundle_from(
            &p("d3.basalt"),
            "0.5.0",
            &[BoardId::X86_64Uefi],
            Some("0.4.0"),
        );
        let e = refused(&["d3.basalt"], "full.basalt");
        assert!(
            e.contains("is a delta to demo 0.5.0, but the channel offers demo 0.4.0"),
            "{e}"
        );
        let e = refused(&["full.basalt"], "full.basalt");
        assert!(e.contains("is a full bundle, not a delta"), "{e}");
        let e = refused(&["d1.basalt", "d1.basalt"], "full.basalt");
        assert!(e.contains("another --delta is also from 0.3.0"), "{e}");
        let e = refused(&[], "d1.basalt");
        assert!(e.contains("is a delta bundle; give the full bundle"), "{e}");
    }

    #[test]
    fn a_document_per_board_that_devices_read_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bundles")).unwrap();
        let bundle = dir.path().join("bundles/demo-0.4.0.basalt");
        write_bundle(&bundle, "0.4.0", &[BoardId::X86_64Uefi, BoardId::Arm64Uefi]);
        let out = dir.path().join("www/stable");
        let done = channel(&ChannelOptions {
            percent: Some("12.5".parse().unwrap()),
            recall: vec!["0.3.0".parse().unwrap(), "0.3.0+b2".parse().unwrap()],
            ..opts(&bundle, &out)
        })
        .unwrap();
        assert_eq!(done.documents.len(), 2);
        let size = std::fs::metadata(&bundle).unwrap().len();
        for (board, w) in [BoardId::X86_64Uefi, BoardId::Arm64Uefi]
            .into_iter()
            .zip(&done.documents)
        {
            assert_eq!(w.path, out.join(format!("{board}.json")));
            let url = format!("https://updates.example/stable/{board}.json");
            let c = Channel::parse(&url, &std::fs::read(&w.path).unwrap()).unwrap();
            assert_eq!(c.board, board);
            assert_eq!(c.version, semver::Version::new(0, 4, 0));
            assert_eq!(c.size, Some(size));
            assert_eq!(c.rollout.hundredths(), 1250);
            // The same version twice (build metadata aside) is recalled once.
            assert_eq!(c.recalled, vec![semver::Version::new(0, 3, 0)]);
            assert_eq!(
                c.bundle.as_str(),
                "https://updates.example/bundles/demo-0.4.0.basalt"
            );
            assert_eq!(w.document.bundle, "../../bundles/demo-0.4.0.basalt");
            assert_eq!(w.replaced, None);
        }
        let text = std::fs::read_to_string(&done.documents[0].path).unwrap();
        assert!(text.contains(r#""percent": 12.5"#), "{text}");
        assert!(text.ends_with("}\n"), "{text}");
        let mode = std::fs::metadata(&done.documents[0].path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        let shown = done.render();
        assert!(
            shown.contains("x86_64-uefi.json: 0.4.0 for 12.5 % of devices, bundle ../../bundles/demo-0.4.0.basalt"),
            "{shown}"
        );
        assert!(shown.contains(", recalls 0.3.0\n"), "{shown}");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
    }

    #[test]
    fn without_options_every_device_takes_it_and_the_keys_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("my bundle#1.basalt");
        write_bundle(&bundle, "1.0.0", &[BoardId::X86_64Uefi]);
        let done = channel(&opts(&bundle, dir.path())).unwrap();
        let text = std::fs::read_to_string(&done.documents[0].path).unwrap();
        assert!(
            !text.contains("rollout") && !text.contains("recalled"),
            "{text}"
        );
        assert_eq!(done.documents[0].document.bundle, "my%20bundle%231.basalt");
        let c = Channel::parse("http://10.0.0.1/c/x86_64-uefi.json", text.as_bytes()).unwrap();
        assert_eq!(c.rollout, Percent::ALL);
        assert_eq!(
            c.bundle.as_str(),
            "http://10.0.0.1/c/my%20bundle%231.basalt"
        );
        assert!(done.render().contains("1.0.0 for every device"));
    }

    #[test]
    fn a_bundle_url_is_written_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("b.basalt");
        write_bundle(&bundle, "1.0.0", &[BoardId::X86_64Uefi]);
        let out = dir.path().join("c");
        let done = channel(&ChannelOptions {
            bundle_url: Some("https://cdn.example/b.basalt".into()),
            ..opts(&bundle, &out)
        })
        .unwrap();
        assert_eq!(
            done.documents[0].document.bundle,
            "https://cdn.example/b.basalt"
        );
        let e = channel(&ChannelOptions {
            bundle_url: Some("ftp://cdn.example/b.basalt".into()),
            ..opts(&bundle, &out)
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "--bundle-url: \"ftp://cdn.example/b.basalt\" is not an http:// or https:// URL or a relative path"
        );
    }

    #[test]
    fn replacing_a_document_tells_which_recalls_it_drops() {
        let dir = tempfile::tempdir().unwrap();
        let b1 = dir.path().join("a-1.0.1.basalt");
        let b2 = dir.path().join("a-1.0.2.basalt");
        write_bundle(&b1, "1.0.1", &[BoardId::X86_64Uefi]);
        write_bundle(&b2, "1.0.2", &[BoardId::X86_64Uefi]);
        channel(&ChannelOptions {
            recall: vec!["1.0.0".parse().unwrap(), "0.9.0".parse().unwrap()],
            ..opts(&b1, dir.path())
        })
        .unwrap();
        let done = channel(&ChannelOptions {
            recall: vec!["0.9.0".parse().unwrap()],
            ..opts(&b2, dir.path())
        })
        .unwrap();
        let w = &done.documents[0];
        assert_eq!(w.replaced, Some(semver::Version::new(1, 0, 1)));
        assert_eq!(w.dropped_recalls, vec!["1.0.0".to_string()]);
        assert!(
            done.render().contains(&format!(
                "note: {} recalled 1.0.0 before; it no longer does (add --recall 1.0.0 to keep it)",
                w.path.display()
            )),
            "{}",
            done.render()
        );
    }

    #[test]
    fn errors_name_the_option_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("b.basalt");
        write_bundle(&bundle, "2.0.0", &[BoardId::X86_64Uefi]);
        let e = channel(&ChannelOptions {
            recall: vec!["2.0.0+rebuild".parse().unwrap()],
            ..opts(&bundle, dir.path())
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "--recall 2.0.0+rebuild: that is the bundle's own version; a channel cannot offer a version and recall it"
        );
        let not_a_bundle = dir.path().join("notes.txt");
        std::fs::write(&not_a_bundle, "hello").unwrap();
        let e = channel(&opts(&not_a_bundle, dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&not_a_bundle.display().to_string()), "{e}");
        let e = channel(&opts(&dir.path().join("gone.basalt"), dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gone.basalt: No such file"), "{e}");
        // Nothing was written by the failed runs.
        assert!(!dir.path().join("x86_64-uefi.json").exists());
    }

    #[test]
    fn relative_references() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["c/stable", "c/bundles", "x"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["c/stable/a.basalt", "c/bundles/b.basalt", "x/é.basalt"] {
            std::fs::write(root.join(f), "").unwrap();
        }
        let r = |d: &str, f: &str| relative_reference(&root.join(d), &root.join(f));
        assert_eq!(r("c/stable", "c/stable/a.basalt").unwrap(), "a.basalt");
        assert_eq!(r("c", "c/stable/a.basalt").unwrap(), "stable/a.basalt");
        assert_eq!(
            r("c/stable", "c/bundles/b.basalt").unwrap(),
            "../bundles/b.basalt"
        );
        assert_eq!(
            r("c/stable", "x/é.basalt").unwrap(),
            "../../x/%C3%A9.basalt"
        );
        let e = r("c/stable", "c").unwrap_err().to_string();
        assert!(e.contains("it is a directory above it"), "{e}");
    }
}
