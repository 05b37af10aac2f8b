//! A line diff between two workflow versions: longest common subsequence of lines, shown as
//! kept / removed / added lines and as a unified diff text.
//!
//! Workflow texts are small (the DSL caps their size), so the quadratic table is cheap; above
//! [`MAX_CELLS`] the diff degrades to "every old line removed, every new line added", which is
//! still correct, only not minimal.

use serde_json::{Value, json};

/// Largest LCS table computed (old lines × new lines).
const MAX_CELLS: usize = 4_000_000;
/// Unchanged lines shown around a change in the unified text.
const CONTEXT: usize = 3;

/// One line of a diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
}

impl Line<'_> {
    /// `{"op": " "|"-"|"+", "text": …}`
    pub fn to_json(&self) -> Value {
        let (op, text) = match self {
            Line::Same(t) => (" ", t),
            Line::Removed(t) => ("-", t),
            Line::Added(t) => ("+", t),
        };
        json!({ "op": op, "text": text })
    }

    fn prefixed(&self) -> String {
        match self {
            Line::Same(t) => format!(" {t}"),
            Line::Removed(t) => format!("-{t}"),
            Line::Added(t) => format!("+{t}"),
        }
    }
}

/// The lines of `old` and `new`, aligned.
pub fn lines<'a>(old: &'a str, new: &'a str) -> Vec<Line<'a>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Common prefix and suffix first: most edits are local.
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut out: Vec<Line<'a>> = a[..prefix].iter().map(|l| Line::Same(l)).collect();
    if ma.len().saturating_mul(mb.len()) > MAX_CELLS {
        out.extend(ma.iter().map(|l| Line::Removed(l)));
        out.extend(mb.iter().map(|l| Line::Added(l)));
    } else {
        // table[i][j] = LCS length of ma[i..] and mb[j..]
        let width = mb.len() + 1;
        let mut table = vec![0u32; (ma.len() + 1) * width];
        for i in (0..ma.len()).rev() {
            for j in (0..mb.len()).rev() {
                table[i * width + j] = if ma[i] == mb[j] {
                    table[(i + 1) * width + j + 1] + 1
                } else {
                    table[(i + 1) * width + j].max(table[i * width + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < ma.len() && j < mb.len() {
            if ma[i] == mb[j] {
                out.push(Line::Same(ma[i]));
                i += 1;
                j += 1;
            } else if table[(i + 1) * width + j] >= table[i * width + j + 1] {
                out.push(Line::Removed(ma[i]));
                i += 1;
            } else {
                out.push(Line::Added(mb[j]));
                j += 1;
            }
        }
        out.extend(ma[i..].iter().map(|l| Line::Removed(l)));
        out.extend(mb[j..].iter().map(|l| Line::Added(l)));
    }
    out.extend(a[a.len() - suffix..].iter().map(|l| Line::Same(l)));
    out
}

/// A unified diff (`---`/`+++` headers, `@@` hunks with [`CONTEXT`] lines); empty when the
/// texts are equal.
pub fn unified(lines: &[Line<'_>], old_name: &str, new_name: &str) -> String {
    let changed: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !matches!(l, Line::Same(_)))
        .map(|(i, _)| i)
        .collect();
    if changed.is_empty() {
        return String::new();
    }
    // Group changes whose context overlaps into hunks of line-index ranges.
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &i in &changed {
        let start = i.saturating_sub(CONTEXT);
        let end = (i + CONTEXT + 1).min(lines.len());
        match hunks.last_mut() {
            Some(last) if start <= last.1 => last.1 = end,
            _ => hunks.push((start, end)),
        }
    }
    let mut text = format!("--- {old_name}\n+++ {new_name}\n");
    for (start, end) in hunks {
        // 1-based line numbers of the hunk's first line in each text.
        let old_before = lines[..start]
            .iter()
            .filter(|l| !matches!(l, Line::Added(_)))
            .count();
        let new_before = lines[..start]
            .iter()
            .filter(|l| !matches!(l, Line::Removed(_)))
            .count();
        let hunk = &lines[start..end];
        let old_count = hunk.iter().filter(|l| !matches!(l, Line::Added(_))).count();
        let new_count = hunk
            .iter()
            .filter(|l| !matches!(l, Line::Removed(_)))
            .count();
        text.push_str(&format!(
            "@@ -{},{old_count} +{},{new_count} @@\n",
            old_before + usize::from(old_count > 0),
            new_before + usize::from(new_count > 0)
        ));
        for line in hunk {
            text.push_str(&line.prefixed());
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_no_changes() {
        let lines = lines("a\nb\n", "a\nb\n");
        assert!(lines.iter().all(|l| matches!(l, Line::Same(_))));
        assert_eq!(unified(&lines, "x", "y"), "");
    }

    #[test]
    fn a_changed_line_is_removed_then_added() {
        let lines = lines(
            "name: a\nsteps:\n  - log: hi\n",
            "name: a\nsteps:\n  - log: bye\n",
        );
        assert_eq!(
            lines,
            vec![
                Line::Same("name: a"),
                Line::Same("steps:"),
                Line::Removed("  - log: hi"),
                Line::Added("  - log: bye"),
            ]
        );
        let text = unified(&lines, "a v1", "a v2");
        assert_eq!(
            text,
            "--- a v1\n+++ a v2\n@@ -1,3 +1,3 @@\n name: a\n steps:\n-  - log: hi\n+  - log: bye\n"
        );
    }

    #[test]
    fn insertions_in_the_middle_are_minimal() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
        let new = "1\n2\n3\n4\n5\nnew\n6\n7\n8\n9\n10\n";
        let lines = lines(old, new);
        let changes: Vec<_> = lines
            .iter()
            .filter(|l| !matches!(l, Line::Same(_)))
            .collect();
        assert_eq!(changes, vec![&Line::Added("new")]);
        let text = unified(&lines, "o", "n");
        assert!(text.contains("@@ -3,6 +3,7 @@"), "{text}");
    }

    #[test]
    fn interleaved_edits() {
        let lines = lines("a\nb\nc\nd\n", "a\nx\nc\ny\n");
        let ops: String = lines
            .iter()
            .map(|l| match l {
                Line::Same(_) => '=',
                Line::Removed(_) => '-',
                Line::Added(_) => '+',
            })
            .collect();
        assert_eq!(ops, "=-+=-+");
    }
}
