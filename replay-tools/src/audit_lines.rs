//! How `toolhub-replay export` writes an audit entry: a JSON line or a CSV
//! record, straight from the row's borrowed columns into an output buffer.
//!
//! The payload is the JSON text the database holds, already redacted by the
//! audit projection: it is copied, with the whitespace between tokens left
//! out (PostgreSQL spells `jsonb` with a space after each `:` and `,`), and
//! never decoded. Text columns are escaped as JSON strings. The keys are in
//! the order the export has always written them (alphabetical).

use std::io::Write;

use chrono::{DateTime, Datelike, Timelike, Utc};
use toolhub_projections::AuditExportEntry;

/// The CSV header, one name per column of [`write_csv`].
pub const CSV_HEADER: [&str; 13] = [
    "position",
    "tenant",
    "aggregate_type",
    "aggregate_id",
    "sequence",
    "event_type",
    "event_version",
    "actor",
    "correlation_id",
    "causation_id",
    "request_id",
    "recorded_at",
    "payload",
];

/// Appends `text` to `out` as a JSON string: quoted, escaped.
fn push_str(out: &mut Vec<u8>, text: &str) -> serde_json::Result<()> {
    serde_json::to_writer(out, text)
}

/// Appends the JSON text `json` to `out` without the whitespace between its
/// tokens; strings, and everything else, are copied as they are. `json` is
/// taken to be valid JSON (it is what the database stores for a JSON value).
pub fn push_compact_json(out: &mut Vec<u8>, json: &str) {
    let bytes = json.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            out.extend_from_slice(&bytes[start..i]);
            start = i + 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Appends `value` to `out` as exactly `width` decimal digits, zero-padded
/// (the caller keeps it within `width` digits).
fn push_digits(out: &mut Vec<u8>, value: u32, width: u32) {
    for i in (0..width).rev() {
        out.push(b'0' + ((value / 10u32.pow(i)) % 10) as u8);
    }
}

/// Appends `t` as RFC 3339 in UTC with microseconds and a `Z`, as
/// `to_rfc3339_opts(SecondsFormat::Micros, true)` spells it.
pub fn push_time(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    let year = t.year();
    let nanos = t.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        // Years chrono spells with a sign, and leap seconds: rare enough
        // for the general formatter.
        out.extend_from_slice(
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .as_bytes(),
        );
        return;
    }
    push_digits(out, year as u32, 4);
    out.push(b'-');
    push_digits(out, t.month(), 2);
    out.push(b'-');
    push_digits(out, t.day(), 2);
    out.push(b'T');
    push_digits(out, t.hour(), 2);
    out.push(b':');
    push_digits(out, t.minute(), 2);
    out.push(b':');
    push_digits(out, t.second(), 2);
    out.push(b'.');
    push_digits(out, nanos / 1_000, 6);
    out.push(b'Z');
}

/// Appends a position as `TRANSACTION.GLOBAL`.
fn push_position(out: &mut Vec<u8>, e: &AuditExportEntry<'_>) {
    // Writing into a vector cannot fail.
    let _ = write!(out, "{}", e.position);
}

