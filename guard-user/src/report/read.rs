//! Recorded JSON-lines files into records, skipping what does not parse.

use std::io::BufRead;
use std::path::Path;

use super::ReportError;
use crate::events::{Record, RecordError};

/// What [`load`](super::load) read: the records in the kernel clock's order,
/// and the lines it had to skip, so a report can say what it did not see.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<Record>,
    /// ("FILE:LINE", why), in the order read.
    pub skipped: Vec<(String, String)>,
}

/// Appends one file's records and skipped lines; a file without a single
/// record is an error.
pub(super) fn read_file(path: &Path, into: &mut Loaded) -> Result<(), ReportError> {
    let file = path.display().to_string();
    let reader = std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|error| ReportError::Read {
            file: file.clone(),
            error,
        })?;
    let skipped_before = into.skipped.len();
    if read_records(reader, &file, into)? == 0 {
        let skipped = &into.skipped[skipped_before..];
        let why = match skipped.first() {
            None => "the file is empty".to_owned(),
            Some((at, why)) => format!(
                "none of its {} lines is one (first: {at}: {why})",
                skipped.len()
            ),
        };
        return Err(ReportError::NoRecords { file, why });
    }
    Ok(())
}

/// Appends one file's records and skipped lines; returns how many records.
fn read_records(
    mut reader: impl BufRead,
    file: &str,
    into: &mut Loaded,
) -> Result<usize, ReportError> {
    let mut buf = Vec::new();
    let mut line = 0;
    let mut read = 0;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|error| ReportError::Read {
                file: file.to_owned(),
                error,
            })?;
        if n == 0 {
            return Ok(read);
        }
        line += 1;
        let complete = buf.last() == Some(&b'\n');
        // Bytes, not a String: a crash can leave garbage (or zeros) that must
        // count as one bad line, not end the file.
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match Record::from_line(text).and_then(|r| r.for_terminal()) {
            Ok(record) => {
                into.records.push(record);
                read += 1;
            }
            Err(error @ RecordError::Version { .. }) => {
                return Err(ReportError::Version {
                    file: file.to_owned(),
                    line,
                    error,
                });
            }
            Err(error) => {
                let why = if complete {
                    error.to_string()
                } else {
                    format!("truncated last line (the writer stopped mid-line): {error}")
                };
                into.skipped.push((format!("{file}:{line}"), why));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;
    use crate::report::{analyze, load};

    #[test]
    fn rotated_parts_given_newest_first_are_read_in_clock_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = seed_incident();
        let (older, newer) = records.split_at(records.len() / 2);
        let old = write_lines(dir.path(), "events.jsonl.1", older, "");
        let new = write_lines(dir.path(), "events.jsonl", newer, "");

        let loaded = load(&[new, old]).expect("loads");
        assert!(
            loaded
                .records
                .windows(2)
                .all(|w| w[0].mono_ns <= w[1].mono_ns)
        );
        let report = analyze(&loaded.records);
        assert_eq!(report.incidents.len(), 1, "{report}");
        assert_eq!(
            report.incidents[0].start.mono_ns,
            at_ms(FIRST_NO_PROGRESS_MS)
        );
        assert!(report.incidents[0].kills[0].recovery.is_some());
    }

    #[test]
    fn a_newer_schema_fails_naming_file_line_and_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let newer = seed_incident()[2].to_line().replace("\"v\":1", "\"v\":2");
        let path = write_lines(dir.path(), "new.jsonl", &[hello()], &newer);
        let err = load(std::slice::from_ref(&path)).expect_err("refused");
        assert!(
            matches!(
                err,
                ReportError::Version {
                    line: 2,
                    error: RecordError::Version { found: 2 },
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&format!("{}:2:", path.display())), "{msg}");
        assert!(
            msg.contains("version 2") && msg.contains("upgrade"),
            "{msg}"
        );
    }

    #[test]
    fn an_empty_file_or_one_without_records_fails_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "").expect("write");
        let err = load(std::slice::from_ref(&empty)).expect_err("empty");
        let msg = err.to_string();
        assert!(matches!(err, ReportError::NoRecords { .. }), "{err:?}");
        assert!(
            msg.contains(&format!("{}", empty.display())) && msg.contains("empty"),
            "{msg}"
        );

        let junk = dir.path().join("junk.txt");
        std::fs::write(&junk, "hello\n{\"v\":1}\n").expect("write");
        let msg = load(std::slice::from_ref(&junk))
            .expect_err("junk")
            .to_string();
        assert!(msg.contains("none of its 2 lines"), "{msg}");
        assert!(msg.contains(&format!("{}:1:", junk.display())), "{msg}");

        let missing = dir.path().join("missing.jsonl");
        let msg = load(std::slice::from_ref(&missing))
            .expect_err("missing")
            .to_string();
        assert!(
            msg.contains(&format!("cannot read {}", missing.display())),
            "{msg}"
        );
        assert!(matches!(load(&[]), Err(ReportError::NoFiles)));
    }
}
