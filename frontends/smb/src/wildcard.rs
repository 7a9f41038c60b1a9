//! Name patterns of QUERY_DIRECTORY (MS-FSA 2.1.4.4): `*`, `?`, and the DOS forms `<`
//! (DOS_STAR), `>` (DOS_QM) and `"` (DOS_DOT).

/// Whether `pattern` has any wildcard; a plain name is looked up instead of listed.
pub fn has_wildcards(pattern: &str) -> bool {
    pattern.contains(['*', '?', '<', '>', '"'])
}

/// Whether `name` matches `pattern`, comparing letters without regard to case as Windows
/// clients expect of patterns. Time is O(pattern × name): the set of name positions each
/// pattern prefix can reach is carried forward, never backtracked (a backtracking matcher
/// takes exponential time on patterns such as `*?*?*?…x`, which any client may send).
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let n: Vec<char> = name.chars().flat_map(char::to_lowercase).collect();
    let last_dot = n.iter().rposition(|&c| c == '.');
    // reach[i]: the pattern so far can end just before n[i].
    let mut reach = vec![false; n.len() + 1];
    reach[0] = true;
    for &c in &p {
        let mut next = vec![false; n.len() + 1];
        for i in (0..=n.len()).filter(|&i| reach[i]) {
            let here = n.get(i).copied();
            match c {
                '*' => next[i..].iter_mut().for_each(|r| *r = true),
                // DOS_STAR: any run of characters, not past the name's last dot.
                '<' => {
                    let limit = last_dot.filter(|&d| d >= i).unwrap_or(n.len());
                    next[i..=limit].iter_mut().for_each(|r| *r = true);
                }
                '?' => {
                    if here.is_some() {
                        next[i + 1] = true;
                    }
                }
                // DOS_QM: any one character but a dot; nothing at a dot or the end.
                '>' => match here {
                    Some('.') | None => next[i] = true,
                    Some(_) => next[i + 1] = true,
                },
                // DOS_DOT: a dot, or nothing at the end of the name.
                '"' => match here {
                    Some('.') => next[i + 1] = true,
                    None => next[i] = true,
                    Some(_) => {}
                },
                literal => {
                    if here == Some(literal) {
                        next[i + 1] = true;
                    }
                }
            }
        }
        reach = next;
    }
    reach[n.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_patterns_take_linear_time() {
        let pattern = format!("{}x", "*?".repeat(100));
        let name = "a".repeat(255);
        assert!(!matches(&pattern, &name));
        assert!(matches(&pattern[..200], &name));
    }

    #[test]
    fn patterns_match_as_windows_does() {
        assert!(matches("*", "anything.txt"));
        assert!(matches("*.TXT", "notes.txt"));
        assert!(!matches("*.txt", "notes.txt.bak"));
        assert!(matches("n?tes.txt", "notes.txt"));
        assert!(!matches("n?tes.txt", "ntes.txt"));
        assert!(matches("<.txt", "a.b.txt"));
        assert!(matches("file>>>.txt", "file1.txt"));
        assert!(matches("file\"txt", "file.txt"));
        assert!(matches("a\"", "a"));
        assert!(!matches("abc", "abcd"));
        assert!(!matches("a>c", "ac"));
        assert!(matches("a>", "a"));
        assert!(matches("<", "no-dot"));
        assert!(!matches("<.doc", "a.doc.txt"));
        assert!(!has_wildcards("plain.txt"));
        assert!(has_wildcards("*.txt"));
    }
}
