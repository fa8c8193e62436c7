//! What the `basalt` binary carries with it: the board files of `hardware/`,
//! the default appliance spec and the overlays of `overlays/`, so that an
//! installed `basalt` needs no source tree.

use basalt_formats::board::{Board, BoardError};
use basalt_formats::BoardId;
use include_dir::{include_dir, Dir};

/// The overlays shipped with basalt, by name (`overlays/<name>`).
pub static OVERLAYS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../overlays");

/// The spec `basalt build` uses when given none.
pub const DEFAULT_SPEC: &str = include_str!("../specs/appliance.yaml");
pub const DEFAULT_SPEC_NAME: &str = "<built-in appliance spec>";

/// (file name, contents) of every board file.
pub const BOARD_FILES: &[(&str, &str)] = &[
    (
        "x86_64-uefi.yaml",
        include_str!("../../hardware/x86_64-uefi.yaml"),
    ),
    (
        "arm64-uefi.yaml",
        include_str!("../../hardware/arm64-uefi.yaml"),
    ),
    ("rpi4.yaml", include_str!("../../hardware/rpi4.yaml")),
    ("rpi5.yaml", include_str!("../../hardware/rpi5.yaml")),
];

/// The board file for `id`.
pub fn board(id: BoardId) -> Result<Board, BoardError> {
    let file = format!("{id}.yaml");
    let (_, text) = BOARD_FILES
        .iter()
        .find(|(name, _)| *name == file)
        .unwrap_or_else(|| panic!("no board file compiled in for {id}"));
    Board::parse(&format!("hardware/{file}"), text, Some(id.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_board_loads_and_every_board_file_is_compiled_in() {
        for id in BoardId::ALL {
            let b = board(id).unwrap();
            assert_eq!(b.id, id);
        }
        let on_disk: Vec<String> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../hardware"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".yaml"))
                .collect();
        for name in on_disk {
            assert!(
                BOARD_FILES.iter().any(|(n, _)| *n == name),
                "hardware/{name} is not compiled in"
            );
        }
    }

    #[test]
    fn default_spec_is_valid_and_its_overlays_exist() {
        let spec = basalt_formats::ImageSpec::parse(DEFAULT_SPEC_NAME, DEFAULT_SPEC).unwrap();
        for o in &spec.overlays {
            if let basalt_formats::spec::OverlayRef::Builtin(name) = o {
                assert!(OVERLAYS.get_dir(name).is_some(), "overlay {name}");
            }
        }
    }
}
