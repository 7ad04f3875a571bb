//! htpasswd files in the bcrypt format that `htpasswd -B` writes and the distribution registry
//! reads: one `user:$2y$cost$salt+hash` line per user (`$2a$` and `$2b$` too), `#` comments and
//! blank lines ignored. Other hash formats (apr1 MD5, SHA-1, crypt, plain text) are refused
//! when the file is read, naming the line, rather than silently never matching.
//!
//! Not for: checking passwords on the request path. bcrypt is slow on purpose (50–250 ms at
//! cost 10–12); [`super::Auth`] runs [`verify`] on the blocking pool and caches successes.

use std::collections::HashMap;
use std::path::Path;

/// The cost `shoal user add` hashes with: what `htpasswd -B` uses by default is 5, too cheap;
/// the distribution registry's documentation and Go's bcrypt default are 10.
pub const HASH_COST: u32 = 10;

/// Lines longer than this are not htpasswd lines (a bcrypt line is the user plus 61 bytes).
const LINE_BYTES_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("cannot read htpasswd file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("htpasswd line {line}: expected `user:bcrypt-hash`")]
    Syntax { line: usize },
    #[error(
        "htpasswd line {line}: user {user:?} has a {found} hash; only bcrypt is accepted \
         (create it with `htpasswd -B` or `shoal user add`)"
    )]
    UnsupportedHash {
        line: usize,
        user: String,
        found: &'static str,
    },
    #[error("htpasswd line {line}: user {user:?} appears twice")]
    Duplicate { line: usize, user: String },
    #[error("invalid user name {0:?}: it must be non-empty, without ':' or control characters")]
    InvalidUser(String),
    #[error("cannot hash the password: {0}")]
    Hash(#[from] bcrypt::BcryptError),
}

/// Users and their bcrypt hashes. `Debug` shows only the user names.
#[derive(Clone, Default)]
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut users: Vec<&String> = self.users.keys().collect();
        users.sort();
        f.debug_struct("Htpasswd").field("users", &users).finish()
    }
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Htpasswd::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Htpasswd, HtpasswdError> {
        let mut users = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let entry = raw.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = entry.split_once(':') else {
                return Err(HtpasswdError::Syntax { line });
            };
            if user.is_empty() || entry.len() > LINE_BYTES_MAX {
                return Err(HtpasswdError::Syntax { line });
            }
            if !is_bcrypt(hash) {
                return Err(HtpasswdError::UnsupportedHash {
                    line,
                    user: user.to_owned(),
                    found: hash_kind(hash),
                });
            }
            if users.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(HtpasswdError::Duplicate {
                    line,
                    user: user.to_owned(),
                });
            }
        }
        Ok(Htpasswd { users })
    }

    pub(crate) fn hash_of(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// `$2a$`, `$2b$` or `$2y$`, a two-digit cost, `$`, then 53 characters of salt and hash.
fn is_bcrypt(hash: &str) -> bool {
    let bytes = hash.as_bytes();
    bytes.len() == 60
        && (hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"))
        && bytes[4].is_ascii_digit()
        && bytes[5].is_ascii_digit()
        && bytes[6] == b'$'
        && bytes[7..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'/')
}

fn hash_kind(hash: &str) -> &'static str {
    if hash.starts_with("$apr1$") {
        "MD5 (apr1, `htpasswd -m`)"
    } else if hash.starts_with("{SHA}") {
        "SHA-1 (`htpasswd -s`)"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "SHA-crypt"
    } else if hash.starts_with("$2") {
        "malformed bcrypt"
    } else {
        "crypt or plain-text"
    }
}

/// Whether `password` matches the bcrypt `hash`. Slow on purpose: call it off the async threads.
pub fn verify(password: &[u8], hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}

/// A `user:$2y$...` line for `password`, in the `$2y$` spelling `htpasswd -B` writes, which
/// Apache's `htpasswd -v` and the distribution registry both read.
pub fn hash_line(user: &str, password: &[u8], cost: u32) -> Result<String, HtpasswdError> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
        return Err(HtpasswdError::InvalidUser(user.to_owned()));
    }
    let hash = bcrypt::hash_with_result(password, cost)?.format_for_version(bcrypt::Version::TwoY);
    Ok(format!("{user}:{hash}"))
}

