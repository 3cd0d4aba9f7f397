//! Editing one `key=value` line of Krita's `kritarc` (KConfig's INI dialect) without touching
//! anything else, and undoing that edit byte for byte: Krita enables a Python plug-in through
//! `[python] enable_<name>=true`. A file with Windows line ends (`\r\n`) keeps them.

/// The result of [`set`]: the new text and what was there before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub text: String,
    /// The key's old value; `None` when the key was absent.
    pub previous: Option<String>,
    /// The `[group]` did not exist and was appended.
    pub created_group: bool,
}

/// Sets `key=value` in `[group]`, adding the key (at the end of the group) or the group (at
/// the end of the file) when missing.
pub fn set(text: &str, group: &str, key: &str, value: &str) -> Edit {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let line = format!("{key}={value}");
    let Some((start, end)) = section(&lines, group) else {
        let eol = line_end(text);
        let mut out = text.to_owned();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(eol);
        }
        if !out.trim().is_empty() {
            out.push_str(eol);
        }
        out.push_str(&format!("[{group}]{eol}{line}{eol}"));
        return Edit {
            text: out,
            previous: None,
            created_group: true,
        };
    };
    if let Some(i) = find_key(&lines[start..end], key).map(|i| i + start) {
        let previous = lines[i].split_once('=').map(|(_, v)| v.to_owned());
        lines[i] = line;
        return Edit {
            text: join(lines, text),
            previous,
            created_group: false,
        };
    }
    // After the group's last non-blank line, so that the blank line between groups stays.
    let last = (start..end)
        .rev()
        .find(|&i| !lines[i].trim().is_empty())
        .unwrap_or(start - 1);
    lines.insert(last + 1, line);
    Edit {
        text: join(lines, text),
        previous: None,
        created_group: false,
    }
}

/// Undoes [`set`]: puts the previous value back, or removes the key (and the group, when it
/// was created and is now empty, with the blank line before it).
pub fn restore(
    text: &str,
    group: &str,
    key: &str,
    previous: Option<&str>,
    created_group: bool,
) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let Some((start, end)) = section(&lines, group) else {
        return text.to_owned();
    };
    let Some(i) = find_key(&lines[start..end], key).map(|i| i + start) else {
        return text.to_owned();
    };
    match previous {
        Some(value) => lines[i] = format!("{key}={value}"),
        None => {
            lines.remove(i);
            let end = end - 1;
            let empty = lines[start..end].iter().all(|l| l.trim().is_empty());
            if created_group && empty {
                lines.drain(start - 1..end);
                if start >= 2 && lines.get(start - 2).is_some_and(|l| l.trim().is_empty()) {
                    lines.remove(start - 2);
                }
            }
        }
    }
    join(lines, text)
}

/// The value of `key` in `[group]`.
pub fn get(text: &str, group: &str, key: &str) -> Option<String> {
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let (start, end) = section(&lines, group)?;
    let i = find_key(&lines[start..end], key)? + start;
    lines[i].split_once('=').map(|(_, v)| v.trim().to_owned())
}

/// The lines of `[group]`'s body: `start..end`, header at `start - 1`.
fn section(lines: &[String], group: &str) -> Option<(usize, usize)> {
    let header = format!("[{group}]");
    let head = lines.iter().position(|l| l.trim() == header)?;
    let end = lines[head + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map_or(lines.len(), |p| head + 1 + p);
    Some((head + 1, end))
}

fn find_key(body: &[String], key: &str) -> Option<usize> {
    body.iter()
        .position(|l| l.split_once('=').is_some_and(|(k, _)| k.trim() == key))
}

/// The file's line end: `\r\n` when it has any, else `\n`.
fn line_end(text: &str) -> &'static str {
    if text.contains("\r\n") { "\r\n" } else { "\n" }
}

fn join(lines: Vec<String>, original: &str) -> String {
    let eol = line_end(original);
    let mut out = lines.join(eol);
    if original.ends_with('\n') || original.is_empty() {
        out.push_str(eol);
    }
    if out == eol {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "enable_tessera_krita";

    fn round_trip(before: &str) -> String {
        let edit = set(before, "python", KEY, "true");
        assert_eq!(get(&edit.text, "python", KEY).as_deref(), Some("true"));
        let after = restore(
            &edit.text,
            "python",
            KEY,
            edit.previous.as_deref(),
            edit.created_group,
        );
        assert_eq!(after, before, "undo restores the file byte for byte");
        edit.text
    }

    #[test]
    fn a_new_group_is_appended_and_removed_again() {
        let text = round_trip("[General]\nfoo=1\n");
        assert_eq!(
            text,
            "[General]\nfoo=1\n\n[python]\nenable_tessera_krita=true\n"
        );
        assert_eq!(round_trip(""), "[python]\nenable_tessera_krita=true\n");
    }

    #[test]
    fn windows_line_ends_are_kept() {
        let text = round_trip("[General]\r\nfoo=1\r\n");
        assert_eq!(
            text,
            "[General]\r\nfoo=1\r\n\r\n[python]\r\nenable_tessera_krita=true\r\n"
        );
        round_trip("[General]\r\na=1\r\n\r\n[python]\r\nenable_other=true\r\n");
    }

    #[test]
    fn an_existing_group_gets_the_key_at_its_end() {
        let before = "[General]\na=1\n\n[python]\nenable_other=true\n\n[Zoom]\nz=2\n";
        let text = round_trip(before);
        assert_eq!(
            text,
            "[General]\na=1\n\n[python]\nenable_other=true\nenable_tessera_krita=true\n\n[Zoom]\nz=2\n"
        );
    }

    #[test]
    fn a_previous_value_is_replaced_and_put_back() {
        let before = "[python]\nenable_tessera_krita=false\n";
        let edit = set(before, "python", KEY, "true");
        assert_eq!(edit.previous.as_deref(), Some("false"));
        assert_eq!(edit.text, "[python]\nenable_tessera_krita=true\n");
        round_trip(before);
    }

    #[test]
    fn other_groups_with_the_same_key_are_not_touched() {
        let before = "[pythonx]\nenable_tessera_krita=false\n";
        let edit = set(before, "python", KEY, "true");
        assert!(edit.text.starts_with(before));
        assert_eq!(get(before, "python", KEY), None);
        round_trip(before);
    }
}
