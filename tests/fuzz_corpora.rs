//! Every file of every committed fuzz corpus (`fuzz/corpus/TARGET/`),
//! replayed through the decoder it was found against, on the stable
//! toolchain: what the fuzzers once reached stays panic-free.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 6] = [
    ("snet_messages", rejoin::fuzz::snet_messages),
    ("snet_exchanges", rejoin::fuzz::snet_exchanges),
    ("records", rejoin::fuzz::records),
    ("tunnel_frames", rejoin::fuzz::tunnel_frames),
    ("sealed_hellos", rejoin::fuzz::sealed_hellos),
    ("sealed_frames", rejoin::fuzz::sealed_frames),
];

#[test]
fn every_corpus_file_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut files = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            target(&data);
            files += 1;
        }
        println!("{name}: {files} corpus files replayed");
        assert!(files >= 10, "{name}: a corpus of {files} files");
    }
}
