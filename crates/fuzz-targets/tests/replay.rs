//! Every fuzz target's seed corpus (`fuzz/seeds/TARGET/`), replayed through the target on
//! stable: what the fuzzers found interesting (and every crash, once fixed) stays a test.
use std::path::{Path, PathBuf};

fn seeds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds")
}

#[test]
fn every_target_has_a_seed_corpus_and_a_cargo_fuzz_binary() {
    let cargo_fuzz = std::fs::read_to_string(seeds().join("../Cargo.toml")).unwrap();
    for (name, _) in hyperd_fuzz_targets::TARGETS {
        let files = std::fs::read_dir(seeds().join(name))
            .unwrap_or_else(|e| panic!("fuzz/seeds/{name}: {e}"))
            .count();
        assert!(files > 0, "fuzz/seeds/{name} is empty");
        assert!(
            cargo_fuzz.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no binary {name}"
        );
        let bin = std::fs::read_to_string(seeds().join(format!("../fuzz_targets/{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{name}.rs: {e}"));
        assert!(bin.contains(&format!("hyperd_fuzz_targets::{name}::run")));
    }
}

#[test]
fn seed_corpora_replay() {
    let mut failed = Vec::new();
    let mut total = 0;
    for (name, run) in hyperd_fuzz_targets::TARGETS {
        let Ok(dir) = std::fs::read_dir(seeds().join(name)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            total += 1;
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(f.display().to_string());
            }
        }
    }
    assert!(total > 0);
    assert!(
        failed.is_empty(),
        "inputs that fail their target: {failed:#?}"
    );
}
