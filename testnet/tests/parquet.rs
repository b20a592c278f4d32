//! Parquet datasets: the same data as a Parquet file (written here with
//! the `parquet` crate, snappy-compressed) and as CSV gives the same
//! dataset (records, schema, statistics), the same stored bytes, the same
//! model for the same seed and the same evaluation; Parquet files Loam
//! cannot use are refused with the record and column at fault.
//!
//! Needs the binaries built (`cargo build --release --workspace --bins`,
//! which `scripts/test` does first).

mod support;

use loam_testnet::split_every_fifth;

use std::path::Path;
use std::sync::Arc;

use loam_testnet::process::{NetworkOptions, ProcessNetwork};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use support::{fails, ok, uplink};

/// One column of a Parquet file written by [`write_parquet`].
enum Column {
    Long(Vec<i64>),
    Double(Vec<f64>),
    /// UTF-8 strings; `None` is a missing value.
    Text(Vec<Option<String>>),
}

/// Writes `columns` (name, values) as a snappy-compressed Parquet file, in
/// two row groups.
fn write_parquet(path: &Path, columns: &[(String, Column)]) -> anyhow::Result<()> {
    let fields: Vec<String> = columns
        .iter()
        .map(|(name, c)| match c {
            Column::Long(_) => format!("required int64 {name};"),
            Column::Double(_) => format!("required double {name};"),
            Column::Text(_) => format!("optional binary {name} (UTF8);"),
        })
        .collect();
    let schema = Arc::new(parquet::schema::parser::parse_message_type(&format!(
        "message dataset {{ {} }}",
        fields.join(" ")
    ))?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut w = SerializedFileWriter::new(std::fs::File::create(path)?, schema, props)?;
    let rows = match &columns[0].1 {
        Column::Long(v) => v.len(),
        Column::Double(v) => v.len(),
        Column::Text(v) => v.len(),
    };
    let half = rows / 2;
    for range in [0..half, half..rows] {
        let mut group = w.next_row_group()?;
        for (_, c) in columns {
            let mut col = group.next_column()?.expect("a column per field");
            match c {
                Column::Long(v) => {
                    col.typed::<Int64Type>()
                        .write_batch(&v[range.clone()], None, None)?;
                }
                Column::Double(v) => {
                    col.typed::<DoubleType>()
                        .write_batch(&v[range.clone()], None, None)?;
                }
                Column::Text(v) => {
                    let cells = &v[range.clone()];
                    let values: Vec<ByteArray> = cells
                        .iter()
                        .flatten()
                        .map(|s| ByteArray::from(s.as_str()))
                        .collect();
                    let defs: Vec<i16> = cells.iter().map(|c| i16::from(c.is_some())).collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&values, Some(&defs), None)?;
                }
            }
            col.close()?;
        }
        group.close()?;
    }
    w.close()?;
    Ok(())
}

