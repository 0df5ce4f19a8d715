//! CSV and TSV with a header row (RFC 4180: quoted fields, `""` for a quote, line breaks inside
//! quotes, CRLF or LF): each row becomes a JSON object of the header's names, so the record shapes
//! `data import` detects in JSON (instruction/response columns, `--field-map`) apply unchanged.

use std::path::Path;

use serde_json::{Map, Value};

use crate::{Error, Pos, Result};

/// The rows of `text` as `(line where the row starts, {column: value})`. A row with more fields
/// than the header, or a quote left open, is an error naming its line.
pub(super) fn records(path: &Path, text: &str, delimiter: u8) -> Result<Vec<(usize, Value)>> {
    let mut rows = parse(text, delimiter).map_err(|(line, msg)| Error::record(path, Pos::Line(line), msg))?;
    if rows.is_empty() {
        return Err(Error::file(path, "no header row"));
    }
    let (_, header) = rows.remove(0);
    let names: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
    if let Some(dup) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)) {
        return Err(Error::record(
            path,
            Pos::Line(1),
            format!("the header names column {:?} twice", dup.1),
        ));
    }
    let mut out = Vec::with_capacity(rows.len());
    for (line, fields) in rows {
        if fields.len() == 1 && fields[0].is_empty() {
            continue; // a blank line
        }
        if fields.len() > names.len() {
            return Err(Error::record(
                path,
                Pos::Line(line),
                format!("{} fields, the header has {}", fields.len(), names.len()),
            ));
        }
        let obj: Map<String, Value> = names
            .iter()
            .zip(fields)
            .filter(|(_, f)| !f.is_empty())
            .map(|(n, f)| (n.clone(), Value::String(f)))
            .collect();
        out.push((line, Value::Object(obj)));
    }
    Ok(out)
}

/// A row's fields and the line it starts on.
type Row = (usize, Vec<String>);

/// Fields of each row with the line it starts on; `Err((line, message))` for a malformed one.
fn parse(text: &str, delimiter: u8) -> std::result::Result<Vec<Row>, (usize, String)> {
    let d = char::from(delimiter);
    let mut rows = Vec::new();
    let (mut row, mut field) = (Vec::new(), String::new());
    let (mut line, mut start) = (1usize, 1usize);
    let mut chars = text.chars().peekable();
    // At a field's start, `quoted` is decided by its first character.
    let mut at_start = true;
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if at_start => {
                quoted = true;
                at_start = false;
            }
            c if c == d => {
                row.push(std::mem::take(&mut field));
                at_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push((start, std::mem::take(&mut row)));
                line += 1;
                start = line;
                at_start = true;
            }
            '"' => return Err((line, "a quote inside an unquoted field".into())),
            c => {
                field.push(c);
                at_start = false;
            }
        }
    }
    if quoted {
        return Err((start, "a quoted field is never closed".into()));
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push((start, row));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quotes_embedded_breaks_and_crlf() {
        let text = "instruction,output\r\n\"Say \"\"hi\"\"\",\"line one\nline two\"\r\nplain,x\n";
        let rows = records(Path::new("a.csv"), text, b',').unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, 2);
        assert_eq!(rows[0].1["instruction"], "Say \"hi\"");
        assert_eq!(rows[0].1["output"], "line one\nline two");
        assert_eq!(rows[1].0, 4, "the second record starts on line 4");
        let tsv = records(Path::new("a.tsv"), "q\ta\nwhy?\tbecause\n", b'\t').unwrap();
        assert_eq!(tsv[0].1["a"], "because");
    }

    #[test]
    fn malformed_rows_name_their_line() {
        let e = records(Path::new("b.csv"), "a,b\n1,2\n1,2,3\n", b',')
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("b.csv") && e.contains("line 3") && e.contains("3 fields"),
            "{e}"
        );
        let e = records(Path::new("b.csv"), "a,b\nx,\"open\n", b',')
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("never closed"), "{e}");
        let e = records(Path::new("b.csv"), "a,a\n", b',')
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }
}
