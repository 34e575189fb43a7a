//! `[order]`: which processes guard takes first, and which last.

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use super::check::{Errors, regexes};

/// The file's preferences among possible victims.
#[derive(Debug, Clone)]
pub struct Order {
    prefer: Vec<Regex>,
    avoid: Vec<Regex>,
}

impl Order {
    /// No prefer or avoid rule: names play no part in the victim order.
    pub fn is_empty(&self) -> bool {
        self.prefer.is_empty() && self.avoid.is_empty()
    }

    /// +1 if comm matches a prefer regex, -1 if it matches an avoid regex
    /// (avoid wins if both), else 0.
    pub fn rank(&self, comm: &str) -> i8 {
        if self.avoid.iter().any(|re| re.is_match(comm)) {
            -1
        } else if self.prefer.iter().any(|re| re.is_match(comm)) {
            1
        } else {
            0
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawOrder {
    prefer: Vec<Spanned<String>>,
    avoid: Vec<Spanned<String>>,
}

pub(super) fn parse(errors: &mut Errors<'_>, raw: &RawOrder) -> Order {
    Order {
        prefer: regexes(errors, "order.prefer", &raw.prefer),
        avoid: regexes(errors, "order.avoid", &raw.avoid),
    }
}
