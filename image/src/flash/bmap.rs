//! Block maps (`.bmap`) as bmaptool writes them: which blocks of an image
//! hold data, and the SHA-256 of each range of them.
//!
//! Format versions 1.x and 2.x are read. Range checksums are checked when
//! the map says `<ChecksumType> sha256` (what bmaptool 3 writes); maps
//! without checksums (1.0, 1.1) are read as plain maps; SHA-1 and MD5 maps
//! are refused rather than half-checked. `<BmapFileChecksum>`, the map's
//! checksum of itself, is checked when present.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A parsed, checked block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMap {
    /// The `version` attribute, such as `2.0`.
    pub version: String,
    /// Size of the (uncompressed) image in bytes.
    pub image_size: u64,
    pub block_size: u64,
    /// In image order, never overlapping, clipped to `image_size`.
    pub ranges: Vec<MappedRange>,
}

/// Bytes `start..start + len` of an image, which hold data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedRange {
    pub start: u64,
    pub len: u64,
    /// What the bytes must hash to, when the map says.
    pub sha256: Option<[u8; 32]>,
}

impl MappedRange {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

#[derive(Debug, thiserror::Error)]
#[error("block map {path}: {reason}")]
pub struct BmapError {
    pub path: PathBuf,
    pub reason: String,
}

impl BlockMap {
    /// Bytes the ranges cover.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }

    /// Parses `text`, read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<BlockMap, BmapError> {
        let err = |reason: String| BmapError {
            path: path.to_path_buf(),
            reason,
        };
        let doc = roxmltree::Document::parse(text).map_err(|e| err(format!("not XML: {e}")))?;
        let root = doc.root_element();
        if root.tag_name().name() != "bmap" {
            return Err(err(format!(
                "the root element is <{}>, not <bmap>",
                root.tag_name().name()
            )));
        }
        let version = root
            .attribute("version")
            .ok_or_else(|| err("<bmap> has no version attribute".into()))?
            .to_string();
        let major = version.split('.').next().unwrap_or("");
        if !matches!(major, "1" | "2") {
            return Err(err(format!(
                "format version {version} is not supported (1.x and 2.x are)"
            )));
        }
        let child = |name: &str| {
            root.children()
                .find(|n| n.is_element() && n.tag_name().name() == name)
        };
        let text_of = |name: &str| child(name).map(|n| n.text().unwrap_or("").trim().to_string());
        let number = |name: &str| -> Result<u64, BmapError> {
            let t = text_of(name).ok_or_else(|| err(format!("<{name}> is missing")))?;
            t.parse::<u64>()
                .map_err(|_| err(format!("<{name}> {t:?} is not a number")))
        };
        let image_size = number("ImageSize")?;
        let block_size = number("BlockSize")?;
        if block_size == 0 || block_size % 512 != 0 {
            return Err(err(format!(
                "<BlockSize> {block_size} is not a multiple of 512"
            )));
        }
        let blocks_count = number("BlocksCount")?;
        if blocks_count != image_size.div_ceil(block_size) {
            return Err(err(format!(
                "<BlocksCount> {blocks_count} does not fit <ImageSize> {image_size} in blocks of {block_size}"
            )));
        }
        let mapped_count = number("MappedBlocksCount")?;

        let checksum_type = text_of("ChecksumType").map(|t| t.to_ascii_lowercase());
        match checksum_type.as_deref() {
            None | Some("sha256") => {}
            Some(other) => {
                return Err(err(format!(
                    "<ChecksumType> {other} is not supported: only sha256 maps are checked (bmaptool create writes them)"
                )))
            }
        }
        if child("BmapFileSHA1").is_some() {
            return Err(err(
                "it is a SHA-1 map (<BmapFileSHA1>): only sha256 maps are checked; make a new one with bmaptool create".into(),
            ));
        }
        if let Some(sum) = text_of("BmapFileChecksum") {
            // bmaptool hashes the file with the checksum's own digits set to '0'.
            let zeroed = text.replacen(&sum, &"0".repeat(sum.len()), 1);
            let actual = hex::encode(Sha256::digest(zeroed.as_bytes()));
            if !actual.eq_ignore_ascii_case(&sum) {
                return Err(err(format!(
                    "its <BmapFileChecksum> {sum} does not match its content ({actual}): the map was edited or damaged"
                )));
            }
        }

