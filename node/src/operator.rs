//! The operator's tools (`braid-node operator init`, `braid-node user ...`): the operator
//! key, the user file on the operator's machine (`users.toml`: every credential issued),
//! credential files to hand out (`NAME.cred`, mode 0600) and the revocation list first hops
//! load (`revoked.txt`). All in one operator folder; nothing here runs on a node.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use braid_config::CredentialFile;
use braid_proto::credential::{Credential, LimitsPass, SigningKey, UserLimits, ID_LEN};
use rand::RngCore;
use serde::{Deserialize, Serialize};

const KEY_FILE: &str = "operator.key";
const USERS_FILE: &str = "users.toml";
const REVOKED_FILE: &str = "revoked.txt";

/// One issued credential, as the user file keeps it (no secrets: the user key's secret
/// half is only in the credential file handed out).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issued {
    pub name: String,
    /// Credential id, hex.
    pub id: String,
    /// The user's public key, hex.
    pub user_key: String,
    pub not_before: u64,
    pub not_after: u64,
    pub rate_kib: u32,
    pub max_sessions: u32,
    pub max_streams: u32,
    pub quota_mib: u64,
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    #[serde(default)]
    credentials: Vec<Issued>,
}

/// What `user add` and `user renew` issue.
#[derive(Debug, Clone, Copy)]
pub struct IssueOptions {
    /// Validity from now, in seconds.
    pub valid_secs: u64,
    /// Start of validity relative to now, in seconds (negative: in the past).
    pub starts_in_secs: i64,
    pub limits: UserLimits,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `text` to `path` readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

pub struct Operator {
    dir: PathBuf,
    key: SigningKey,
}

impl Operator {
    /// Makes a new operator folder: the key, an empty user file and revocation list.
    /// Returns the public key (hex) for the directory's `operator_key`.
    pub fn init(dir: &Path) -> anyhow::Result<String> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key_path = dir.join(KEY_FILE);
        if key_path.exists() {
            bail!(
                "{} exists: this folder has an operator key already",
                key_path.display()
            );
        }
        let key = SigningKey::generate(&mut rand::rng());
        write_private(&key_path, &format!("{}\n", hex::encode(key.seed())))?;
        let op = Operator {
            dir: dir.to_path_buf(),
            key,
        };
        op.save(&UserFile::default())?;
        Ok(hex::encode(op.key.public()))
    }

    pub fn open(dir: &Path) -> anyhow::Result<Operator> {
        let key_path = dir.join(KEY_FILE);
        let text = std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let seed = braid_config::hex32::decode(text.trim())
            .map_err(|m| anyhow::anyhow!("{}: {m}", key_path.display()))?;
        Ok(Operator {
            dir: dir.to_path_buf(),
            key: SigningKey::from_seed(&seed),
        })
    }

