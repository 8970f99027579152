//! Writing the GGUF form back.

mod common;

use mlx_node_imatrix::Imatrix;

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("mlx-node-imatrix-{}-{name}", std::process::id()))
}

#[test]
fn reference_files_round_trip_byte_for_byte() {
    let dir = fixtures_or_return!();
    for file in ["tiny-dense.imatrix.gguf", "tiny-moe.imatrix.gguf"] {
        let original = std::fs::read(common::reference(&dir, file)).unwrap();
        let m = common::read(&dir, file);
        let out = temp(file);
        m.write_gguf(&out).unwrap();
        let written = std::fs::read(&out).unwrap();
        let again = Imatrix::read_gguf(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(
            again, m,
            "{file}: entries or metadata differ after a round trip"
        );
        assert_eq!(written.len(), original.len(), "{file}: length");
        if let Some(i) = written.iter().zip(&original).position(|(a, b)| a != b) {
            panic!("{file}: first differing byte at offset {i}");
        }
    }
}

#[test]
fn a_dat_file_converts_to_gguf() {
    let dir = fixtures_or_return!();
    let d = Imatrix::read_dat(common::reference(&dir, "tiny-dense.imatrix.dat")).unwrap();
    let bytes = d.to_gguf_bytes().unwrap();
    let back = Imatrix::from_gguf_bytes(&bytes, std::path::Path::new("<memory>")).unwrap();
    assert_eq!(back, d);
    for (name, e) in &back.entries {
        assert_eq!(e.importance(), d.importance(name).unwrap(), "{name}");
    }
}