        let map = child("BlockMap").ok_or_else(|| err("<BlockMap> is missing".into()))?;
        let mut ranges: Vec<MappedRange> = Vec::new();
        let mut blocks = 0u64;
        for (i, node) in map
            .children()
            .filter(|n| n.is_element() && n.tag_name().name() == "Range")
            .enumerate()
        {
            let n = i + 1;
            if node.attribute("sha1").is_some() {
                return Err(err(format!(
                    "<Range> {n} has a SHA-1 checksum: only sha256 maps are checked"
                )));
            }
            let spec = node.text().unwrap_or("").trim();
            let parse = |s: &str| {
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| err(format!("<Range> {n} {spec:?} is not a block or first-last")))
            };
            let (first, last) = match spec.split_once('-') {
                Some((a, b)) => (parse(a)?, parse(b)?),
                None => {
                    let a = parse(spec)?;
                    (a, a)
                }
            };
            if last < first || last >= blocks_count {
                return Err(err(format!(
                    "<Range> {n} {spec:?} is outside the image's {blocks_count} blocks"
                )));
            }
            let start = first * block_size;
            if let Some(prev) = ranges.last() {
                if start < prev.end() {
                    return Err(err(format!(
                        "<Range> {n} {spec:?} overlaps or comes before the range above it"
                    )));
                }
            }
            let sha256 = match node.attribute("chksum") {
                None => None,
                Some(h) => {
                    let mut out = [0u8; 32];
                    hex::decode_to_slice(h.trim(), &mut out).map_err(|_| {
                        err(format!(
                            "<Range> {n} chksum {h:?} is not a SHA-256 (64 hex digits)"
                        ))
                    })?;
                    Some(out)
                }
            };
            if checksum_type.is_none() && sha256.is_some() {
                return Err(err(format!(
                    "<Range> {n} has a chksum but the map names no <ChecksumType>"
                )));
            }
            let end = ((last + 1) * block_size).min(image_size);
            blocks += last + 1 - first;
            ranges.push(MappedRange {
                start,
                len: end - start,
                sha256,
            });
        }
        if blocks != mapped_count {
            return Err(err(format!(
                "<MappedBlocksCount> is {mapped_count} but the ranges hold {blocks} blocks"
            )));
        }
        Ok(BlockMap {
            version,
            image_size,
            block_size,
            ranges,
        })
    }
}

