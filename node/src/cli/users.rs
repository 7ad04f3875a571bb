//! `shoal user add --htpasswd FILE USER`: adds a gateway user, or replaces the user's password,
//! in an htpasswd file, as a bcrypt line that Apache's `htpasswd -v` and the distribution
//! registry read too. The password comes from standard input (its first line), never from the
//! command line, where other users of the host could read it. A running node picks the change
//! up on SIGHUP.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use shoal_gateway::auth::htpasswd;

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add USER to the htpasswd file, or set a new password; the password is read from stdin.
    Add {
        /// The htpasswd file, created if missing.
        #[arg(long, value_name = "FILE")]
        htpasswd: PathBuf,
        /// Read the password from stdin without prompting (it is read from stdin either way).
        #[arg(long)]
        password_stdin: bool,
        /// bcrypt cost: each step doubles the work of every check [default: 10]
        #[arg(long, value_name = "COST", default_value_t = htpasswd::HASH_COST,
              value_parser = clap::value_parser!(u32).range(10..=16))]
        cost: u32,
        user: String,
    },
}

pub fn run(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            htpasswd: path,
            password_stdin,
            cost,
            user,
        } => {
            let stdin = std::io::stdin();
            if !password_stdin && stdin.is_terminal() {
                eprint!("password for {user}: ");
                std::io::stderr().flush()?;
            }
            let mut password = String::new();
            stdin
                .lock()
                .read_line(&mut password)
                .context("cannot read the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                anyhow::bail!("empty password");
            }
            add(&path, &user, password.as_bytes(), cost)?;
            eprintln!("user {user} written to {}", path.display());
            Ok(())
        }
    }
}

fn add(path: &Path, user: &str, password: &[u8], cost: u32) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let line = htpasswd::hash_line(user, password, cost)?;
    let updated = htpasswd::set_user_line(&text, user, &line);
    // Checked before writing, so a file this leaves is one the node reads.
    htpasswd::Htpasswd::parse(&updated)
        .with_context(|| format!("{} has lines the node would refuse", path.display()))?;
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, updated)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_twice_replaces_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        add(&path, "alice", b"one", 4).unwrap();
        add(&path, "bob", b"two", 4).unwrap();
        add(&path, "alice", b"three", 4).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let line = text.lines().next().unwrap();
        let hash = line.strip_prefix("alice:").unwrap();
        assert!(htpasswd::verify(b"three", hash));
        assert!(!htpasswd::verify(b"one", hash));
    }
}
