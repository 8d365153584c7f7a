//! `ucad validation-pool`: a real set's training images become a fit part and a held-out part
//! with drawn defects and their masks; nothing of its test split is read.

mod common;

use std::process::Command;

use ucad::data::dataset::load_task;
use ucad::data::synthetic::SplitCounts;

#[test]
fn the_pool_trains_and_tests_on_training_images_only() {
    let dir = tempfile::tempdir().unwrap();
    let counts = SplitCounts {
        train: 20,
        test_good: 2,
        test_defective: 2,
    };
    let names = common::synthetic_products(dir.path(), 1, counts);
    let source = load_task(dir.path(), &names[0]).unwrap();
    // The test split is damaged: writing the pool must not read it.
    for item in &source.test {
        std::fs::write(&item.image, b"not an image").unwrap();
    }
    let out = dir.path().join("pool");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_ucad"))
            .args(["validation-pool", "--data"])
            .arg(dir.path())
            .args(["--tasks", &names[0], "--out"])
            .arg(&out)
            .output()
            .unwrap()
    };
    let written = run();
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));

    let pool = load_task(&out, &names[0]).unwrap();
    assert_eq!(pool.train.len(), 15, "a quarter of 20 held out");
    let good: Vec<_> = pool.test.iter().filter(|t| t.mask.is_none()).collect();
    let drawn: Vec<_> = pool.test.iter().filter(|t| t.mask.is_some()).collect();
    assert_eq!((good.len(), drawn.len()), (5, 5));
    let originals: Vec<_> = source.train.iter().map(|p| p.canonicalize().unwrap()).collect();
    for path in pool.train.iter().chain(good.iter().map(|t| &t.image)) {
        assert!(originals.contains(&path.canonicalize().unwrap()), "{}", path.display());
    }
    let held: Vec<_> = good.iter().map(|t| t.image.canonicalize().unwrap()).collect();
    assert!(
        pool.train.iter().all(|p| !held.contains(&p.canonicalize().unwrap())),
        "fit and held-out parts overlap"
    );
    for item in drawn {
        let mask = image::open(item.mask.as_ref().unwrap()).unwrap().to_luma8();
        let marked = mask.pixels().filter(|p| p.0[0] > 127).count();
        assert!(
            marked > 0 && marked < (mask.width() * mask.height()) as usize / 4,
            "{marked} pixels marked"
        );
    }
    let again = run();
    assert!(!again.status.success(), "a second pool over the first is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
}
