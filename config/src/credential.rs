//! The files of user credentials: the credential file a user keeps (`braid`'s
//! `credential`), and the revocation list first hops load (`revoked`). The credential
//! format itself lives in `braid_proto::credential`.

use std::collections::HashSet;
use std::path::Path;

use braid_proto::credential::{Credential, ID_LEN, KEY_LEN};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// A user's credential file: the signed credential and the user's secret key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialFile {
    /// The user name (also inside the credential; here for people reading the file).
    pub user: String,
    /// The operator-signed credential, hex.
    pub credential: String,
    /// The user's Ed25519 secret seed, hex. Whoever holds it is this user.
    pub user_secret: String,
    /// The operator-signed limits pass the client shows its central (hex), naming only the
    /// stream limit; a network with an operator key wants one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub limits_pass: String,
}

impl std::fmt::Debug for CredentialFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialFile")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A loaded credential: its bytes, what they say, and the user's secret seed.
pub struct UserCredential {
    pub bytes: Vec<u8>,
    pub credential: Credential,
    pub secret: [u8; KEY_LEN],
    /// The limits pass, empty if the file has none.
    pub limits_pass: Vec<u8>,
}

impl std::fmt::Debug for UserCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCredential")
            .field("user", &self.credential.name)
            .finish_non_exhaustive()
    }
}

impl CredentialFile {
    /// The file's text.
    pub fn to_toml_string(&self) -> String {
        format!(
            "# Braid credential for {}. Keep it private (mode 0600): whoever holds it is this user.\n{}",
            self.user,
            toml::to_string(self).unwrap_or_default()
        )
    }

    fn decode(&self, file: &Path) -> Result<UserCredential, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key: key.into(),
            message,
        };
        let bytes = hex::decode(&self.credential)
            .map_err(|e| invalid("credential", format!("not hex: {e}")))?;
        let (credential, _) = Credential::parse(&bytes)
            .map_err(|e| invalid("credential", format!("not a credential: {e}")))?;
        let secret = crate::directory::hex32::decode(&self.user_secret)
            .map_err(|m| invalid("user_secret", m))?;
        let limits_pass = hex::decode(&self.limits_pass)
            .map_err(|e| invalid("limits_pass", format!("not hex: {e}")))?;
        Ok(UserCredential {
            bytes,
            credential,
            secret,
            limits_pass,
        })
    }
}

/// Reads a credential file, refusing one that others may read or write: it holds the
/// user's secret key.
pub fn load_credential(path: &Path) -> Result<UserCredential, ConfigError> {
    let text = read_private(path, "credential")?;
    let file: CredentialFile = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        file: path.to_owned(),
        message: e.to_string(),
    })?;
    file.decode(path)
}

/// Reads a file that holds a secret key, refusing it if others may read or write it.
fn read_private(path: &Path, key: &str) -> Result<String, ConfigError> {
    let read = |source| ConfigError::Read {
        file: path.to_owned(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(ConfigError::Invalid {
                file: path.to_owned(),
                key: key.into(),
                message: format!(
                    "the {key} file has mode {:o}: others may read it; chmod 600 it",
                    mode & 0o777
                ),
            });
        }
    }
    std::fs::read_to_string(path).map_err(read)
}

/// A node's join file (`[node] join`): the operator's join credential and the join key's
/// secret, with which the node signs its descriptors.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinFile {
    /// The role the credential admits (also inside it; here for people reading the file).
    pub role: String,
    /// The operator-signed join credential, hex.
    pub credential: String,
    /// The join key's Ed25519 secret seed, hex. Whoever holds it may join as this role.
    pub join_secret: String,
}

impl std::fmt::Debug for JoinFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinFile")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl JoinFile {
    /// The file's text.
    pub fn to_toml_string(&self) -> String {
        format!(
            "# Braid join credential ({}). Keep it private (mode 0600): whoever holds it may join the network.\n{}",
            self.role,
            toml::to_string(self).unwrap_or_default()
        )
    }
}

/// A loaded join file.
pub struct NodeJoin {
    /// The signed credential, as descriptors carry it.
    pub bytes: Vec<u8>,
    pub credential: braid_proto::join::JoinCredential,
    pub secret: [u8; KEY_LEN],
}

impl std::fmt::Debug for NodeJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeJoin")
            .field("role", &self.credential.role)
            .finish_non_exhaustive()
    }
}

/// Reads a join file, refusing one that others may read or write.
pub fn load_join(path: &Path) -> Result<NodeJoin, ConfigError> {
    let text = read_private(path, "join")?;
    let file: JoinFile = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        file: path.to_owned(),
        message: e.to_string(),
    })?;
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        file: path.to_owned(),
        key: key.into(),
        message,
    };
    let bytes = hex::decode(&file.credential)
        .map_err(|e| invalid("credential", format!("not hex: {e}")))?;
    let credential = braid_proto::join::JoinCredential::parse(&bytes)
        .map_err(|e| invalid("credential", format!("not a join credential: {e}")))?;
    let secret = crate::directory::hex32::decode(&file.join_secret)
        .map_err(|m| invalid("join_secret", m))?;
    Ok(NodeJoin {
        bytes,
        credential,
        secret,
    })
}

/// Reads a revocation list: one credential id (hex) per line; blank lines and `#` comments
/// are skipped.
pub fn load_revocations(path: &Path) -> Result<HashSet<[u8; ID_LEN]>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_owned(),
        source,
    })?;
    parse_revocations(&text).map_err(|(line, message)| ConfigError::Invalid {
        file: path.to_owned(),
        key: format!("line {line}"),
        message,
    })
}

/// Parses a revocation list's text; an error names the line (from 1).
pub fn parse_revocations(text: &str) -> Result<HashSet<[u8; ID_LEN]>, (usize, String)> {
    let mut ids = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let id = line.split('#').next().unwrap_or_default().trim();
        if id.is_empty() {
            continue;
        }
        let mut b = [0u8; ID_LEN];
        hex::decode_to_slice(id, &mut b).map_err(|_| {
            (
                i + 1,
                format!("{id:?} is not a credential id ({} hex digits)", 2 * ID_LEN),
            )
        })?;
        ids.insert(b);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_lists_skip_comments_and_name_bad_lines() {
        let ids =
            parse_revocations("# revoked\n\n00112233445566778899aabbccddeeff  # bob\n").unwrap();
        assert_eq!(ids.len(), 1);
        assert!(ids.contains(&[
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff
        ]));
        assert_eq!(parse_revocations("ok\n").unwrap_err().0, 1);
        assert_eq!(
            parse_revocations("00112233445566778899aabbccddeeff\nxyz")
                .unwrap_err()
                .0,
            2
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_credential_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.cred");
        std::fs::write(
            &p,
            "user = \"a\"\ncredential = \"00\"\nuser_secret = \"00\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_credential(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_credential(&p).unwrap_err().to_string();
        assert!(e.contains("not a credential"), "{e}");
    }
}
