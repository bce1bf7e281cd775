//! The CLI's contract: every subcommand, exit codes 0/1/2, parseable --json, and bad
//! input that fails with a useful one-line message and changes nothing on disk.

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_merkle-index"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn db(dir: &Path) -> String {
    dir.to_str().unwrap().to_string()
}

/// A digest of every file under `dir` outside sled's own directory (sled rewrites its
/// bookkeeping files whenever it is opened), to show a failed command wrote nothing.
fn snapshot(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().unwrap() != "sled" {
                    stack.push(p);
                }
            } else {
                let digest = blake3::hash(&std::fs::read(&p).unwrap())
                    .to_hex()
                    .to_string();
                out.push((p.display().to_string(), digest));
            }
        }
    }
    out.sort();
    out
}

fn loaded(keys: &str, extra: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let mut args = vec![
        "load",
        "--db",
        &path,
        "--keys",
        keys,
        "--segments",
        "4096",
        "--flush-every",
        "100",
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    dir
}

#[test]
fn load_prints_durable_progress_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let o = run(&[
        "load",
        "--db",
        &path,
        "--keys",
        "250",
        "--partitions",
        "3",
        "--segments",
        "256",
        "--flush-every",
        "100",
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let durable: Vec<u64> = lines.iter().filter_map(|l| l["durable"].as_u64()).collect();
    assert_eq!(durable, vec![100, 200, 250]);
    assert_eq!(lines.last().unwrap()["loaded"], 250);

    let stats = run(&["stats", "--db", &path, "--json"]);
    assert_eq!(code(&stats), 0);
    let s = json(&stats);
    assert_eq!(
        (
            s["segments"].as_u64(),
            s["width"].as_u64(),
            s["levels"].as_u64()
        ),
        (Some(256), Some(16), Some(2))
    );
    let keys: Vec<u64> = s["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["keys"].as_u64().unwrap())
        .collect();
    assert_eq!(keys, vec![84, 83, 83]);
    assert_eq!(s["last_open"]["path"], "clean snapshot");
    assert!(s["index_memory_bytes"].as_u64().unwrap() > 0);

    // Loading the same workload again writes the same keys, values and versions: the
    // roots are equal, and real (non-zero) roots.
    let again = tempfile::tempdir().unwrap();
    let again_path = db(again.path());
    let o = run(&[
        "load",
        "--db",
        &again_path,
        "--keys",
        "250",
        "--partitions",
        "3",
        "--segments",
        "256",
    ]);
    assert_eq!(code(&o), 0);
    for p in ["0", "1", "2"] {
        let a = stdout(&run(&["root", "--db", &path, "--partition", p]));
        let b = stdout(&run(&["root", "--db", &again_path, "--partition", p]));
        assert_eq!(a.trim().len(), 32);
        assert_ne!(a.trim(), "0".repeat(32));
        assert_eq!(a, b);
    }
}

#[test]
fn put_get_delete_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    assert_eq!(
        code(&run(&[
            "put",
            "--db",
            &path,
            "--partition",
            "2",
            "apple",
            "red"
        ])),
        0
    );
    let got = run(&["get", "--db", &path, "--partition", "2", "apple"]);
    assert_eq!((code(&got), stdout(&got).as_str()), (0, "red"));
    let absent = run(&["get", "--db", &path, "--partition", "1", "apple"]);
    assert_eq!(code(&absent), 1);
    assert!(stderr(&absent).contains("not found"));
    assert_eq!(
        code(&run(&[
            "delete",
            "--db",
            &path,
            "--partition",
            "2",
            "apple"
        ])),
        0
    );
    assert_eq!(
        code(&run(&["get", "--db", &path, "--partition", "2", "apple"])),
        1
    );
    // The tombstone stays until it is older than the grace period given. (Stats lists
    // the partitions that hold records: none once it is purged.)
    let keys = |path: &str| -> u64 {
        json(&run(&["stats", "--db", path, "--json"]))["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["keys"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(keys(&path), 1);
    let kept = json(&run(&[
        "purge-tombstones",
        "--db",
        &path,
        "--grace",
        "1h",
        "--json",
    ]));
    assert_eq!((kept["purged"].as_u64(), keys(&path)), (Some(0), 1));
    let purged = run(&["purge-tombstones", "--db", &path, "--grace", "0s"]);
    assert_eq!(code(&purged), 0);
    assert!(
        stdout(&purged).contains("purged 1 tombstones"),
        "{}",
        stdout(&purged)
    );
    assert_eq!(keys(&path), 0);
    let root = stdout(&run(&["root", "--db", &path, "--partition", "2"]));
    assert!(
        root.trim()
            .trim_start_matches("0x")
            .chars()
            .all(|c| c == '0'),
        "{root}"
    );
    let o = run(&["purge-tombstones", "--db", &path, "--grace", "soon"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn verify_rebuild_dump_on_a_sound_store() {
    let dir = loaded("500", &["--partitions", "2"]);
    let path = db(dir.path());
    let v = run(&["verify", "--db", &path, "--json"]);
    assert_eq!(code(&v), 0, "{}", stderr(&v));
    let v = json(&v);
    assert_eq!(
        (
            v["ok"].as_bool(),
            v["keys"].as_u64(),
            v["partitions"].as_u64()
        ),
        (Some(true), Some(500), Some(2))
    );
    let text = run(&["verify", "--db", &path]);
    assert!(stdout(&text).contains("no problems"));

    let root = stdout(&run(&["root", "--db", &path, "--partition", "1"]));
    let r = run(&["rebuild", "--db", &path, "--json"]);
    assert_eq!(code(&r), 0);
    assert_eq!(json(&r)["keys"], 500);
    assert_eq!(
        stdout(&run(&["root", "--db", &path, "--partition", "1"])),
        root
    );

    let d = run(&[
        "dump",
        "--db",
        &path,
        "--partition",
        "1",
        "--level",
        "0",
        "--json",
    ]);
    assert_eq!(code(&d), 0, "{}", stderr(&d));
    let children = json(&d)["children"].as_array().unwrap().clone();
    assert_eq!(children.len(), 16);
    // A non-empty segment lists its keys with versions.
    let mut found = false;
    for s in 0..4096u32 {
        let e = run(&[
            "dump",
            "--db",
            &path,
            "--partition",
            "1",
            "--segment",
            &s.to_string(),
            "--json",
        ]);
        let entries = json(&e)["entries"].as_array().unwrap().clone();
        if let Some(first) = entries.first() {
            assert!(first["key"].as_str().unwrap().starts_with("key-"));
            assert!(first["version"].as_u64().unwrap() > 0);
            found = true;
            break;
        }
    }
    assert!(found);
    let bad = run(&["dump", "--db", &path, "--partition", "1", "--level", "3"]);
    assert_eq!(code(&bad), 2);
    assert!(stderr(&bad).contains("has no children"), "{}", stderr(&bad));
    let usage = run(&["dump", "--db", &path, "--partition", "1"]);
    assert_eq!(code(&usage), 2);
}

#[test]
fn corrupt_value_makes_verify_exit_one_and_name_the_key() {
    let dir = loaded("200", &[]);
    let path = db(dir.path());
    {
        let sled = sled_open(dir.path());
        let data = sled.open_tree("data").unwrap();
        let (k, v) = data.iter().next().unwrap().unwrap();
        let mut v = v.to_vec();
        *v.last_mut().unwrap() ^= 1;
        data.insert(k, v).unwrap();
        sled.flush().unwrap();
    }
    let o = run(&["verify", "--db", &path, "--json"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["ok"], false);
    let problem = &v["problems"][0];
    assert!(problem["key"].as_str().unwrap().starts_with("key-"));
    assert!(problem["what"]
        .as_str()
        .unwrap()
        .contains("do not match their stored hash"));
    let text = run(&["verify", "--db", &path]);
    assert_eq!(code(&text), 1);
    assert!(stdout(&text).contains("problem: partition 0 segment"));
}

fn sled_open(dir: &Path) -> sled::Db {
    sled::open(dir.join("sled")).unwrap()
}

#[test]
fn bad_input_exits_two_with_a_message_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    for cmd in ["stats", "root", "verify", "rebuild"] {
        let o = run(&[cmd, "--db", missing.to_str().unwrap()]);
        assert_eq!(code(&o), 2, "{cmd}");
        let err = stderr(&o);
        assert!(
            err.contains("no store at") && err.contains("check the path"),
            "{cmd}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert!(!missing.exists());

    let other = dir.path().join("not-a-store");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("photo.jpg"), b"\xff\xd8").unwrap();
    let before = snapshot(&other);
    for args in [
        vec!["stats", "--db", other.to_str().unwrap()],
        vec!["load", "--db", other.to_str().unwrap(), "--keys", "3"],
        vec!["put", "--db", other.to_str().unwrap(), "k", "v"],
    ] {
        let o = run(&args);
        assert_eq!(code(&o), 2, "{args:?}");
        assert!(
            stderr(&o).contains("is not a merkle-index store"),
            "{}",
            stderr(&o)
        );
    }
    assert!(
        snapshot(&other) == before,
        "a non-store directory was written to"
    );

    // Options mismatch: an existing 4096-segment store opened as a 1M-segment one.
    let store = loaded("50", &[]);
    let root = stdout(&run(&["root", "--db", &db(store.path())]));
    let before = snapshot(store.path());
    assert_eq!(before.len(), 1, "the clean-close snapshot");
    let o = run(&[
        "load",
        "--db",
        &db(store.path()),
        "--keys",
        "5",
        "--segments",
        "1048576",
    ]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("options mismatch for levels"),
        "{}",
        stderr(&o)
    );
    assert!(snapshot(store.path()) == before, "the snapshot was touched");
    // The store is as it was: still a clean close, same root, same keys.
    let stats = json(&run(&["stats", "--db", &db(store.path()), "--json"]));
    assert_eq!(stats["last_open"]["path"], "clean snapshot");
    assert_eq!(stats["partitions"][0]["keys"], 50);
    assert_eq!(stdout(&run(&["root", "--db", &db(store.path())])), root);
    let o = run(&["load", "--db", &db(store.path()), "--segments", "1000"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("must be a power of width"),
        "{}",
        stderr(&o)
    );

    // A value over the store's limit is refused before any is made (it once asked the
    // allocator for the whole size first), and nothing is written.
    let o = run(&[
        "load",
        "--db",
        &db(store.path()),
        "--value-size",
        "99999999999",
    ]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("over the store's limit"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&run(&["root", "--db", &db(store.path())])), root);

    // The same store twice: the second open finds it in use, said once.
    let o = run(&["sync", "--db", &db(store.path()), "--db", &db(store.path())]);
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert!(err.contains("is open elsewhere"), "{err}");
    assert_eq!(err.matches("open elsewhere").count(), 1, "{err}");

    // Usage errors.
    assert_eq!(code(&run(&["stats"])), 2);
    assert_eq!(code(&run(&["frobnicate"])), 2);
    assert_eq!(code(&run(&["load", "--db", "x", "--keys", "lots"])), 2);
}

#[test]
fn corrupt_sled_files_exit_two() {
    let dir = loaded("50", &[]);
    let path = db(dir.path());
    // Overwrite sled's config file with garbage: sled refuses to open.
    std::fs::write(
        dir.path().join("sled").join("conf"),
        b"garbage garbage garbage",
    )
    .unwrap();
    let o = run(&["stats", "--db", &path]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).starts_with("merkle-index: "), "{}", stderr(&o));
}

#[test]
fn diff_and_sync_two_local_stores() {
    let a = loaded("300", &[]);
    let b = tempfile::tempdir().unwrap();
    let (pa, pb) = (db(a.path()), db(b.path()));
    let o = run(&["load", "--db", &pb, "--keys", "3", "--segments", "4096"]);
    assert_eq!(code(&o), 0);
    let d = run(&["diff", "--db", &pa, "--db", &pb, "--json"]);
    assert_eq!(code(&d), 1, "{}", stderr(&d));
    let lines: Vec<serde_json::Value> = stdout(&d)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = lines.last().unwrap();
    // Loads are deterministic: the first 3 keys are equal, b lacks the other 297.
    assert_eq!(summary["differences"], 297);
    assert_eq!(lines.len(), 298);
    let s = run(&["sync", "--db", &pa, "--db", &pb, "--json"]);
    assert_eq!(code(&s), 0, "{}", stderr(&s));
    let s = json(&s);
    assert_eq!(
        s["repaired_remote"].as_u64().unwrap() + s["repaired_local"].as_u64().unwrap(),
        297
    );
    let d = run(&["diff", "--db", &pa, "--db", &pb]);
    assert_eq!(code(&d), 0, "{}", stdout(&d));
    assert!(stdout(&d).contains("0 differences"));
    assert_eq!(
        stdout(&run(&["root", "--db", &pa])),
        stdout(&run(&["root", "--db", &pb]))
    );
    let usage = run(&["diff", "--db", &pa]);
    assert_eq!(code(&usage), 2);
}

#[test]
fn demo_tells_the_whole_story() {
    let o = run(&["demo"]);
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("killed (SIGKILL)"), "{out}");
    assert!(out.contains("restarted"), "{out}");
    assert!(out.contains("joined empty"), "{out}");
    assert!(out.contains("nobody typed `sync`"), "{out}");
    assert!(out.contains("all four nodes are equal"), "{out}");
    assert!(out.contains("rots on its disk"), "{out}");
    assert!(out.contains("(1 quarantined) and an exchange"), "{out}");
    assert!(out.contains("in 16 partitions"), "{out}");
    // The nodes' logs go to files, never into the story.
    assert!(!out.contains("merkle-index serve:"), "{out}");
}

#[test]
fn keys_and_values_are_bytes_with_hex() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir.path().join("s"));
    let put = run(&["put", "--db", &path, "--hex", "00ff", "c3287a0a"]);
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    let put = run(&["put", "--db", &path, "--hex", "6b", "c3287a0a"]);
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    // Without --hex, raw bytes on stdout exactly as stored (not UTF-8, nothing added).
    let raw = run(&["get", "--db", &path, "k"]);
    assert_eq!(
        (code(&raw), raw.stdout.as_slice()),
        (0, &[0xc3, 0x28, 0x7a, 0x0a][..])
    );
    let hex = run(&["get", "--db", &path, "--hex", "0x00FF"]);
    assert_eq!(stdout(&hex), "c3287a0a\n");
    let bad = run(&["get", "--db", &path, "--hex", "0g"]);
    assert_eq!(code(&bad), 2);
    assert!(stderr(&bad).contains("not hex"), "{}", stderr(&bad));
    let stats = json(&run(&["stats", "--db", &path, "--json"]));
    let segment = stats["partitions"][0]["keys"].as_u64().unwrap();
    assert_eq!(segment, 2);
    assert_eq!(code(&run(&["delete", "--db", &path, "--hex", "00ff"])), 0);
    assert_eq!(code(&run(&["get", "--db", &path, "--hex", "00ff"])), 1);
}

#[test]
fn load_is_deterministic_so_two_loads_are_replicas() {
    let (a, b) = (
        loaded("500", &["--partitions", "3"]),
        loaded("500", &["--partitions", "3"]),
    );
    let root = |d: &tempfile::TempDir, p: &str| {
        stdout(&run(&["root", "--db", &db(d.path()), "--partition", p]))
    };
    for p in ["0", "1", "2"] {
        assert_eq!(root(&a, p), root(&b, p));
    }
    let d = run(&["diff", "--db", &db(a.path()), "--db", &db(b.path())]);
    assert_eq!(code(&d), 0, "{}", stdout(&d));
    // A different base gives different versions, hence a different root.
    let c = loaded("500", &["--partitions", "3", "--version-base", "1000"]);
    assert_ne!(root(&a, "0"), root(&c, "0"));
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // `load` prints a line per flush; the reader takes one and goes.
    let mut child = bin()
        .args([
            "load",
            "--db",
            &db(dir.path()),
            "--keys",
            "3000",
            "--flush-every",
            "10",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with("durable"), "{first}");
    // The reader is dropped here: every later line meets a closed pipe.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The work itself was finished and the store closed cleanly.
    let stats = json(&run(&["stats", "--db", &db(dir.path()), "--json"]));
    assert_eq!(stats["partitions"][0]["keys"], 3000);
    assert_eq!(stats["last_open"]["path"], "clean snapshot");
}

#[test]
fn serve_refuses_a_zero_timeout_at_parsing() {
    let dir = loaded("10", &[]);
    let key = dir.path().join("key");
    std::fs::write(&key, "correct horse battery staple").unwrap();
    for (flag, value) in [("--timeout-ms", "0"), ("--max-connections", "0")] {
        let o = run(&[
            "serve",
            "--db",
            &db(dir.path()),
            "--key-file",
            key.to_str().unwrap(),
            flag,
            value,
        ]);
        assert_eq!(code(&o), 2);
        assert!(stderr(&o).contains(flag), "{}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    }
}

#[test]
fn drop_partition_removes_it_for_good() {
    let dir = loaded("300", &["--partitions", "3"]);
    let path = db(dir.path());
    let o = run(&[
        "drop-partition",
        "--db",
        &path,
        "--partition",
        "1",
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["records"], 100);
    let stats = json(&run(&["stats", "--db", &path, "--json"]));
    let ids: Vec<u64> = stats["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![0, 2]);
    assert_eq!(code(&run(&["verify", "--db", &path])), 0);
    let again = run(&["drop-partition", "--db", &path, "--partition", "1"]);
    assert!(
        stdout(&again).contains("held nothing"),
        "{}",
        stdout(&again)
    );
}
