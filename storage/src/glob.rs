//! Glob patterns over bytes, with Redis's syntax (KEYS, SCAN MATCH):
//! `*` any run of bytes, `?` one byte, `[abc]` / `[a-z]` / `[^a]` a class,
//! and `\x` the byte `x` itself.
//!
//! Matching is iterative with one backtrack point (the last `*`), so it runs
//! in O(pattern × key) time at worst and never recurses: a hostile pattern
//! cannot blow the stack.

/// Does `text` match the glob `pattern`?
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Where to resume after the last '*': (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next_p)) = match_class(pattern, p, text[t]) {
                        if matched {
                            p = next_p;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        // An unclosed '[' is a literal.
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                byte => {
                    if byte == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        // Mismatch: let the last '*' swallow one more byte, or fail.
        match star {
            Some((star_p, star_t)) => {
                p = star_p;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Matches `byte` against the class starting at `pattern[open]` (a '[').
/// Returns whether it matched and the index after the closing ']', or `None`
/// when the class is not closed.
fn match_class(pattern: &[u8], open: usize, byte: u8) -> Option<(bool, usize)> {
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let current = *pattern.get(i)?;
        if current == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        let low = if current == b'\\' {
            i += 1;
            *pattern.get(i)?
        } else {
            current
        };
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&b| b != b']') {
            let high = pattern[i + 2];
            let (low, high) = if low <= high {
                (low, high)
            } else {
                (high, low)
            };
            matched |= (low..=high).contains(&byte);
            i += 3;
        } else {
            matched |= low == byte;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;
    use proptest::prelude::*;

    fn m(pattern: &str, text: &str) -> bool {
        glob_match(pattern.as_bytes(), text.as_bytes())
    }

    #[test]
    fn redis_examples() {
        assert!(m("h?llo", "hello"));
        assert!(m("h?llo", "hallo"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h*llo", "hllo"));
        assert!(m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hello"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(!m("h[a-b]llo", "hcllo"));
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("user:*", "user:42"));
        assert!(!m("user:*", "users"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*b*c*", "xxaxxcxxbxx"));
        assert!(m("[", "["));
        assert!(m("[]]", "]"));
        assert!(!m("", "a"));
        assert!(m("", ""));
    }

    proptest! {
        #[test]
        fn literal_patterns_match_only_themselves(text in "[a-z:]{0,12}", other in "[a-z:]{0,12}") {
            prop_assert!(glob_match(text.as_bytes(), text.as_bytes()));
            prop_assert_eq!(glob_match(text.as_bytes(), other.as_bytes()), text == other);
        }

        #[test]
        fn prefix_star_is_a_prefix_test(prefix in "[a-z]{0,6}", text in "[a-z]{0,10}") {
            let pattern = format!("{prefix}*");
            prop_assert_eq!(glob_match(pattern.as_bytes(), text.as_bytes()), text.starts_with(&prefix));
        }

        #[test]
        fn never_panics(pattern in proptest::collection::vec(any::<u8>(), 0..24), text in proptest::collection::vec(any::<u8>(), 0..24)) {
            let _ = glob_match(&pattern, &text);
        }
    }
}
