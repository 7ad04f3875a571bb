//! Access rules: who may pull which repositories through the gateway, read from a TOML file
//! (an annotated example is `deploy/gateway-access.toml`).
//!
//! ```toml
//! [groups]
//! team = ["alice", "bob"]
//!
//! [[rule]]
//! repositories = ["team/*", "quay.io/team/*"]
//! groups = ["team"]
//! users = ["ci"]
//!
//! [[rule]]
//! repositories = ["library/*"]
//! anonymous = true
//! ```
//!
//! A user may pull a repository iff some rule that names the user (directly or through a group,
//! or `authenticated = true` for every user) has a pattern matching it; unauthenticated clients
//! only what an `anonymous = true` rule grants. Patterns are the globs of `--prefetch` (`*` any run of characters, `/` included;
//! `?` one character). A pattern whose first component is a registry host (it contains `.` or
//! `:`, or is `localhost`) or a wildcard is matched against the qualified name
//! `namespace/path` (`quay.io/team/*`, `*/team/*` for every namespace, `*` for everything);
//! any other pattern is matched against the path within the gateway's default namespace only
//! (`team/*` is `docker.io/team/*` by default, never `quay.io/team/*`). Docker Hub's official
//! images are `library/<name>`, as clients send them.
//!
//! Not for: authentication (`htpasswd.rs`) or writes (the gateway is read-only).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use shoal_protocol::RepoName;
use shoal_protocol::glob::glob_match;
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot read access rules {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid access rules: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("access rules line {line}: {message}")]
    Invalid { line: usize, message: String },
}

/// Who is asking, as far as the rules are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who<'a> {
    Anonymous,
    User(&'a str),
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    rule: Vec<Spanned<RuleFile>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    repositories: Vec<Spanned<String>>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    #[serde(default)]
    anonymous: bool,
    #[serde(default)]
    authenticated: bool,
}

#[derive(Debug, Clone)]
struct Rule {
    patterns: Vec<Pattern>,
    /// The rule's users, its groups' members included.
    users: HashSet<String>,
    anonymous: bool,
    /// Every authenticated user.
    authenticated: bool,
}

#[derive(Debug, Clone)]
struct Pattern {
    glob: String,
    /// Matched against `namespace/path` rather than the path in the default namespace.
    qualified: bool,
}

impl Pattern {
    fn parse(glob: &str) -> Result<Pattern, String> {
        let valid = !glob.is_empty()
            && glob
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:*?[]".contains(&b));
        if !valid {
            return Err(format!(
                "invalid repository pattern {glob:?}: use lower-case names, '/', and the \
                 wildcards '*' and '?'"
            ));
        }
        let first = glob.split('/').next().unwrap_or_default();
        let qualified = first.contains(['.', ':', '*', '?']) || first == "localhost";
        Ok(Pattern {
            glob: glob.to_owned(),
            qualified,
        })
    }

    fn matches(&self, repo: &RepoName, default_namespace: &str) -> bool {
        if self.qualified {
            glob_match(&self.glob, &repo.qualified())
        } else {
            repo.namespace() == default_namespace && glob_match(&self.glob, repo.path())
        }
    }

    /// Whether the pattern can match `path` in some namespace.
    fn matches_path_somewhere(&self, path: &str) -> bool {
        if !self.qualified {
            return glob_match(&self.glob, path);
        }
        match self.glob.split_once('/') {
            // A leading `*` may span the namespace and part of the path.
            Some((first, rest)) => {
                glob_match(rest, path) || (first.contains('*') && glob_match(&self.glob, path))
            }
            None => glob_match(&self.glob, path),
        }
    }
}

/// The parsed rules. An empty set grants nothing.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    rules: Vec<Rule>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

