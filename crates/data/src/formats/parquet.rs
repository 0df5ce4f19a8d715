//! Parquet files (the Hub's dataset format): each row becomes a JSON record, so every record
//! shape `data import` detects (messages, ShareGPT, instruction columns, oasst messages, `text`
//! documents) reads the same from a table. Nested columns (a `messages` list of structs) become
//! JSON arrays and objects.

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde_json::{Map, Number, Value};

use crate::{Error, Result};

/// The rows of a parquet file, numbered from 1.
pub(crate) fn records(path: &Path, bytes: Vec<u8>) -> Result<Vec<(usize, Value)>> {
    let bad =
        |e: parquet::errors::ParquetError| Error::file(path, format!("not a readable parquet file: {e}"));
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).map_err(bad)?;
    let rows = reader.get_row_iter(None).map_err(bad)?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let row =
            row.map_err(|e| Error::record(path, crate::Pos::Row(i + 1), format!("unreadable row: {e}")))?;
        out.push((i + 1, row_value(&row)));
    }
    Ok(out)
}

fn row_value(row: &Row) -> Value {
    Value::Object(
        row.get_column_iter()
            .map(|(k, f)| (k.clone(), field_value(f)))
            .collect::<Map<String, Value>>(),
    )
}

fn field_value(f: &Field) -> Value {
    let float = |x: f64| Number::from_f64(x).map_or(Value::Null, Value::Number);
    match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float16(x) => float(f64::from(*x)),
        Field::Float(x) => float(f64::from(*x)),
        Field::Double(x) => float(*x),
        Field::Str(s) => Value::String(s.clone()),
        // Text stored as plain binary (no UTF8 annotation) is still text.
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::Null,
        },
        Field::Group(row) => row_value(row),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(field_value).collect()),
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match field_value(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, field_value(v))
                })
                .collect(),
        ),
        // Dates, times, decimals: their display form (they only ever travel as metadata).
        other => Value::String(other.to_string()),
    }
}
