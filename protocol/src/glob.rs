//! Shell-style globs over names: `*` matches any run of characters (slashes included) and `?`
//! one. Used by the node's `--prefetch` patterns and the gateway's access rules, so an operator
//! writes patterns the same way in both.

/// Whether `text` matches `pattern`, where `*` matches any run of characters and `?` one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            backtrack = Some((p, t));
            p += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            t = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("team/app:1", "team/app:1"));
        assert!(glob_match("team/*:*", "team/app:1"));
        assert!(glob_match(
            "docker.io/library/*:3.?0",
            "docker.io/library/alpine:3.20"
        ));
        assert!(!glob_match("team/app:1", "team/app:10"));
        assert!(!glob_match("team/*:2", "team/app:1"));
        assert!(glob_match("*a*b*", "xaybz b"));
    }
}
