//! Name patterns of QUERY_DIRECTORY (MS-FSA 2.1.4.4): `*`, `?`, and the DOS forms `<`
//! (DOS_STAR), `>` (DOS_QM) and `"` (DOS_DOT).

/// Whether `pattern` has any wildcard; a plain name is looked up instead of listed.
pub fn has_wildcards(pattern: &str) -> bool {
    pattern.contains(['*', '?', '<', '>', '"'])
}

/// Whether `name` matches `pattern`, comparing letters without regard to case as Windows
/// clients expect of patterns.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let n: Vec<char> = name.chars().flat_map(char::to_lowercase).collect();
    match_at(&p, &n)
}

fn match_at(p: &[char], n: &[char]) -> bool {
    let Some((&first, rest)) = p.split_first() else {
        return n.is_empty();
    };
    match first {
        '*' => (0..=n.len()).any(|skip| match_at(rest, &n[skip..])),
        // DOS_STAR: any run of characters up to the name's last dot.
        '<' => {
            let last_dot = n.iter().rposition(|&c| c == '.');
            (0..=n.len())
                .filter(|&skip| last_dot.is_none_or(|d| skip <= d))
                .any(|skip| match_at(rest, &n[skip..]))
        }
        '?' => !n.is_empty() && match_at(rest, &n[1..]),
        // DOS_QM: any one character, or nothing at a dot or the end.
        '>' => {
            (n.first().is_some_and(|&c| c != '.') && match_at(rest, &n[1..])) || match_at(rest, n)
        }
        // DOS_DOT: a dot, or nothing at the end of the name.
        '"' => {
            (n.first() == Some(&'.') && match_at(rest, &n[1..]))
                || (n.is_empty() && match_at(rest, n))
        }
        c => n.first() == Some(&c) && match_at(rest, &n[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!has_wildcards("plain.txt"));
        assert!(has_wildcards("*.txt"));
    }
}
