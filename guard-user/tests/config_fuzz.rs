//! The policy parser meets whatever an admin (or a broken editor) writes:
//! it must answer Ok or Err, never panic, and every error must name the file
//! and a line and column.

use guard::config::{Config, ConfigError, DEFAULT_POLICY};
use proptest::prelude::*;

const ORIGIN: &str = "/etc/guard/guard.toml";

/// Parses and checks the answer's shape; panics (fails the case) otherwise.
fn parse_checked(text: &str) {
    match Config::parse(text, ORIGIN) {
        Ok(c) => assert!(!c.scopes.is_empty(), "a valid policy has a scope"),
        Err(ConfigError::Invalid { path, errors }) => {
            assert_eq!(path, ORIGIN);
            assert!(!errors.is_empty(), "an invalid policy names its mistakes");
            let lines = text.split('\n').count();
            for e in &errors {
                assert!(e.line >= 1 && e.line <= lines, "{e:?} in {lines} lines");
                assert!(e.column >= 1, "{e:?}");
                assert!(!e.message.contains('\n'), "{e:?}");
            }
            let shown = ConfigError::Invalid {
                path: path.clone(),
                errors: errors.clone(),
            }
            .to_string();
            assert_eq!(shown.lines().count(), errors.len(), "{shown}");
            assert!(shown.lines().all(|l| l.starts_with(ORIGIN)), "{shown}");
        }
        Err(other) => panic!("parse does no I/O, got {other}"),
    }
}

#[derive(Clone, Debug)]
enum Edit {
    Flip {
        at: usize,
        bit: u8,
    },
    Insert {
        at: usize,
        byte: u8,
    },
    Delete {
        at: usize,
        len: usize,
    },
    /// Copies a line of the default policy elsewhere: keeps the text
    /// TOML-shaped so the semantic checks get exercised, not only the lexer.
    CopyLine {
        from: usize,
        to: usize,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes that matter to TOML and to regexes/globs, plus anything.
    let byte = prop_oneof![
        prop::sample::select(b"[]{}\"'=#\n\\.,-*?()^$|/0123456789 ".to_vec()),
        any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip { at, bit }),
        (any::<usize>(), byte).prop_map(|(at, byte)| Edit::Insert { at, byte }),
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), any::<usize>()).prop_map(|(from, to)| Edit::CopyLine { from, to }),
    ]
}

fn apply(edits: &[Edit]) -> String {
    let mut bytes = DEFAULT_POLICY.as_bytes().to_vec();
    for e in edits {
        if bytes.is_empty() {
            break;
        }
        let n = bytes.len();
        match *e {
            Edit::Flip { at, bit } => bytes[at % n] ^= 1 << bit,
            Edit::Insert { at, byte } => bytes.insert(at % (n + 1), byte),
            Edit::Delete { at, len } => {
                let at = at % n;
                bytes.drain(at..(at + len).min(n));
            }
            Edit::CopyLine { from, to } => {
                let lines: Vec<&str> = DEFAULT_POLICY.lines().collect();
                let line = format!("{}\n", lines[from % lines.len()]);
                // Insert at a line start so the copy stays a line of its own.
                let starts: Vec<usize> = std::iter::once(0)
                    .chain(
                        bytes
                            .iter()
                            .enumerate()
                            .filter(|(_, b)| **b == b'\n')
                            .map(|(i, _)| i + 1),
                    )
                    .collect();
                let at = starts[to % starts.len()];
                bytes.splice(at..at, line.bytes());
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        parse_checked(&text);
    }

    #[test]
    fn toml_shaped_strings_never_panic(
        text in concat!(
            "(",
            "(dry_run|budget_ms|window_ms|verdict_interval_ms|min_share_percent|comm|cmdline|",
            "cgroups|uids|prefer|avoid|command|timeout_ms|paths|kill|kill_watched_cgroup|[a-z]{1,3})",
            " ?= ?(\"[^\"\n]{0,12}\"|[0-9-]{1,5}|true|\\[(\"[/*a-z.()|^$-]{0,8}\",?){0,3}\\])\n",
            "|\\[(protect|order|hook|[a-z]{1,3})\\]\n|\\[\\[scope\\]\\]\n|#[^\n]{0,10}\n",
            "){0,12}"
        )
    ) {
        parse_checked(&text);
    }

    #[test]
    fn mutated_default_policies_never_panic(edits in prop::collection::vec(edit(), 1..8)) {
        parse_checked(&apply(&edits));
    }
}

#[test]
fn the_unmutated_default_policy_parses() {
    Config::parse(DEFAULT_POLICY, ORIGIN).expect("the default policy parses");
}
