//! Measured values as a person reads them in a scenario's one-line
//! summary (the `measured` column of `cargo xtask test`'s table): a value
//! the scenario did not get to measure reads "-".

use serde_json::Value;

/// A number with `digits` decimals, or "-".
pub(crate) fn fmt_num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".to_owned())
}

/// An array of numbers, each without decimals, or "-".
pub(crate) fn fmt_list(v: &Value, sep: &str) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| fmt_num(x, 0))
                .collect::<Vec<_>>()
                .join(sep)
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// A value as a person reads it: strings bare, null as "-".
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// KiB as whole MiB, or "-".
pub(crate) fn kib_as_mib(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| "-".to_owned(), |k| (k / 1024).to_string())
}

/// Bytes as MiB with one decimal, or "-".
pub(crate) fn mib(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{:.1}", x / 1048576.0))
        .unwrap_or_else(|| "-".to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_read_as_a_person_reads_them() {
        assert_eq!(show(&json!(null)), "-");
        assert_eq!(show(&json!("D")), "D");
        assert_eq!(show(&json!(3)), "3");
        assert_eq!(kib_as_mib(&json!(71680)), "70");
        assert_eq!(kib_as_mib(&json!(null)), "-");
        assert_eq!(mib(&json!(67108864)), "64.0");
        assert_eq!(fmt_num(&json!(134.46), 1), "134.5");
        assert_eq!(fmt_list(&json!([139.2, 143]), "/"), "139/143");
        assert_eq!(fmt_list(&json!(null), "/"), "-");
    }
}