/// `text` (an htpasswd file) with `user`'s line replaced by `line`, or `line` appended.
/// Comments and other users' lines are kept as they are.
pub fn set_user_line(text: &str, user: &str, line: &str) -> String {
    let prefix = format!("{user}:");
    let mut out = String::with_capacity(text.len() + line.len() + 1);
    let mut replaced = false;
    for existing in text.lines() {
        if existing.trim_start().starts_with(&prefix) {
            if !replaced {
                out.push_str(line);
                out.push('\n');
                replaced = true;
            }
        } else {
            out.push_str(existing);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `htpasswd -nbB alice wonderland` (apache2-utils 2.4, cost 5).
    const HTPASSWD_B_LINE: &str =
        "alice:$2y$05$oP86EruumIGmLm1WziRlFevFZ7nr5HYSLPMdHs0ErkqHPVkVpmjc2";

    #[test]
    fn reads_the_lines_htpasswd_b_writes_and_verifies_them() {
        let file = Htpasswd::parse(&format!(
            "# team\n\n{HTPASSWD_B_LINE}\nbob:$2a$04$oQG4TyyoapBLHsJoNiaX6.1znlN.QsVjI8SHNNXNGNzKE7B3w9DpC\n"
        ))
        .unwrap();
        assert_eq!(file.len(), 2);
        let hash = file.hash_of("alice").unwrap();
        assert!(verify(b"wonderland", hash));
        assert!(!verify(b"Wonderland", hash));
        // `$2a$` spelling of `htpasswd -nbB -C 4 bob builder`.
        assert!(verify(b"builder", file.hash_of("bob").unwrap()));
        assert!(file.hash_of("carol").is_none());
        assert!(!format!("{file:?}").contains("$2y$"));
    }

    #[test]
    fn other_hash_formats_are_refused_naming_the_line() {
        for (line, kind) in [
            ("carol:$apr1$abc$defghijklmnopqrstuvwx", "apr1"),
            ("carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
            ("carol:plaintext", "plain"),
            ("carol:$2y$05$short", "malformed bcrypt"),
        ] {
            let error = Htpasswd::parse(&format!("{HTPASSWD_B_LINE}\n{line}\n")).unwrap_err();
            let message = error.to_string();
            assert!(matches!(
                error,
                HtpasswdError::UnsupportedHash { line: 2, .. }
            ));
            assert!(
                message.contains("line 2") && message.contains(kind),
                "{message}"
            );
        }
        let error = Htpasswd::parse("no colon here\n").unwrap_err();
        assert!(
            matches!(error, HtpasswdError::Syntax { line: 1 }),
            "{error}"
        );
        let error =
            Htpasswd::parse(&format!("{HTPASSWD_B_LINE}\n{HTPASSWD_B_LINE}\n")).unwrap_err();
        assert!(
            matches!(error, HtpasswdError::Duplicate { line: 2, .. }),
            "{error}"
        );
    }

    #[test]
    fn written_lines_are_y_bcrypt_and_replace_the_user_s_old_line() {
        let line = hash_line("alice", b"secret", 4).unwrap();
        assert!(line.starts_with("alice:$2y$04$"), "{line}");
        let text = set_user_line(&format!("# x\n{HTPASSWD_B_LINE}\nbob:y\n"), "alice", &line);
        assert_eq!(text, format!("# x\n{line}\nbob:y\n"));
        let text = set_user_line("", "alice", &line);
        let file = Htpasswd::parse(&text).unwrap();
        assert!(verify(b"secret", file.hash_of("alice").unwrap()));
        assert!(hash_line("a:b", b"x", 4).is_err());
    }
}