impl AccessRules {
    pub fn load(path: &Path) -> Result<AccessRules, AccessError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessError::Read {
            path: path.display().to_string(),
            source,
        })?;
        AccessRules::parse(&text)
    }

    pub fn parse(text: &str) -> Result<AccessRules, AccessError> {
        let file: RulesFile = toml::from_str(text)?;
        let invalid = |offset: usize, message: String| AccessError::Invalid {
            line: line_of(text, offset),
            message,
        };
        let mut rules = Vec::with_capacity(file.rule.len());
        for spanned in file.rule {
            let start = spanned.span().start;
            let rule = spanned.into_inner();
            if rule.repositories.is_empty() {
                return Err(invalid(
                    start,
                    "a rule needs at least one repository pattern".into(),
                ));
            }
            let mut users: HashSet<String> = rule.users.into_iter().collect();
            for group in rule.groups {
                let members = file.groups.get(group.get_ref()).ok_or_else(|| {
                    invalid(
                        group.span().start,
                        format!("no group {:?} in [groups]", group.get_ref()),
                    )
                })?;
                users.extend(members.iter().cloned());
            }
            if users.is_empty() && !rule.anonymous && !rule.authenticated {
                return Err(invalid(
                    start,
                    "a rule grants nobody: give it users, groups, authenticated = true or \
                     anonymous = true"
                        .into(),
                ));
            }
            let patterns = rule
                .repositories
                .iter()
                .map(|p| Pattern::parse(p.get_ref()).map_err(|m| invalid(p.span().start, m)))
                .collect::<Result<_, _>>()?;
            rules.push(Rule {
                patterns,
                users,
                anonymous: rule.anonymous,
                authenticated: rule.authenticated,
            });
        }
        Ok(AccessRules { rules })
    }

    /// Every authenticated user may pull everything: the rules when no file is given.
    pub fn any_user_pulls_everything() -> AccessRules {
        AccessRules {
            rules: vec![Rule {
                patterns: vec![Pattern {
                    glob: "*".into(),
                    qualified: true,
                }],
                users: HashSet::new(),
                anonymous: false,
                authenticated: true,
            }],
        }
    }

    fn rules_for<'a>(&'a self, who: Who<'a>) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |rule| match who {
            Who::Anonymous => rule.anonymous,
            Who::User(user) => rule.anonymous || rule.authenticated || rule.users.contains(user),
        })
    }

    /// Whether `who` may pull `repo`; requests without `?ns=` are in `default_namespace`.
    pub fn may_pull(&self, who: Who<'_>, repo: &RepoName, default_namespace: &str) -> bool {
        self.rules_for(who).any(|rule| {
            rule.patterns
                .iter()
                .any(|p| p.matches(repo, default_namespace))
        })
    }

    /// Whether `who` may pull the repository `path` in at least one namespace: what a token
    /// may carry in its scope, since a token request names no namespace. Every request is
    /// checked against [`AccessRules::may_pull`] as well.
    pub fn may_pull_path_somewhere(&self, who: Who<'_>, path: &str) -> bool {
        self.rules_for(who)
            .any(|rule| rule.patterns.iter().any(|p| p.matches_path_somewhere(path)))
    }

    /// Whether unauthenticated clients may pull anything at all.
    pub fn grants_anonymous(&self) -> bool {
        self.rules.iter().any(|rule| rule.anonymous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
[groups]
team = ["alice", "bob"]

[[rule]]
repositories = ["team/*", "quay.io/team/*"]
groups = ["team"]

[[rule]]
repositories = ["*/mirror/*"]
users = ["ci"]

[[rule]]
repositories = ["library/alpine"]
anonymous = true
"#;

    fn repo(namespace: &str, path: &str) -> RepoName {
        RepoName::new(namespace, path).unwrap()
    }

    #[test]
    fn users_pull_what_their_rules_and_groups_grant() {
        let rules = AccessRules::parse(RULES).unwrap();
        let alice = Who::User("alice");
        assert!(rules.may_pull(alice, &repo("docker.io", "team/app"), "docker.io"));
        assert!(rules.may_pull(alice, &repo("docker.io", "team/app/sub"), "docker.io"));
        assert!(rules.may_pull(alice, &repo("quay.io", "team/app"), "docker.io"));
        assert!(!rules.may_pull(alice, &repo("docker.io", "other/app"), "docker.io"));
        // A short pattern is the default namespace only.
        assert!(!rules.may_pull(alice, &repo("ghcr.io", "team/app"), "docker.io"));
        assert!(rules.may_pull(alice, &repo("ghcr.io", "team/app"), "ghcr.io"));
        // Anonymous grants are everybody's.
        assert!(rules.may_pull(alice, &repo("docker.io", "library/alpine"), "docker.io"));
        assert!(rules.may_pull(
            Who::Anonymous,
            &repo("docker.io", "library/alpine"),
            "docker.io"
        ));
        assert!(!rules.may_pull(Who::Anonymous, &repo("docker.io", "team/app"), "docker.io"));
        // A wildcard first component means any namespace.
        let ci = Who::User("ci");
        assert!(rules.may_pull(ci, &repo("ghcr.io", "mirror/x"), "docker.io"));
        assert!(!rules.may_pull(ci, &repo("ghcr.io", "team/x"), "docker.io"));
        assert!(!rules.may_pull(
            Who::User("mallory"),
            &repo("docker.io", "team/a"),
            "docker.io"
        ));
        assert!(rules.grants_anonymous());
        assert!(rules.may_pull_path_somewhere(alice, "team/app"));
        assert!(rules.may_pull_path_somewhere(ci, "mirror/app"));
        assert!(!rules.may_pull_path_somewhere(alice, "other/app"));
        assert!(!AccessRules::default().may_pull(alice, &repo("docker.io", "team/a"), "docker.io"));
        let open = AccessRules::any_user_pulls_everything();
        assert!(open.may_pull(alice, &repo("quay.io", "x/y"), "docker.io"));
        assert!(!open.may_pull(Who::Anonymous, &repo("quay.io", "x/y"), "docker.io"));
        let every_user =
            AccessRules::parse("[[rule]]\nrepositories=[\"a/*\"]\nauthenticated=true\n");
        assert!(
            every_user
                .unwrap()
                .may_pull(ci, &repo("docker.io", "a/b"), "docker.io")
        );
    }

    #[test]
    fn the_deploy_example_reads_as_its_comments_say() {
        let rules = AccessRules::parse(include_str!("../../../deploy/gateway-access.toml"));
        let rules = rules.unwrap();
        let may = |who, namespace, path| rules.may_pull(who, &repo(namespace, path), "docker.io");
        assert!(may(Who::User("alice"), "quay.io", "team/app"));
        assert!(!may(Who::User("alice"), "docker.io", "other/app"));
        assert!(may(Who::User("release-bot"), "docker.io", "library/alpine"));
        assert!(may(Who::User("anyone"), "docker.io", "library/alpine"));
        assert!(!may(Who::User("anyone"), "docker.io", "team/app"));
        assert!(!may(Who::Anonymous, "docker.io", "library/alpine"));
    }

    #[test]
    fn invalid_files_name_the_line() {
        for (text, line, needle) in [
            (
                "[[rule]]\nrepositories = [\"a/*\"]\ngroups = [\"nope\"]\n",
                3,
                "nope",
            ),
            ("[[rule]]\nrepositories = [\"a/*\"]\n", 1, "grants nobody"),
            (
                "\n[[rule]]\nrepositories = [\"Team/*\"]\nusers = [\"a\"]\n",
                3,
                "Team",
            ),
        ] {
            let error = AccessRules::parse(text).unwrap_err();
            assert!(
                matches!(&error, AccessError::Invalid { line: l, .. } if *l == line),
                "{text:?}: {error}"
            );
            assert!(error.to_string().contains(needle), "{error}");
        }
        let error =
            AccessRules::parse("[[rule]]\nrepositories = [\"a\"]\nuser = [\"x\"]\n").unwrap_err();
        assert!(error.to_string().contains("line 3"), "{error}");
    }
}