/// A CSV text's columns as Parquet columns: integers where every cell is
/// one, else doubles; the label as text.
fn columns_of(csv: &str, label: &str) -> Vec<(String, Column)> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    header
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let cells = rows.iter().map(|r| r[i]);
            let column = if *name == label {
                Column::Text(cells.map(|c| Some(c.to_string())).collect())
            } else if rows.iter().all(|r| r[i].parse::<i64>().is_ok()) {
                Column::Long(cells.map(|c| c.parse().expect("int")).collect())
            } else {
                Column::Double(cells.map(|c| c.parse().expect("double")).collect())
            };
            (name.to_string(), column)
        })
        .collect()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_and_csv_give_the_same_dataset_and_model() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let digits = include_str!("../../data/digits.csv");
    let (train, test) = split_every_fifth(digits);
    for (name, text) in [("train", &train), ("test", &test)] {
        std::fs::write(dir.join(format!("{name}.csv")), text)?;
        write_parquet(
            &dir.join(format!("{name}.parquet")),
            &columns_of(text, "label"),
        )?;
    }
    let diabetes = include_str!("../../data/diabetes.csv");
    std::fs::write(dir.join("diabetes.csv"), diabetes)?;
    write_parquet(
        &dir.join("diabetes.parquet"),
        &columns_of(diabetes, "progression")
            .into_iter()
            // A numeric label of a regression dataset is a number column.
            .map(|(n, c)| match c {
                Column::Text(v) if n == "progression" => (
                    n,
                    Column::Double(
                        v.iter()
                            .map(|c| c.as_deref().unwrap_or("").parse().expect("number"))
                            .collect(),
                    ),
                ),
                other => (n, other),
            })
            .collect::<Vec<_>>(),
    )?;

    let net = ProcessNetwork::start(&dir.join("net"), &NetworkOptions::default()).await?;
    let access = net.dir.join("access");
    ok(uplink(&access, &["mb", "loam://pq"]));
    let put = |file: &str, key: &str, label: &str, extra: &[&str]| {
        let f = dir.join(file);
        let url = format!("loam://pq/{key}");
        let mut args = vec!["dataset", "put", path(&f), &url, "--label", label];
        args.extend(["--shuffle-seed", "7", "--segment-size", "65536"]);
        args.extend(extra);
        ok(uplink(&access, &args))
    };
    let info = |key: &str| -> anyhow::Result<serde_json::Value> {
        let mut v: serde_json::Value = serde_json::from_str(&ok(uplink(
            &access,
            &["dataset", "info", &format!("loam://pq/{key}"), "-o", "json"],
        )))?;
        v["url"] = serde_json::Value::Null;
        Ok(v)
    };
    let from_csv = put("train.csv", "csv", "label", &[]);
    let from_parquet = put("train.parquet", "parquet", "label", &[]);
    assert_eq!(
        from_csv.replace("loam://pq/csv", ""),
        from_parquet.replace("loam://pq/parquet", "")
    );
    // Records, columns, classes, feature means and deviations.
    let (a, b) = (info("csv")?, info("parquet")?);
    assert_eq!(a["records"], 1437);
    assert_eq!(a["feature_mean"].as_array().map(Vec::len), Some(64));
    assert_eq!(a, b);
    // The same stored bytes: the canonical CSV of the records.
    let back = |key: &str, file: &str| {
        let f = dir.join(file);
        ok(uplink(
            &access,
            &["cp", &format!("loam://pq/{key}"), path(&f)],
        ));
        std::fs::read(f).expect("read back")
    };
    assert_eq!(back("csv", "a.csv"), back("parquet", "b.csv"));
    assert_eq!(back("parquet", "b.csv"), train.as_bytes());

    // A regression dataset with DOUBLE columns.
    put(
        "diabetes.csv",
        "dcsv",
        "progression",
        &["--task", "regression"],
    );
    put(
        "diabetes.parquet",
        "dparquet",
        "progression",
        &["--task", "regression"],
    );
    assert_eq!(info("dcsv")?, info("dparquet")?);
    assert_eq!(info("dcsv")?["task"], "regression");

    // The same job on each: the same weights.
    let mut models = Vec::new();
    for key in ["csv", "parquet"] {
        let out = format!("loam://pq/models/{key}");
        ok(uplink(
            &access,
            &[
                "train",
                &format!("loam://pq/{key}"),
                "--rounds",
                "3",
                "--seed",
                "5",
                "--out",
                &out,
                "--wait",
            ],
        ));
        let file = dir.join(format!("{key}.loam"));
        ok(uplink(&access, &["cp", &out, path(&file)]));
        models.push(loam_compute::ModelFile::from_bytes(&std::fs::read(&file)?)?);
    }
    assert_eq!(models[0].weights, models[1].weights);
    assert_eq!(models[0].header.schema, models[1].header.schema);
    assert_eq!(models[0].header.spec, models[1].header.spec);
    // Evaluation reads Parquet too, with the same result.
    let eval = |data: &str| {
        let d = dir.join(data);
        ok(uplink(
            &access,
            &["model", "eval", "loam://pq/models/csv", "--data", path(&d)],
        ))
    };
    let e = eval("test.csv");
    assert!(e.contains("records 360"), "{e}");
    assert_eq!(e, eval("test.parquet"));

    // Files that are no dataset: a missing value, a corrupt file.
    let holes = dir.join("holes.parquet");
    write_parquet(
        &holes,
        &[
            ("x".to_string(), Column::Long(vec![1, 2, 3, 4])),
            (
                "label".to_string(),
                Column::Text(vec![
                    Some("a".into()),
                    Some("b".into()),
                    None,
                    Some("a".into()),
                ]),
            ),
        ],
    )?;
    let args = |f: &Path| {
        vec![
            "dataset".to_string(),
            "put".to_string(),
            path(f).to_string(),
            "loam://pq/bad".to_string(),
            "--label".to_string(),
            "label".to_string(),
        ]
    };
    let run = |f: &Path| {
        let a = args(f);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        fails(uplink(&access, &a))
    };
    let e = run(&holes);
    assert!(
        e.contains("record 3") && e.contains("\"label\"") && e.contains("missing value"),
        "{e}"
    );
    let mut corrupt = std::fs::read(dir.join("train.parquet"))?;
    let mid = corrupt.len() / 2;
    corrupt.drain(mid..mid + 100);
    let corrupt_path = dir.join("corrupt.parquet");
    std::fs::write(&corrupt_path, &corrupt)?;
    let e = run(&corrupt_path);
    assert!(e.contains("cannot read") && !e.contains("panicked"), "{e}");
    let ls = ok(uplink(&access, &["ls", "loam://pq"]));
    assert!(
        !ls.contains("bad"),
        "nothing stored for a refused file: {ls}"
    );
    net.stop().await;
    Ok(())
}
