//! Text for a person's terminal. Process names, command lines and cgroup
//! paths are chosen by whoever runs the process or makes the cgroup; printed
//! raw, an escape sequence in one of them would rewrite the admin's screen
//! (move the cursor, hide lines, retitle the window) and a newline would
//! forge a line of its own. Every text output passes names through
//! [`printable`]; JSON output stays exact (serde escapes control characters
//! there).

use std::borrow::Cow;

use serde_json::Value;

/// `text` with every character a terminal would act on written as an
/// escape: `\n`, `\r`, `\t`, `\xNN` for the other ASCII controls and DEL,
/// `\u{NNNN}` for the C1 controls and the Unicode controls that reorder or
/// hide what is shown (bidirectional overrides and isolates). Text without
/// them comes back as it is, unallocated.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !needs_escape(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// Every string value in `value` made [`printable`] (keys are the
/// schema's own field names).
pub fn printable_json(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Cow::Owned(escaped) = printable(s) {
                *s = escaped;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(printable_json),
        Value::Object(map) => map.values_mut().for_each(printable_json),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Control characters (C0, DEL, C1) and the format characters that change
/// the order or visibility of the text around them.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_left_alone_and_not_copied() {
        for name in [
            "grep",
            "/user.slice/user-1000.slice/session-2.scope",
            "h\u{fffd}g",
            "日本",
        ] {
            assert!(matches!(printable(name), Cow::Borrowed(n) if n == name));
        }
    }

    #[test]
    fn what_a_terminal_would_act_on_is_written_as_escapes() {
        assert_eq!(
            printable("\u{1b}]0;owned\u{7}\u{1b}[2Jhog"),
            "\\x1b]0;owned\\x07\\x1b[2Jhog"
        );
        assert_eq!(printable("a\nKILLED sshd[1]"), "a\\nKILLED sshd[1]");
        assert_eq!(printable("a\rb\tc\u{7f}"), "a\\rb\\tc\\x7f");
        assert_eq!(printable("\u{9b}31m"), "\\u{009b}31m");
        assert_eq!(printable("evil\u{202e}gpj.exe"), "evil\\u{202e}gpj.exe");
        assert_eq!(printable("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
        assert!(
            !printable("\u{1b}\u{9b}\u{202e}\n")
                .chars()
                .any(needs_escape)
        );
    }
}
