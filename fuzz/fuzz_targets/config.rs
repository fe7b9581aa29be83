//! The config loaders (`braid_config::parse_directory`, `parse_node_config`,
//! `parse_client_config`).
//!
//! Input: `selector | text [NUL NAME=VALUE]*`. `selector % 3` picks the directory, node or
//! client parser, `selector / 3 % FILES.len()` the file name passed in. The text is decoded
//! as UTF-8 (lossily); what follows its first NUL are environment overrides, one
//! `NAME=VALUE` per NUL-separated field, served by the env function. Checked:
//!
//! * nothing panics;
//! * every error's `Display` names the file it was given;
//! * parsing is deterministic (the same input parses to an equal value or an equal message);
//! * a directory that parses, written out with `to_toml_string` and parsed again (with
//!   no overrides), is equal, passes `validate`, and `Directory::from_toml_str` agrees.
#![no_main]

use std::path::Path;

use braid_config::{no_env, parse_client_config, parse_directory, parse_node_config, Directory};
use libfuzzer_sys::fuzz_target;

const FILES: [&str; 4] = [
    "/srv/braid/config.toml",
    "relative/dir/node.toml",
    "spaced name/ünïcødé.toml",
    "plain.toml",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let all = String::from_utf8_lossy(rest);
    let (text, env_part) = match all.split_once('\0') {
        Some((t, e)) => (t, e),
        None => (&*all, ""),
    };
    let env: Vec<(&str, &str)> = env_part
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let env_fn = |name: &str| -> Option<String> {
        env.iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    };
    let file_name = FILES[usize::from(sel / 3) % FILES.len()];
    let file = Path::new(file_name);

    let check_err = |e: &braid_config::ConfigError| {
        let msg = e.to_string();
        assert!(
            msg.contains(file_name),
            "error does not name {file_name}: {msg}"
        );
    };

    match sel % 3 {
        0 => {
            let first = parse_directory(text, file, &env_fn);
            let second = parse_directory(text, file, &env_fn);
            match (&first, &second) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                _ => panic!("parse_directory is not deterministic"),
            }
            match first {
                Ok(dir) => directory_round_trip(&dir, file),
                Err(e) => check_err(&e),
            }
        }
        1 => {
            let first = parse_node_config(text, file, &env_fn);
            let second = parse_node_config(text, file, &env_fn);
            match (&first, &second) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                _ => panic!("parse_node_config is not deterministic"),
            }
            if let Err(e) = first {
                check_err(&e);
            }
        }
        _ => {
            let first = parse_client_config(text, file, &env_fn);
            let second = parse_client_config(text, file, &env_fn);
            match (&first, &second) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                _ => panic!("parse_client_config is not deterministic"),
            }
            if let Err(e) = first {
                check_err(&e);
            }
        }
    }
});

fn directory_round_trip(dir: &Directory, file: &Path) {
    dir.validate().expect("a parsed directory is valid");
    let text = dir.to_toml_string();
    let again = parse_directory(&text, file, &no_env)
        .unwrap_or_else(|e| panic!("to_toml_string output does not parse: {e}\n{text}"));
    assert_eq!(
        &again, dir,
        "directory changed through to_toml_string:\n{text}"
    );
    let from_str = Directory::from_toml_str(&text).expect("from_toml_str");
    assert_eq!(&from_str, dir);
    // Written out again, the text is identical (a fixed point).
    assert_eq!(again.to_toml_string(), text);
}