    /// Signs the directory file in place: sets `version` (when given; otherwise one more
    /// than the file's) and `expires` (`valid_secs` from now, 0: never), names this
    /// operator's key and signs. Returns the version signed.
    pub fn sign_directory(
        &self,
        file: &Path,
        version: Option<u64>,
        valid_secs: u64,
    ) -> anyhow::Result<u64> {
        let mut dir = braid_config::load_directory(file)
            .with_context(|| format!("reading {}", file.display()))?;
        dir.version = version.unwrap_or(dir.version + 1);
        dir.expires = match valid_secs {
            0 => 0,
            s => now().saturating_add(s),
        };
        dir.sign(&self.key);
        std::fs::write(file, dir.to_toml_string())
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(dir.version)
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.key.public())
    }

    /// Issues a join credential for nodes of `role` and writes it, with the join key's
    /// secret, to `out` (0600): a node with `[node] join` pointing at it may join. Valid
    /// from `starts_in_secs` to `valid_secs` from now; `single_use` lets one node id use it.
    pub fn issue_join(
        &self,
        role: braid_config::Role,
        single_use: bool,
        valid_secs: u64,
        starts_in_secs: i64,
        out: &Path,
    ) -> anyhow::Result<()> {
        let mut rng = rand::rng();
        let join_key = SigningKey::generate(&mut rng);
        let mut id = [0u8; ID_LEN];
        rng.fill_bytes(&mut id);
        let not_before = now().saturating_add_signed(starts_in_secs);
        let credential = braid_proto::join::JoinCredential {
            id,
            role: role.code(),
            single_use,
            not_before,
            not_after: not_before.saturating_add(valid_secs),
            join_key: join_key.public(),
        }
        .issue(&self.key);
        let file = braid_config::JoinFile {
            role: role.to_string(),
            credential: hex::encode(credential),
            join_secret: hex::encode(join_key.seed()),
        };
        write_private(out, &file.to_toml_string())
    }

    fn load(&self) -> anyhow::Result<UserFile> {
        let p = self.dir.join(USERS_FILE);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    }

    /// Writes the user file and, from it, the revocation list.
    fn save(&self, users: &UserFile) -> anyhow::Result<()> {
        let text = toml::to_string(users)?;
        write_private(
            &self.dir.join(USERS_FILE),
            &format!("# Braid users: every credential this operator issued.\n{text}"),
        )?;
        let mut revoked = String::from(
            "# Braid revocation list: credential ids first hops refuse. Copy it to every upstream\n# and relay (their `revoked` path) and send them SIGHUP.\n",
        );
        for c in users.credentials.iter().filter(|c| c.revoked) {
            revoked.push_str(&format!("{}  # {}\n", c.id, c.name));
        }
        let p = self.dir.join(REVOKED_FILE);
        std::fs::write(&p, revoked).with_context(|| format!("writing {}", p.display()))
    }

    /// Issues `name` a new credential (a new user key); writes `NAME.cred` and returns its
    /// path. Refuses a name that has a credential already unless `renew`.
    pub fn issue(&self, name: &str, o: IssueOptions, renew: bool) -> anyhow::Result<PathBuf> {
        let mut users = self.load()?;
        let exists = users.credentials.iter().any(|c| c.name == name);
        match (exists, renew) {
            (true, false) => bail!("user {name} exists (renew it, or revoke it first)"),
            (false, true) => bail!("no user {name}"),
            _ => {}
        }
        let user = SigningKey::generate(&mut rand::rng());
        let mut id = [0u8; ID_LEN];
        rand::rng().fill_bytes(&mut id);
        let start = now().saturating_add_signed(o.starts_in_secs);
        let cred = Credential {
            id,
            name: name.to_string(),
            user_key: user.public(),
            not_before: start,
            not_after: start.saturating_add(o.valid_secs.max(1)),
            limits: o.limits,
        };
        let bytes = cred.issue(&self.key)?;
        let file = CredentialFile {
            user: name.to_string(),
            credential: hex::encode(&bytes),
            user_secret: hex::encode(user.seed()),
            limits_pass: hex::encode(LimitsPass::for_credential(&cred).issue(&self.key)),
        };
        let path = self.dir.join(format!("{name}.cred"));
        write_private(&path, &file.to_toml_string())?;
        users.credentials.push(Issued {
            name: name.to_string(),
            id: hex::encode(id),
            user_key: hex::encode(user.public()),
            not_before: cred.not_before,
            not_after: cred.not_after,
            rate_kib: o.limits.rate_kib,
            max_sessions: o.limits.max_sessions,
            max_streams: o.limits.max_streams,
            quota_mib: o.limits.quota_mib,
            revoked: false,
        });
        self.save(&users)?;
        Ok(path)
    }

    /// Revokes every credential of `name`; returns how many.
    pub fn revoke(&self, name: &str) -> anyhow::Result<usize> {
        let mut users = self.load()?;
        let mut n = 0;
        for c in users.credentials.iter_mut().filter(|c| c.name == name) {
            if !c.revoked {
                c.revoked = true;
                n += 1;
            }
        }
        if !users.credentials.iter().any(|c| c.name == name) {
            bail!("no user {name}");
        }
        self.save(&users)?;
        Ok(n)
    }

    /// Every credential issued, oldest first.
    pub fn list(&self) -> anyhow::Result<Vec<Issued>> {
        Ok(self.load()?.credentials)
    }
}

/// One line about an issued credential, for `user list` and `user show`.
pub fn describe(c: &Issued) -> String {
    let now = now();
    let state = if c.revoked {
        "revoked"
    } else if now >= c.not_after {
        "expired"
    } else if now < c.not_before {
        "not yet valid"
    } else {
        "valid"
    };
    let limit = |v: u64, unit: &str| {
        if v == 0 {
            "unlimited".to_string()
        } else {
            format!("{v} {unit}")
        }
    };
    format!(
        "{} id {} {state}, {} s left; rate {}, sessions {}, streams {}, quota {}",
        c.name,
        c.id,
        c.not_after.saturating_sub(now),
        limit(u64::from(c.rate_kib), "KiB/s"),
        limit(u64::from(c.max_sessions), ""),
        limit(u64::from(c.max_streams), ""),
        limit(c.quota_mib, "MiB"),
    )
}
