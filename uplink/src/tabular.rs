//! Tabular files besides CSV: a Parquet file becomes the canonical CSV a
//! dataset is stored as (a header of its column names, one line per
//! record), so that it scans, packs, trains and evaluates exactly as the
//! same data written as CSV does.
//!
//! Numbers are written as the shortest text that reads back as the same
//! value, so a `DOUBLE` 4.8598 is the cell `4.8598` and 59.0 is `59`, as a
//! CSV holding those values would have them. Strings and booleans (labels)
//! are kept as text. Nested columns, dates, times, binary data and missing
//! values are refused with the column and record they are in.

use bytes::Bytes;
use parquet::data_type::Decimal;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

/// Why a Parquet file cannot be a dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TabularError {
    #[error("not a Parquet file Loam can read: {0}")]
    Parquet(String),
    #[error("column {0:?} is nested ({1}); a dataset needs flat columns")]
    Nested(String, String),
    #[error("record {record}, column {column:?}: {what}")]
    Cell {
        record: u64,
        column: String,
        what: String,
    },
    #[error("writing CSV: {0}")]
    Csv(String),
}

/// Whether `bytes` look like a Parquet file (`PAR1` at both ends).
pub fn is_parquet(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1")
}

/// The canonical CSV text of a Parquet file's records.
pub fn parquet_to_csv(bytes: Vec<u8>) -> Result<Vec<u8>, TabularError> {
    // The decoder trusts lengths inside the file; a malformed one must be
    // an error, not a crash of the CLI.
    std::panic::catch_unwind(move || convert(bytes)).unwrap_or_else(|_| {
        Err(TabularError::Parquet(
            "the file is malformed (its decoder gave up)".into(),
        ))
    })
}

fn convert(bytes: Vec<u8>) -> Result<Vec<u8>, TabularError> {
    let reader = SerializedFileReader::new(Bytes::from(bytes))
        .map_err(|e| TabularError::Parquet(e.to_string()))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let root = schema.root_schema();
    let mut names = Vec::new();
    for field in root.get_fields() {
        if field.is_group() {
            return Err(TabularError::Nested(
                field.name().to_string(),
                "a group".into(),
            ));
        }
        names.push(field.name().to_string());
    }
    let mut out = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let csv_err = |e: csv::Error| TabularError::Csv(e.to_string());
    out.write_record(&names).map_err(csv_err)?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| TabularError::Parquet(e.to_string()))?;
    let mut cells = Vec::with_capacity(names.len());
    for (i, row) in rows.enumerate() {
        let record = i as u64 + 1;
        let row = row.map_err(|e| TabularError::Parquet(format!("record {record}: {e}")))?;
        cells.clear();
        for (name, field) in row.get_column_iter() {
            let cell = cell(field).map_err(|what| TabularError::Cell {
                record,
                column: name.clone(),
                what,
            })?;
            cells.push(cell);
        }
        out.write_record(&cells).map_err(csv_err)?;
    }
    out.into_inner()
        .map_err(|e| TabularError::Csv(e.to_string()))
}

/// One value as CSV cell text.
fn cell(field: &Field) -> Result<String, String> {
    Ok(match field {
        Field::Bool(b) => b.to_string(),
        Field::Byte(v) => v.to_string(),
        Field::Short(v) => v.to_string(),
        Field::Int(v) => v.to_string(),
        Field::Long(v) => v.to_string(),
        Field::UByte(v) => v.to_string(),
        Field::UShort(v) => v.to_string(),
        Field::UInt(v) => v.to_string(),
        Field::ULong(v) => v.to_string(),
        Field::Float16(v) => f32::from(*v).to_string(),
        Field::Float(v) => v.to_string(),
        Field::Double(v) => v.to_string(),
        Field::Decimal(d) => decimal(d)?,
        Field::Str(s) => s.clone(),
        Field::Null => {
            return Err("missing value (fill or drop missing values first)".into());
        }
        other => {
            return Err(format!(
                "{} values cannot be dataset cells (numbers, or text for the label)",
                kind(other)
            ));
        }
    })
}

fn kind(field: &Field) -> &'static str {
    match field {
        Field::Bytes(_) => "binary",
        Field::Date(_) => "date",
        Field::TimeMillis(_) | Field::TimeMicros(_) => "time",
        Field::TimestampMillis(_) | Field::TimestampMicros(_) => "timestamp",
        Field::Group(_) => "struct",
        Field::ListInternal(_) => "list",
        Field::MapInternal(_) => "map",
        _ => "these",
    }
}

/// A decimal's exact text: its unscaled big-endian two's-complement
/// integer (up to 16 bytes) with the point `scale` digits from the right.
fn decimal(d: &Decimal) -> Result<String, String> {
    let data = d.data();
    if data.is_empty() || data.len() > 16 {
        return Err(format!("a decimal of {} bytes", data.len()));
    }
    let mut buf = if data[0] & 0x80 != 0 {
        [0xffu8; 16]
    } else {
        [0u8; 16]
    };
    buf[16 - data.len()..].copy_from_slice(data);
    let value = i128::from_be_bytes(buf);
    let scale = d.scale();
    if !(0..=38).contains(&scale) {
        return Err(format!("a decimal with scale {scale}"));
    }
    let scale = scale as usize;
    let digits = value.unsigned_abs().to_string();
    let sign = if value < 0 { "-" } else { "" };
    if scale == 0 {
        return Ok(format!("{sign}{digits}"));
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    Ok(format!("{sign}{int}.{frac}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_every_digit() {
        let cases = [
            (12345, 2, "123.45"),
            (-5, 3, "-0.005"),
            (7, 0, "7"),
            (-120, 1, "-12.0"),
        ];
        for (v, scale, want) in cases {
            let d = Decimal::from_i64(v, 18, scale);
            assert_eq!(decimal(&d).expect("decimal"), want);
        }
        assert!(decimal(&Decimal::from_i32(1, 9, -1)).is_err());
        assert!(decimal(&Decimal::from_bytes(vec![1u8; 17].into(), 38, 2)).is_err());
    }

    #[test]
    fn garbage_is_refused_not_a_panic() {
        assert!(!is_parquet(b"a,b\n1,2\n"));
        let mut fake = b"PAR1".to_vec();
        fake.extend_from_slice(&[0xff; 64]);
        fake.extend_from_slice(b"PAR1");
        assert!(is_parquet(&fake));
        assert!(parquet_to_csv(fake).is_err());
    }
}