/// Appends one entry to `out` as a JSON object and a newline.
pub fn write_json(out: &mut Vec<u8>, e: &AuditExportEntry<'_>) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"actor\":");
    push_str(out, e.actor)?;
    out.extend_from_slice(b",\"aggregateId\":");
    push_str(out, e.aggregate_id)?;
    out.extend_from_slice(b",\"aggregateType\":");
    push_str(out, e.aggregate_type)?;
    out.extend_from_slice(b",\"causationId\":");
    push_str(out, e.causation_id)?;
    out.extend_from_slice(b",\"correlationId\":");
    push_str(out, e.correlation_id)?;
    out.extend_from_slice(b",\"eventType\":");
    push_str(out, e.event_type)?;
    out.extend_from_slice(b",\"eventVersion\":");
    push_str(out, e.event_version)?;
    out.extend_from_slice(b",\"payload\":");
    push_compact_json(out, e.payload);
    out.extend_from_slice(b",\"position\":\"");
    push_position(out, e);
    out.extend_from_slice(b"\",\"recordedAt\":\"");
    push_time(out, &e.recorded_at);
    out.extend_from_slice(b"\",\"requestId\":");
    push_str(out, e.request_id)?;
    out.extend_from_slice(b",\"sequence\":");
    let _ = write!(out, "{}", e.sequence);
    out.extend_from_slice(b",\"tenant\":");
    push_str(out, e.tenant)?;
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// Writes one entry as a CSV record, in the columns of [`CSV_HEADER`];
/// `scratch` is reused for the fields that are formatted first.
pub fn write_csv<W: Write>(
    out: &mut csv::Writer<W>,
    scratch: &mut Vec<u8>,
    e: &AuditExportEntry<'_>,
) -> csv::Result<()> {
    scratch.clear();
    push_position(scratch, e);
    out.write_field(&scratch[..])?;
    out.write_field(e.tenant)?;
    out.write_field(e.aggregate_type)?;
    out.write_field(e.aggregate_id)?;
    scratch.clear();
    let _ = write!(scratch, "{}", e.sequence);
    out.write_field(&scratch[..])?;
    out.write_field(e.event_type)?;
    out.write_field(e.event_version)?;
    out.write_field(e.actor)?;
    out.write_field(e.correlation_id)?;
    out.write_field(e.causation_id)?;
    out.write_field(e.request_id)?;
    scratch.clear();
    push_time(scratch, &e.recorded_at);
    out.write_field(&scratch[..])?;
    scratch.clear();
    push_compact_json(scratch, e.payload);
    out.write_field(&scratch[..])?;
    out.write_record(None::<&[u8]>)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::{json, Value};
    use toolhub_eventstore::Position;

    fn compact(text: &str) -> String {
        let mut out = Vec::new();
        push_compact_json(&mut out, text);
        String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
    }

    #[test]
    fn whitespace_between_tokens_goes_and_strings_stay() {
        assert_eq!(
            compact(r#"{"a b": [1, 2.5, {"c": "x \" y\\"}], "d": "\t \u0000 é", "e" : null}"#),
            r#"{"a b":[1,2.5,{"c":"x \" y\\"}],"d":"\t \u0000 é","e":null}"#
        );
        assert_eq!(compact("\n{ }\r\n"), "{}");
        assert_eq!(compact(r#""\\""#), r#""\\""#);
    }

    #[test]
    fn times_are_spelled_as_chrono_spells_them() {
        for t in [
            Utc.timestamp_opt(0, 0).single(),
            Utc.timestamp_opt(1_780_000_000, 123_456_789).single(),
            Utc.timestamp_opt(-62_000_000_000, 1_000).single(),
            Utc.timestamp_opt(253_402_300_799, 999_999_000).single(),
            Utc.timestamp_opt(253_402_300_800, 0).single(),
            Utc.timestamp_opt(1_780_000_019, 1_500_000_000).single(),
        ] {
            let t = t.expect("a time");
            let mut out = Vec::new();
            push_time(&mut out, &t);
            assert_eq!(
                String::from_utf8(out).expect("ASCII"),
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
        }
    }

    #[test]
    fn a_line_is_the_entry_as_json() {
        let recorded_at = Utc
            .timestamp_opt(1_780_000_000, 5_000)
            .single()
            .expect("a time");
        let entry = AuditExportEntry {
            position: Position::new(7, 42),
            tenant: "acme",
            aggregate_type: "workflow",
            aggregate_id: "wf-\"1\"",
            sequence: 3,
            event_type: "WorkflowRenamed",
            event_version: "1.0",
            actor: "ada\u{0}\u{1f}\n",
            correlation_id: "c",
            causation_id: "",
            request_id: "r-é",
            recorded_at,
            payload: r#"{"n": [1, 2], "name": "w\u0000 ☃"}"#,
        };
        let mut out = Vec::new();
        write_json(&mut out, &entry).expect("written");
        assert_eq!(out.last(), Some(&b'\n'));
        let line: Value = serde_json::from_slice(&out).expect("one JSON object");
        assert_eq!(
            line,
            json!({
                "position": "7.42",
                "tenant": "acme",
                "aggregateType": "workflow",
                "aggregateId": "wf-\"1\"",
                "sequence": 3,
                "eventType": "WorkflowRenamed",
                "eventVersion": "1.0",
                "actor": "ada\u{0}\u{1f}\n",
                "correlationId": "c",
                "causationId": "",
                "requestId": "r-é",
                "recordedAt": recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "payload": {"name": "w\u{0} ☃", "n": [1, 2]},
            })
        );
        // Keys in the order a `serde_json::Value` object writes them (the
        // payload's are its own, here already in that order).
        let mut expected = serde_json::to_vec(&line).expect("serialised");
        expected.push(b'\n');
        assert_eq!(out, expected);

        let mut csv_out = csv::Writer::from_writer(Vec::new());
        write_csv(&mut csv_out, &mut Vec::new(), &entry).expect("written");
        let bytes = csv_out.into_inner().expect("flushed");
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(bytes.as_slice());
        let record = reader
            .records()
            .next()
            .expect("a record")
            .expect("valid CSV");
        assert_eq!(record.len(), CSV_HEADER.len());
        assert_eq!(&record[0], "7.42");
        assert_eq!(&record[7], "ada\u{0}\u{1f}\n");
        assert_eq!(
            serde_json::from_str::<Value>(&record[12]).expect("JSON"),
            line["payload"]
        );
    }
}
