//! A policy file's text into its raw tables, with every mistake in it.
//!
//! Serde stops at the first key that does not fit. Here the TOML parser
//! recovers after a syntax error, and a key that does not fit (unknown, or
//! a value of the wrong type) is set aside and the file deserialized again,
//! so one run of `guard config check` names every mistake, not the one
//! serde happened to meet first.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::{
    Spanned,
    de::{DeTable, DeValue, Deserializer},
};

/// How many mistakes one file may show before the rest go unsaid.
const MAX_ERRORS: usize = 64;

/// The file deserialized, if it could be once the keys that do not fit
/// were set aside, and every mistake as (span, message).
pub(super) fn deserialize<T: DeserializeOwned>(
    text: &str,
) -> (Option<T>, Vec<(Range<usize>, String)>) {
    let (mut doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // A document the parser had to repair says nothing reliable about
        // its keys: the syntax errors are the mistakes, the first of each
        // line (the parser's recovery can trip again on the rest of it).
        let mut lines = Vec::new();
        let mut found = Vec::new();
        for e in &syntax {
            let line = text[..span(e).start.min(text.len())].matches('\n').count();
            if !lines.contains(&line) {
                lines.push(line);
                found.push((span(e), e.message().to_owned()));
            }
        }
        found.truncate(MAX_ERRORS);
        return (None, found);
    }
    let whole = doc.span();
    let mut found = Vec::new();
    loop {
        let error = match T::deserialize(Deserializer::from(doc.clone())) {
            Ok(value) => return (Some(value), found),
            Err(e) => e,
        };
        let at = span(&error);
        found.push((at.clone(), error.message().to_owned()));
        // An error of the whole document (or of none of it) points at no
        // key to set aside.
        let located = error.span().is_some() && at != whole;
        if !located || found.len() >= MAX_ERRORS || !set_aside(doc.get_mut(), at.start) {
            return (None, found);
        }
    }
}

fn span(e: &toml::de::Error) -> Range<usize> {
    e.span().unwrap_or(0..0)
}

/// Removes the innermost key whose name or value holds `at`; false when no
/// key does.
fn set_aside(table: &mut DeTable<'_>, at: usize) -> bool {
    let Some(key) = table
        .iter()
        .find(|(k, v)| k.span().contains(&at) || holds(v, at))
        .map(|(k, _)| k.clone())
    else {
        return false;
    };
    let deeper = match table.get_mut(&key).map(Spanned::get_mut) {
        Some(DeValue::Table(inner)) => set_aside(inner, at),
        // An array of tables ([[scope]]): the key inside the element.
        Some(DeValue::Array(items)) => items.iter_mut().any(|item| match item.get_mut() {
            DeValue::Table(inner) => set_aside(inner, at),
            _ => false,
        }),
        _ => false,
    };
    if !deeper {
        table.remove(&key);
    }
    true
}

/// Whether `value`, or anything in it, spans `at`. (The span of an array
/// of tables is its first element's.)
fn holds(value: &Spanned<DeValue<'_>>, at: usize) -> bool {
    value.span().contains(&at)
        || match value.get_ref() {
            DeValue::Array(items) => items.iter().any(|item| holds(item, at)),
            DeValue::Table(inner) => inner
                .iter()
                .any(|(k, v)| k.span().contains(&at) || holds(v, at)),
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        a: u64,
        #[serde(default)]
        b: u64,
        #[serde(default)]
        list: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        #[serde(default)]
        n: u64,
    }

    fn lines(text: &str, found: &[(Range<usize>, String)]) -> Vec<usize> {
        let mut at: Vec<usize> = found
            .iter()
            .map(|(s, _)| text[..s.start].matches('\n').count() + 1)
            .collect();
        at.sort_unstable();
        at
    }

    #[test]
    fn every_key_that_does_not_fit_is_found_in_one_run() {
        let text = "a = 1\nzzz = 2\nb = \"x\"\n[[list]]\nn = 1\n[[list]]\nn = true\nm = 3\n";
        let (doc, found) = deserialize::<Doc>(text);
        assert_eq!(lines(text, &found), [2, 3, 7, 8], "{found:?}");
        // What is left once they are set aside still reads.
        let doc = doc.expect("the rest deserializes");
        assert_eq!((doc.a, doc.b, doc.list.len()), (1, 0, 2));
    }

    #[test]
    fn a_file_that_fits_comes_back_whole() {
        let (doc, found) = deserialize::<Doc>("a = 1\nb = 2\n[[list]]\nn = 4\n");
        assert!(found.is_empty(), "{found:?}");
        let doc = doc.expect("parsed");
        assert_eq!((doc.a, doc.b, doc.list.len(), doc.list[0].n), (1, 2, 1, 4));
    }

    #[test]
    fn syntax_errors_are_all_reported() {
        let text = "a = \nb = 2\nc = [1,\n";
        let (doc, found) = deserialize::<Doc>(text);
        assert!(doc.is_none());
        assert!(found.len() >= 2, "{found:?}");
    }
}
