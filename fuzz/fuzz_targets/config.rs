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

use std::fmt::Debug;
use std::path::Path;

use braid_config::{
    no_env, parse_client_config, parse_directory, parse_node_config, ConfigError, Directory,
};
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

    match sel % 3 {
        0 => {
            let parsed = checked("parse_directory", file_name, || {
                parse_directory(text, file, &env_fn)
            });
            if let Some(dir) = parsed {
                directory_round_trip(&dir, file);
            }
        }
        1 => {
            checked("parse_node_config", file_name, || {
                parse_node_config(text, file, &env_fn)
            });
        }
        _ => {
            checked("parse_client_config", file_name, || {
                parse_client_config(text, file, &env_fn)
            });
        }
    }
});

/// Runs `parse` (the parser named `parser`) twice: an equal value or an equal message (parsing
/// is deterministic), and an error names the file. Returns the value, if it parsed.
fn checked<T: PartialEq + Debug>(
    parser: &str,
    file_name: &str,
    parse: impl Fn() -> Result<T, ConfigError>,
) -> Option<T> {
    let (first, second) = (parse(), parse());
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("{parser} is not deterministic"),
    }
    match first {
        Ok(value) => Some(value),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(file_name),
                "error does not name {file_name}: {msg}"
            );
            None
        }
    }
}

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