/// Writes a version 2.0 block map of `ranges` (for tests and fixtures;
/// what bmaptool would write, comments left out).
pub fn render(image_size: u64, block_size: u64, ranges: &[(u64, u64, [u8; 32])]) -> String {
    let blocks = image_size.div_ceil(block_size);
    let mapped: u64 = ranges.iter().map(|(a, b, _)| b - a + 1).sum();
    let mut body = String::new();
    for (first, last, sum) in ranges {
        let spec = if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        };
        body.push_str(&format!(
            "        <Range chksum=\"{}\"> {spec} </Range>\n",
            hex::encode(sum)
        ));
    }
    let zero = "0".repeat(64);
    let text = format!(
        "<?xml version=\"1.0\" ?>\n<bmap version=\"2.0\">\n    <ImageSize> {image_size} </ImageSize>\n    <BlockSize> {block_size} </BlockSize>\n    <BlocksCount> {blocks} </BlocksCount>\n    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n    <ChecksumType> sha256 </ChecksumType>\n    <BmapFileChecksum> {zero} </BmapFileChecksum>\n    <BlockMap>\n{body}    </BlockMap>\n</bmap>\n"
    );
    let sum = hex::encode(Sha256::digest(text.as_bytes()));
    text.replacen(&zero, &sum, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by `bmaptool create` 3.6 for an 8 MiB file with data in blocks 1 and 1280.
    const BMAPTOOL: &str = r#"<?xml version="1.0" ?>
<!-- This file contains the block map for an image file -->
<bmap version="2.0">
    <!-- Image size in bytes: 8.0 MiB -->
    <ImageSize> 8388608 </ImageSize>

    <!-- Size of a block in bytes -->
    <BlockSize> 4096 </BlockSize>

    <!-- Count of blocks in the image file -->
    <BlocksCount> 2048 </BlocksCount>

    <!-- Count of mapped blocks: 8.0 KiB or 0.1%     -->
    <MappedBlocksCount> 2    </MappedBlocksCount>

    <!-- Type of checksum used in this file -->
    <ChecksumType> sha256 </ChecksumType>

    <!-- The checksum of this bmap file. When it is calculated, the value of
         the checksum has be zero (all ASCII "0" symbols).  -->
    <BmapFileChecksum> 0000000000000000000000000000000000000000000000000000000000000000 </BmapFileChecksum>

    <!-- The block map which consists of elements which may either be a
         range of blocks or a single block. The 'chksum' attribute
         (if present) is the checksum of this blocks range. -->
    <BlockMap>
        <Range chksum="b15056c9a8db77ab5708d19b7f330fe13d88eeae3d0ab271081d3438c0f46264"> 1 </Range>
        <Range chksum="71e5143d1d4bc35a17dd90dab781bfaf505c613b2bb50fbeaeae51e51dacf810"> 1280 </Range>
    </BlockMap>
</bmap>
"#;

    fn with_file_checksum(text: &str) -> String {
        let zero = "0".repeat(64);
        let sum = hex::encode(Sha256::digest(text.as_bytes()));
        text.replacen(&zero, &sum, 1)
    }

    fn parse(text: &str) -> Result<BlockMap, BmapError> {
        BlockMap::parse(Path::new("x.bmap"), text)
    }

    #[test]
    fn reads_what_bmaptool_writes() {
        let map = parse(&with_file_checksum(BMAPTOOL)).unwrap();
        assert_eq!(map.version, "2.0");
        assert_eq!(map.image_size, 8 << 20);
        assert_eq!(map.block_size, 4096);
        assert_eq!(map.ranges.len(), 2);
        assert_eq!(map.ranges[0].start, 4096);
        assert_eq!(map.ranges[0].len, 4096);
        assert_eq!(map.ranges[1].start, 1280 * 4096);
        assert_eq!(
            hex::encode(map.ranges[0].sha256.unwrap()),
            "b15056c9a8db77ab5708d19b7f330fe13d88eeae3d0ab271081d3438c0f46264"
        );
        assert_eq!(map.mapped_bytes(), 8192);
    }

    #[test]
    fn render_round_trips() {
        let text = render(10_000, 4096, &[(0, 1, [7; 32]), (2, 2, [9; 32])]);
        let map = parse(&text).unwrap();
        assert_eq!(map.ranges[0].len, 8192);
        // The last block is cut at the image's end.
        assert_eq!(map.ranges[1].start, 8192);
        assert_eq!(map.ranges[1].len, 10_000 - 8192);
        assert_eq!(map.ranges[1].sha256, Some([9; 32]));
    }

    #[test]
    fn version_1_without_checksums_is_a_plain_map() {
        let text = "<bmap version=\"1.1\"><ImageSize>8192</ImageSize><BlockSize>4096</BlockSize>\
            <BlocksCount>2</BlocksCount><MappedBlocksCount>2</MappedBlocksCount>\
            <BlockMap><Range>0-1</Range></BlockMap></bmap>";
        let map = parse(text).unwrap();
        assert_eq!(map.ranges.len(), 1);
        assert_eq!(map.ranges[0].sha256, None);
    }

    #[test]
    fn bad_maps_are_refused_with_the_reason() {
        let good = with_file_checksum(BMAPTOOL);
        let cases: Vec<(String, &str)> = vec![
            (
                good.replace("> 1280 <", "> 1281 <"),
                "does not match its content",
            ),
            (
                with_file_checksum(
                    &BMAPTOOL.replace("sha256 </ChecksumType>", "md5 </ChecksumType>"),
                ),
                "md5 is not supported",
            ),
            (
                with_file_checksum(&BMAPTOOL.replace("version=\"2.0\"", "version=\"3.0\"")),
                "format version 3.0 is not supported",
            ),
            (
                with_file_checksum(&BMAPTOOL.replace("> 1280 <", "> 0 <")),
                "overlaps or comes before",
            ),
            (
                with_file_checksum(&BMAPTOOL.replace("> 1280 <", "> 4096 <")),
                "outside the image's 2048 blocks",
            ),
            (
                with_file_checksum(&BMAPTOOL.replace("> 2    <", "> 3 <")),
                "ranges hold 2 blocks",
            ),
            (
                with_file_checksum(&BMAPTOOL.replace("> 4096 <", "> 4097 <")),
                "not a multiple of 512",
            ),
            ("<bmap version=\"2.0\"".to_string(), "not XML"),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with("block map x.bmap: "), "{e}");
            assert!(e.contains(want), "{want:?} not in {e}");
        }
    }
}
