//! A signed directory (issue 10, first part): with an operator, the directory carries a
//! version, an expiry and the operator's signature, and every node and client pins the
//! operator key (`directory_key`). A directory with a bad signature, none, an expired one
//! or an older version is refused at start, by the client and by every role, with the
//! reason on stderr; the signed one runs a download.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use braid_testkit as support;
use support::procs::{braid_node_bin, workspace_bin, ProcOptions, ProcOverlay};
use support::*;

/// Runs `bin ARGS` (which must exit, refusing); its stderr.
fn refused(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("BRAID_LOG_FILTER", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{bin:?} {args:?} ran:\n{err}");
    err
}

/// `config` with its directory file swapped for `directory` (written beside it as NAME).
fn with_directory(config: &Path, name: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(config).unwrap();
    let swapped = text.replace(
        "directory = \"directory.toml\"",
        &format!("directory = \"{name}\""),
    );
    assert_ne!(swapped, text);
    let out = config.with_file_name(format!(
        "{}-{name}",
        config.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&out, swapped).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_unsigned_expired_or_older_directory_is_refused_by_the_client_and_every_node() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let ov = ProcOverlay::start(ProcOptions {
        operator: true,
        ..ProcOptions::default()
    });
    // The signed directory runs.
    let (ok, body) = curl(
        ov.socks,
        &["--max-time", "10", &format!("http://{origin}/echo/signed")],
    )
    .await;
    assert!(ok && body == b"signed");
    let dir = ov.dir.path();
    let good = std::fs::read_to_string(dir.join("directory.toml")).unwrap();
    assert!(
        good.contains("signature = "),
        "the test overlay signs its directory"
    );

    // One node added by someone without the operator key (its signature left as it was),
    // and the same directory with no signature at all.
    let mut forged = braid_config::Directory::from_toml_str(&good).unwrap();
    let mut extra = forged.nodes[0].clone();
    extra.id = "upstream-9".into();
    extra.addr = Some("127.9.9.9:7000".parse().unwrap());
    extra.noise_key = [9; 32];
    extra.tls_key = [9; 32];
    forged.nodes.push(extra);
    std::fs::write(dir.join("forged.toml"), forged.to_toml_string()).unwrap();
    let mut unsigned = forged.clone();
    unsigned.signature = None;
    std::fs::write(dir.join("unsigned.toml"), unsigned.to_toml_string()).unwrap();
    let operator = dir.join("operator");
    let sign = |file: &str, extra: &[&str]| {
        let path = dir.join(file);
        std::fs::write(&path, &good).unwrap();
        let mut args = vec!["directory", "--dir", operator.to_str().unwrap(), "sign"];
        args.push(path.to_str().unwrap());
        args.extend_from_slice(extra);
        let out = Command::new(braid_node_bin()).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Signed by the operator, but expiring in a second; and signed as version 0, older than
    // the version 1 every node took at start.
    sign("expired.toml", &["--valid-secs", "1"]);
    sign("older.toml", &["--version", "0"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));

    let cases = [
        ("forged.toml", "does not verify with the operator key"),
        ("unsigned.toml", "is not signed"),
        ("expired.toml", "expired"),
    ];
    let node = braid_node_bin();
    for n in &ov.directory.nodes {
        let config = ov.node(&n.id).config.clone();
        for (file, why) in cases {
            let cfg = with_directory(&config, file);
            let err = refused(&node, &["--config", cfg.to_str().unwrap()]);
            assert!(err.contains(why), "{} with {file}: {err}", n.id);
        }
        // Every node recorded the version it took; an older one is refused after a restart.
        let cfg = with_directory(&config, "older.toml");
        let err = refused(&node, &["--config", cfg.to_str().unwrap()]);
        assert!(err.contains("older than version 1"), "{}: {err}", n.id);
    }
    // The client, with the same pin.
    let client_cfg = dir.join("client.toml");
    let client = workspace_bin("braid");
    for (file, why) in cases {
        let cfg = with_directory(&client_cfg, file);
        let err = refused(&client, &["run", "--config", cfg.to_str().unwrap()]);
        assert!(err.contains(why), "client with {file}: {err}");
    }
    // The running client recorded version 1 beside its directory file. The directory file
    // replaced by an older one (older.toml stands in for it, with the record copied beside
    // it) is refused too.
    let older = std::fs::read_to_string(dir.join("older.toml")).unwrap();
    let version = dir.join("directory.toml.version");
    assert_eq!(std::fs::read_to_string(&version).unwrap().trim(), "1");
    std::fs::copy(&version, dir.join("older.toml.version")).unwrap();
    assert!(older.contains("signature"));
    let cfg = with_directory(&client_cfg, "older.toml");
    let err = refused(&client, &["run", "--config", cfg.to_str().unwrap()]);
    assert!(err.contains("older than version 1"), "client: {err}");
    // Nothing refused disturbed the running overlay.
    let (ok, body) = curl(
        ov.socks,
        &["--max-time", "10", &format!("http://{origin}/echo/still")],
    )
    .await;
    assert!(ok && body == b"still");
    ov.assert_no_panics();
}
