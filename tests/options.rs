//! Opening with wrong options or paths fails with a clear error and changes nothing.

mod common;

use common::small_options;
use merkle_index::{Error, Options, Store};

#[test]
fn shape_mismatch_is_refused_and_store_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    store.put(b"k", b"v").unwrap();
    store.close().unwrap();

    let mut wider = small_options();
    wider.width = 8;
    match Store::open(dir.path(), wider) {
        Err(Error::OptionsMismatch {
            what: "width",
            stored: 4,
            requested: 8,
        }) => {}
        other => panic!("expected a width mismatch, got {other:?}"),
    }
    let mut deeper = small_options();
    deeper.levels = 4;
    let err = Store::open(dir.path(), deeper).unwrap_err();
    assert!(
        matches!(
            err,
            Error::OptionsMismatch {
                what: "levels",
                stored: 3,
                requested: 4
            }
        ),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("open with the store's own options"));

    // Nothing was changed: the clean snapshot is still used.
    let store = Store::open(dir.path(), small_options()).unwrap();
    assert_eq!(
        store.open_report().recovery,
        merkle_index::Recovery::Snapshot
    );
    assert_eq!(store.get(b"k").unwrap(), Some(b"v".to_vec()));
    store.close().unwrap();

    // open_existing adopts the stored shape.
    let store = Store::open_existing(dir.path(), Options::default()).unwrap();
    assert_eq!((store.shape().width, store.shape().levels), (4, 3));
}

#[test]
fn missing_and_invalid_paths() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = Store::open(&missing, small_options().create_if_missing(false)).unwrap_err();
    assert!(matches!(&err, Error::NotFound(p) if p == &missing), "{err}");
    assert!(!missing.exists());

    let file = dir.path().join("file");
    std::fs::write(&file, b"hello").unwrap();
    let err = Store::open(&file, small_options()).unwrap_err();
    assert!(
        matches!(&err, Error::NotAStore { reason, .. } if reason == "not a directory"),
        "{err}"
    );

    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    let err = Store::open(&other, small_options()).unwrap_err();
    assert!(matches!(&err, Error::NotAStore { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(&other).unwrap().count(),
        1,
        "nothing written"
    );

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = Store::open_existing(&empty, Options::default()).unwrap_err();
    assert!(
        matches!(&err, Error::NotAStore { reason, .. } if reason == "empty directory"),
        "{err}"
    );
}

#[test]
fn invalid_options_are_refused_before_touching_disk() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("s");
    let mut o = small_options();
    o.width = 1;
    assert!(matches!(
        Store::open(&target, o),
        Err(Error::InvalidOptions(_))
    ));
    let mut o = small_options();
    o.levels = 40;
    assert!(matches!(
        Store::open(&target, o),
        Err(Error::InvalidOptions(_))
    ));
    let mut o = small_options();
    o.region_segments = 0;
    assert!(matches!(
        Store::open(&target, o),
        Err(Error::InvalidOptions(_))
    ));
    let mut o = small_options();
    o.channel_capacity = 0;
    assert!(matches!(
        Store::open(&target, o),
        Err(Error::InvalidOptions(_))
    ));
    assert!(!target.exists());
}

#[test]
fn second_open_of_a_live_store_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    let err = Store::open(dir.path(), small_options()).unwrap_err();
    assert!(
        matches!(&err, Error::InUse(path) if path == dir.path()),
        "{err}"
    );
    store.put(b"still", b"works").unwrap();
}
