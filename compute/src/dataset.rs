//! Tabular datasets: a CSV file with a header, numeric feature columns and
//! one label column.
//!
//! At upload the uplink scans the file once ([`Scanner`]): it checks every
//! cell, collects the label classes and the per-feature mean and standard
//! deviation (kept in the [`Schema`], so training needs no extra pass), and
//! decides where records fall so that every data row of every segment holds
//! whole records ([`pack`]). A node then parses the records of its own row
//! with [`parse_records`].

use std::collections::{BTreeSet, HashMap};

use loam_common::compute::{ImageShape, Task};
use serde::{Deserialize, Serialize};

/// Most classes a label column may have.
pub const MAX_CLASSES: usize = 4096;
/// Most columns a dataset may have.
pub const MAX_COLUMNS: usize = 1 << 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatasetError {
    #[error("the file is empty: a dataset needs a header line")]
    Empty,
    #[error("the file is not UTF-8 text (line {line})")]
    NotText { line: usize },
    #[error("label column {0:?} is not in the header (columns: {1})")]
    NoLabel(String, String),
    #[error("the header has {0} columns; a dataset needs a label and at least one feature")]
    TooFewColumns(usize),
    #[error("the header has {0} columns, more than {MAX_COLUMNS}")]
    TooManyColumns(usize),
    #[error("line {line} has {found} cells, the header has {expected}")]
    Ragged {
        line: usize,
        found: usize,
        expected: usize,
    },
    #[error("line {line}, column {column:?}: {cell:?} is not a number")]
    NotNumeric {
        line: usize,
        column: String,
        cell: String,
    },
    #[error("line {line}: {message}")]
    Csv { line: u64, message: String },
    #[error("line {line}: a cell spans several lines; a dataset needs one record per line")]
    MultilineCell { line: u64 },
    #[error("the label column has more than {MAX_CLASSES} distinct values")]
    TooManyClasses,
    #[error("the dataset has no records")]
    NoRecords,
    #[error("line {line} is {len} bytes, longer than a whole row of {row} bytes")]
    RecordTooLong { line: usize, len: usize, row: usize },
    #[error("line {line}: the label {cell:?} is not a number (a regression label must be)")]
    LabelNotNumeric { line: usize, cell: String },
    #[error("label {0:?} is not one of the dataset's classes")]
    UnknownLabel(String),
    #[error("the schema is inconsistent")]
    BadSchema,
    #[error("a {shape} image has {pixels} pixels, but the records have {features} features")]
    ImageSize {
        shape: ImageShape,
        pixels: usize,
        features: usize,
    },
    #[error(
        "the stored records do not match their recorded order ({found} lines, {expected} expected)"
    )]
    BadShuffle { found: u64, expected: u64 },
}

/// What a dataset's rows mean: the columns, which one is the label, its
/// classes, and the feature scaling. Travels (encrypted) with the dataset
/// and, sealed to each computing node, with its tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    pub columns: Vec<String>,
    /// Index of the label column in `columns`.
    pub label: usize,
    /// Label values, in class-index order.
    pub classes: Vec<String>,
    /// Per feature (columns without the label, in order): mean and
    /// standard deviation over the whole dataset.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Records in the dataset.
    pub records: u64,
    /// What the label is: classes, or a number (then `classes` is empty
    /// and the label is scaled by `target_mean` and `target_std`).
    #[serde(default, skip_serializing_if = "Task::is_classification")]
    pub task: Task,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub target_mean: f32,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub target_std: f32,
    /// Set when the features are the pixels of an image of this shape
    /// (`dataset put --images` or `--image-shape`): CNNs take it as
    /// their input, and every pixel of a channel shares one mean and std.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageShape>,
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

fn is_one(v: &f32) -> bool {
    *v == 1.0
}

fn one() -> f32 {
    1.0
}

impl Schema {
    /// Checks a schema that came from elsewhere (a model file, a task key)
    /// before anything indexes with it.
    pub fn validate(&self) -> Result<(), DatasetError> {
        let n = self.columns.len();
        if !(2..=MAX_COLUMNS).contains(&n) {
            return Err(DatasetError::TooFewColumns(n));
        }
        if self.label >= n
            || self.mean.len() != n - 1
            || self.std.len() != n - 1
            || self.classes.len() > MAX_CLASSES
            || self.classes.is_empty() != self.task.is_regression()
            || !self.target_mean.is_finite()
            || !self.target_std.is_finite()
            || self.target_std <= 0.0
            || self.std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || self.mean.iter().any(|m| !m.is_finite())
            || self.image.is_some_and(|i| i.pixels() != n - 1)
        {
            return Err(DatasetError::BadSchema);
        }
        Ok(())
    }

    /// Whether the label looks like a quantity rather than classes: every
    /// value is a number and there are many distinct ones (more than 20,
    /// and more than one per 20 records). Classification then treats each
    /// value as a class of its own, which is rarely what was meant.
    pub fn label_looks_continuous(&self) -> bool {
        if self.task.is_regression() {
            return false;
        }
        let n = self.classes.len() as u64;
        n > 20
            && n.saturating_mul(20) > self.records
            && self.classes.iter().all(|c| parse_number(c).is_some())
    }

    pub fn features(&self) -> usize {
        self.columns.len().saturating_sub(1)
    }

    /// Outputs of a model of this data: its classes, or 1 for regression.
    pub fn outputs(&self) -> usize {
        match self.task {
            Task::Classification => self.classes.len(),
            Task::Regression => 1,
        }
    }

    /// A model output back in the label's units (regression).
    pub fn unscale_target(&self, v: f32) -> f64 {
        f64::from(v) * f64::from(self.target_std) + f64::from(self.target_mean)
    }

    pub fn label_name(&self) -> &str {
        &self.columns[self.label]
    }

    /// Feature column names, in order.
    pub fn feature_names(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != self.label)
            .map(|(_, c)| c.as_str())
    }
}

/// Scaled features, row-major, and their class indices (classification)
/// or scaled label values (regression).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Records {
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
    pub width: usize,
    /// The standardized label of each record, for regression (then
    /// `labels` is empty).
    pub targets: Vec<f32>,
}

impl Records {
    pub fn len(&self) -> usize {
        self.labels.len().max(self.targets.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.width..(i + 1) * self.width]
    }
}

/// The records of a dataset's CSV text (comma-separated, RFC 4180 quoting,
/// cells trimmed), each with its one-based line number; blank lines are
/// skipped.
fn records(text: &[u8]) -> impl Iterator<Item = Result<(usize, csv::StringRecord), DatasetError>> {
    csv_reader(text, b',')
        .into_records()
        .filter_map(|r| match r {
            Ok(rec) => {
                let line = rec.position().map_or(0, |p| p.line()) as usize;
                let blank = rec.iter().all(str::is_empty);
                (!blank).then_some(Ok((line, rec)))
            }
            Err(e) => Some(Err(csv_error(&e))),
        })
}

/// A reader of headerless, possibly ragged CSV with trimmed cells.
fn csv_reader(text: &[u8], delimiter: u8) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .delimiter(delimiter)
        .from_reader(text)
}

/// A writer of the canonical form: commas, `\n` line ends, quotes only
/// where needed.
fn canonical_writer(capacity: usize) -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .flexible(true)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::with_capacity(capacity))
}

fn csv_error(e: &csv::Error) -> DatasetError {
    let line = e.position().map_or(0, |p| p.line());
    match e.kind() {
        csv::ErrorKind::Utf8 { .. } => DatasetError::NotText {
            line: line as usize,
        },
        _ => DatasetError::Csv {
            line,
            message: e.to_string(),
        },
    }
}

/// The delimiters [`sniff_delimiter`] considers, most usual first.
pub const DELIMITERS: [u8; 4] = [b',', b';', b'\t', b'|'];

/// The delimiter of a CSV file, guessed from its header line: the one of
/// [`DELIMITERS`] found most often outside quotes (a comma on a tie or
/// when none is found).
pub fn sniff_delimiter(text: &[u8]) -> u8 {
    let header = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut counts = [0usize; DELIMITERS.len()];
    let mut quoted = false;
    for &b in header {
        if b == b'"' {
            quoted = !quoted;
        } else if !quoted && let Some(i) = DELIMITERS.iter().position(|&d| d == b) {
            counts[i] += 1;
        }
    }
    let best = (0..DELIMITERS.len())
        .max_by_key(|&i| (counts[i], std::cmp::Reverse(i)))
        .unwrap_or(0);
    if counts[best] == 0 {
        b','
    } else {
        DELIMITERS[best]
    }
}

/// A CSV file as users write it (any of [`DELIMITERS`], quoted cells,
/// `\r\n` line ends, blank lines) rewritten as the canonical form a
/// dataset is stored in: comma-separated, one record per line, quoted only
/// where a cell holds a comma or a quote. Cells spanning lines are refused
/// (a dataset's rows are cut between lines).
pub fn normalize(text: &[u8], delimiter: u8) -> Result<Vec<u8>, DatasetError> {
    let mut out = canonical_writer(text.len());
    for r in csv_reader(text, delimiter).into_records() {
        let rec = r.map_err(|e| csv_error(&e))?;
        let line = rec.position().map_or(0, |p| p.line());
        if rec.iter().all(str::is_empty) {
            continue;
        }
        if rec.iter().any(|c| c.contains(['\n', '\r'])) {
            return Err(DatasetError::MultilineCell { line });
        }
        out.write_record(&rec).map_err(|e| csv_error(&e))?;
    }
    out.into_inner().map_err(|e| DatasetError::Csv {
        line: 0,
        message: e.to_string(),
    })
}

/// Canonical CSV `text` with a column inserted at `at` (or at the end):
/// `name` in the header, `value` in every record.
pub fn insert_column(
    text: &[u8],
    at: usize,
    name: &str,
    value: &str,
) -> Result<Vec<u8>, DatasetError> {
    let mut out = canonical_writer(text.len() + text.len() / 8);
    for (i, r) in records(text).enumerate() {
        let (_, rec) = r?;
        let mut cells: Vec<&str> = rec.iter().collect();
        cells.insert(at.min(cells.len()), if i == 0 { name } else { value });
        out.write_record(&cells).map_err(|e| csv_error(&e))?;
    }
    out.into_inner().map_err(|e| DatasetError::Csv {
        line: 0,
        message: e.to_string(),
    })
}

/// The header (first record) of a dataset's CSV text.
pub fn header(text: &[u8]) -> Result<Vec<String>, DatasetError> {
    let (_, rec) = records(text).next().ok_or(DatasetError::Empty)??;
    Ok(rec.iter().map(str::to_string).collect())
}

fn parse_number(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// One pass over a whole CSV file: validates it and builds the [`Schema`]
/// of a classification dataset.
pub fn scan(text: &[u8], label: &str) -> Result<Schema, DatasetError> {
    scan_for(text, label, Task::Classification)
}

/// [`scan`] for `task`: a regression label must be a number in every
/// record, and its mean and standard deviation scale it.
pub fn scan_for(text: &[u8], label: &str, task: Task) -> Result<Schema, DatasetError> {
    scan_with(text, label, task, None)
}

/// [`scan_for`] of records whose features are the pixels of `image`
/// (when given): their count must be its pixels, and each channel is
/// scaled by the mean and standard deviation of all its pixels, which
/// keeps the image's contrast where per-pixel scaling would not.
pub fn scan_with(
    text: &[u8],
    label: &str,
    task: Task,
    image: Option<ImageShape>,
) -> Result<Schema, DatasetError> {
    let mut it = records(text);
    let (_, header) = it.next().ok_or(DatasetError::Empty)??;
    let columns: Vec<String> = header.iter().map(str::to_string).collect();
    if columns.len() > MAX_COLUMNS {
        return Err(DatasetError::TooManyColumns(columns.len()));
    }
    let label_at = columns
        .iter()
        .position(|c| c == label)
        .ok_or_else(|| DatasetError::NoLabel(label.to_string(), columns.join(",")))?;
    if columns.len() < 2 {
        return Err(DatasetError::TooFewColumns(columns.len()));
    }
    let width = columns.len() - 1;
    let mut sum = vec![0f64; width];
    let mut sumsq = vec![0f64; width];
    let mut classes = BTreeSet::new();
    let (mut label_sum, mut label_sumsq) = (0f64, 0f64);
    let mut records = 0u64;
    for r in it {
        let (line, row) = r?;
        if row.len() != columns.len() {
            return Err(DatasetError::Ragged {
                line,
                found: row.len(),
                expected: columns.len(),
            });
        }
        let mut f = 0;
        for (c, value) in row.iter().enumerate() {
            if c == label_at && task.is_regression() {
                let v = parse_number(value).ok_or_else(|| DatasetError::LabelNotNumeric {
                    line,
                    cell: value.to_string(),
                })?;
                label_sum += v;
                label_sumsq += v * v;
                continue;
            }
            if c == label_at {
                if !classes.contains(value) {
                    if classes.len() >= MAX_CLASSES {
                        return Err(DatasetError::TooManyClasses);
                    }
                    classes.insert(value.to_string());
                }
                continue;
            }
            let v = parse_number(value).ok_or_else(|| DatasetError::NotNumeric {
                line,
                column: columns[c].clone(),
                cell: value.to_string(),
            })?;
            sum[f] += v;
            sumsq[f] += v * v;
            f += 1;
        }
        records += 1;
    }
    if records == 0 {
        return Err(DatasetError::NoRecords);
    }
    if let Some(shape) = image
        && shape.pixels() != width
    {
        return Err(DatasetError::ImageSize {
            shape,
            pixels: shape.pixels(),
            features: width,
        });
    }
    let n = records as f64;
    if let Some(shape) = image {
        // Pool the moments of each channel's pixels.
        let plane = shape.height * shape.width;
        for c in 0..shape.channels {
            let range = c * plane..(c + 1) * plane;
            let (s, q) = (
                sum[range.clone()].iter().sum::<f64>(),
                sumsq[range.clone()].iter().sum::<f64>(),
            );
            let per = plane as f64;
            sum[range.clone()].fill(s / per);
            sumsq[range].fill(q / per);
        }
    }
    let moments = |s: f64, q: f64| {
        let var = (q / n - (s / n) * (s / n)).max(0.0);
        let sd = var.sqrt();
        // A constant column carries no information; leave it centred.
        ((s / n) as f32, if sd < 1e-9 { 1.0 } else { sd as f32 })
    };
    let (mean, std) = sum.iter().zip(&sumsq).map(|(&s, &q)| moments(s, q)).unzip();
    let (target_mean, target_std) = match task {
        Task::Regression => moments(label_sum, label_sumsq),
        Task::Classification => (0.0, 1.0),
    };
    Ok(Schema {
        columns,
        label: label_at,
        classes: sort_classes(classes),
        mean,
        std,
        records,
        task,
        target_mean,
        target_std,
        image,
    })
}

/// Numeric labels sort as numbers ("2" before "10"), others as text.
fn sort_classes(classes: BTreeSet<String>) -> Vec<String> {
    let mut v: Vec<String> = classes.into_iter().collect();
    if v.iter().all(|c| parse_number(c).is_some()) {
        v.sort_by(|a, b| {
            let (a, b) = (parse_number(a), parse_number(b));
            a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    v
}

/// Parses the records in `text` (whole CSV lines) with the dataset's
/// scaling applied; the first line is skipped when `skip_header` (the
/// first row of a dataset starts with its header). Stops at the first NUL
/// byte: a data row is zero-padded to the piece size.
pub fn parse_records(
    text: &[u8],
    schema: &Schema,
    skip_header: bool,
) -> Result<Records, DatasetError> {
    let text = match text.iter().position(|&b| b == 0) {
        Some(end) => &text[..end],
        None => text,
    };
    let class_of: HashMap<&str, u32> = schema
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let width = schema.features();
    let mut out = Records {
        width,
        ..Default::default()
    };
    for r in records(text).skip(usize::from(skip_header)) {
        let (line, row) = r?;
        if row.len() != schema.columns.len() {
            return Err(DatasetError::Ragged {
                line,
                found: row.len(),
                expected: schema.columns.len(),
            });
        }
        let mut f = 0;
        for (c, value) in row.iter().enumerate() {
            if c == schema.label && schema.task.is_regression() {
                let v = parse_number(value).ok_or_else(|| DatasetError::LabelNotNumeric {
                    line,
                    cell: value.to_string(),
                })?;
                out.targets.push(
                    ((v - f64::from(schema.target_mean)) / f64::from(schema.target_std)) as f32,
                );
                continue;
            }
            if c == schema.label {
                let class = class_of
                    .get(value)
                    .ok_or_else(|| DatasetError::UnknownLabel(value.to_string()))?;
                out.labels.push(*class);
                continue;
            }
            let v = parse_number(value).ok_or_else(|| DatasetError::NotNumeric {
                line,
                column: schema.columns[c].clone(),
                cell: value.to_string(),
            })?;
            out.features
                .push(((v as f32) - schema.mean[f]) / schema.std[f]);
            f += 1;
        }
    }
    Ok(out)
}

/// Where one segment of a packed dataset lies in the file: `rows[i]` is the
/// byte length of data row `i`, the rows following each other from `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedSegment {
    pub start: usize,
    pub rows: Vec<usize>,
    /// Records in each row.
    pub records: Vec<usize>,
}

impl PackedSegment {
    pub fn len(&self) -> usize {
        self.rows.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a dataset's records were reordered at upload, kept (encrypted) with
/// the dataset so that a download puts them back: every line after the
/// header that ends in a newline moved to a place drawn from `seed`.
///
/// A file sorted by label would otherwise give each data piece, and so each
/// training task, one or two classes; shuffled, every task sees the whole
/// distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shuffle {
    pub seed: u64,
    /// Lines moved.
    pub lines: u64,
}

/// The lines of `text` a shuffle moves, and where the fixed head (blank
/// lines and the header) ends. An unterminated last line stays last.
fn movable_lines(text: &[u8]) -> (usize, Vec<std::ops::Range<usize>>) {
    let mut head = None;
    let mut lines = Vec::new();
    let mut pos = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let range = pos..pos + line.len();
        pos = range.end;
        if head.is_none() {
            if !line.iter().all(u8::is_ascii_whitespace) {
                head = Some(range.end);
            }
        } else if line.ends_with(b"\n") {
            lines.push(range);
        }
    }
    (head.unwrap_or(text.len()), lines)
}

/// A permutation of `0..n` drawn from `seed` (Fisher–Yates over a
/// fixed generator, so that it never changes between releases).
fn permutation(seed: u64, n: usize) -> Vec<usize> {
    use loam_common::compute::mix64;
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = mix64(seed ^ 0x7368_7566_666c_6521);
    for i in (1..n).rev() {
        state = mix64(state);
        let j = ((u128::from(state) * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

/// `text` with its records in an order drawn from `seed`; the header (and
/// anything before it) stays first. [`unshuffle_records`] undoes it.
pub fn shuffle_records(text: &[u8], seed: u64) -> (Vec<u8>, Shuffle) {
    let (head, lines) = movable_lines(text);
    let mut out = Vec::with_capacity(text.len());
    out.extend_from_slice(&text[..head]);
    for i in permutation(seed, lines.len()) {
        out.extend_from_slice(&text[lines[i].clone()]);
    }
    let tail = lines.last().map_or(head, |r| r.end);
    out.extend_from_slice(&text[tail..]);
    let shuffle = Shuffle {
        seed,
        lines: lines.len() as u64,
    };
    (out, shuffle)
}

/// The original bytes of a dataset stored by [`shuffle_records`].
pub fn unshuffle_records(stored: &[u8], shuffle: &Shuffle) -> Result<Vec<u8>, DatasetError> {
    let (head, lines) = movable_lines(stored);
    if lines.len() as u64 != shuffle.lines {
        return Err(DatasetError::BadShuffle {
            found: lines.len() as u64,
            expected: shuffle.lines,
        });
    }
    let mut slots = vec![0..0; lines.len()];
    for (stored_at, original_at) in permutation(shuffle.seed, lines.len())
        .into_iter()
        .enumerate()
    {
        slots[original_at] = lines[stored_at].clone();
    }
    let mut out = Vec::with_capacity(stored.len());
    out.extend_from_slice(&stored[..head]);
    for r in slots {
        out.extend_from_slice(&stored[r]);
    }
    let tail = lines.last().map_or(head, |r| r.end);
    out.extend_from_slice(&stored[tail..]);
    Ok(out)
}

/// Splits a CSV file into segments of `k` rows of at most `row_capacity`
/// bytes, each row holding whole lines, and together covering the file
/// exactly. Rows are balanced: a file smaller than a segment is spread
/// over all `k` rows, so that every data piece gets a share of the
/// training. The header line goes into the first row (its task skips it).
pub fn pack(
    text: &[u8],
    k: usize,
    row_capacity: usize,
) -> Result<Vec<PackedSegment>, DatasetError> {
    let k = k.max(1);
    let planned = text
        .len()
        .div_ceil(row_capacity.saturating_mul(k).max(1))
        .max(1);
    let target = text
        .len()
        .div_ceil(planned * k)
        .clamp(1, row_capacity.max(1));
    let mut segments = Vec::new();
    let mut seg = PackedSegment {
        start: 0,
        rows: Vec::with_capacity(k),
        records: Vec::with_capacity(k),
    };
    let (mut row_len, mut row_records) = (0usize, 0usize);
    let mut pos = 0usize;
    let mut header_seen = false;
    for (i, line) in text.split_inclusive(|&b| b == b'\n').enumerate() {
        if line.len() > row_capacity {
            return Err(DatasetError::RecordTooLong {
                line: i + 1,
                len: line.len(),
                row: row_capacity,
            });
        }
        // The very last row takes the remainder rather than start a segment.
        let last_row = segments.len() + 1 >= planned && seg.rows.len() + 1 == k;
        let soft_full = row_len >= target && !last_row;
        if row_len > 0 && (soft_full || row_len + line.len() > row_capacity) {
            seg.rows.push(row_len);
            seg.records.push(row_records);
            (row_len, row_records) = (0, 0);
            if seg.rows.len() == k {
                let next = PackedSegment {
                    start: pos,
                    rows: Vec::with_capacity(k),
                    records: Vec::with_capacity(k),
                };
                segments.push(std::mem::replace(&mut seg, next));
            }
        }
        row_len += line.len();
        let blank = line.iter().all(u8::is_ascii_whitespace);
        if !blank {
            if header_seen {
                row_records += 1;
            }
            header_seen = true;
        }
        pos += line.len();
    }
    if row_len > 0 || !seg.rows.is_empty() || segments.is_empty() {
        seg.rows.push(row_len);
        seg.records.push(row_records);
        seg.rows.resize(k, 0);
        seg.records.resize(k, 0);
        segments.push(seg);
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_labels_are_numbers_scaled_by_their_moments() {
        let text = b"a,y\n1,10\n2,20\n3,30\n4,40\n";
        let s = scan_for(text, "y", Task::Regression).expect("scan");
        assert!(s.classes.is_empty() && s.task == Task::Regression);
        assert_eq!(s.outputs(), 1);
        assert_eq!(s.target_mean, 25.0);
        let sd = 125f32.sqrt();
        assert!((s.target_std - sd).abs() < 1e-5, "{}", s.target_std);
        s.validate().expect("valid");
        let r = parse_records(text, &s, true).expect("records");
        assert!(r.labels.is_empty() && r.len() == 4);
        for (t, want) in r.targets.iter().zip([10.0, 20.0, 30.0, 40.0]) {
            assert!((s.unscale_target(*t) - want).abs() < 1e-4);
        }
        // The schema survives JSON (it travels sealed to the nodes).
        let back: Schema =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("parse");
        assert_eq!(back, s);
        // A classification schema's JSON has none of the new fields.
        let c = scan(text, "y").expect("scan");
        let json = serde_json::to_string(&c).expect("json");
        assert!(!json.contains("task") && !json.contains("target"), "{json}");
        assert_eq!(c.classes.len(), 4);
    }

    #[test]
    fn regression_refuses_what_is_not_a_number() {
        assert_eq!(
            scan_for(b"a,y\n1,2.5\n2,high\n", "y", Task::Regression),
            Err(DatasetError::LabelNotNumeric {
                line: 3,
                cell: "high".into()
            })
        );
        assert!(matches!(
            scan_for(b"a,y\n1,inf\n", "y", Task::Regression),
            Err(DatasetError::LabelNotNumeric { .. })
        ));
        // A schema claiming both classes and regression, or a bad scale.
        let mut s = scan_for(b"a,y\n1,2\n3,4\n", "y", Task::Regression).expect("scan");
        s.classes.push("x".into());
        assert_eq!(s.validate(), Err(DatasetError::BadSchema));
        s.classes.clear();
        s.target_std = 0.0;
        assert_eq!(s.validate(), Err(DatasetError::BadSchema));
        s.target_std = f32::NAN;
        assert_eq!(s.validate(), Err(DatasetError::BadSchema));
        // Records whose label is not a number, read by a node.
        s.target_std = 1.0;
        assert!(matches!(
            parse_records(b"a,y\n1,abc\n", &s, true),
            Err(DatasetError::LabelNotNumeric { .. })
        ));
    }

    const CSV: &[u8] = b"a,b,label\n1,2,x\n3,4,y\r\n\n5,6,x\n";

    #[test]
    fn scan_builds_schema_with_scaling() {
        let s = scan(CSV, "label").expect("scan");
        assert_eq!(s.validate(), Ok(()));
        let mut broken = s.clone();
        broken.mean.pop();
        assert_eq!(broken.validate(), Err(DatasetError::BadSchema));
        assert_eq!(s.columns, ["a", "b", "label"]);
        assert_eq!(s.label, 2);
        assert_eq!(s.classes, ["x", "y"]);
        assert_eq!(s.records, 3);
        assert!((s.mean[0] - 3.0).abs() < 1e-6);
        assert!((s.std[1] - (8.0f32 / 3.0).sqrt()).abs() < 1e-5);
        let r = parse_records(b"a,b,label\n1,2,x\n5,6,y\n\0\0\0", &s, true).expect("parse");
        assert_eq!(r.labels, [0, 1]);
        assert_eq!(r.width, 2);
        assert!((r.row(1)[0] - 2.0 / (8.0f32 / 3.0).sqrt()).abs() < 1e-5);
    }

    #[test]
    fn csv_as_people_write_it_is_normalized() {
        // Semicolons, quotes, a quoted delimiter, CRLF and a blank line.
        let text = b"\"p 0\";p1;label\r\n1;2;\"a;b\"\r\n\r\n3 ; 4;\"say \"\"hi\"\"\"\n";
        assert_eq!(sniff_delimiter(text), b';');
        let canon = normalize(text, b';').expect("normalize");
        assert_eq!(
            String::from_utf8(canon.clone()).expect("UTF-8"),
            "p 0,p1,label\n1,2,a;b\n3,4,\"say \"\"hi\"\"\"\n"
        );
        let s = scan(&canon, "label").expect("scan");
        assert_eq!(s.columns, ["p 0", "p1", "label"]);
        assert_eq!(s.classes, ["a;b", "say \"hi\""]);
        let r = parse_records(&canon, &s, true).expect("records");
        assert_eq!(r.labels, [0, 1]);
        // A comma inside quotes stays one cell.
        let canon = normalize(b"x,label\n1,\"b,c\"\n", b',').expect("normalize");
        let s = scan(&canon, "label").expect("scan");
        assert_eq!(s.classes, ["b,c"]);
        let packed = pack(&canon, 2, 1 << 10).expect("pack");
        assert_eq!(packed[0].records.iter().sum::<usize>(), 1);
        // Tabs and pipes are found; a file without any is comma-separated.
        assert_eq!(sniff_delimiter(b"a\tb\tlabel\n"), b'\t');
        assert_eq!(sniff_delimiter(b"a|b|label\n"), b'|');
        assert_eq!(sniff_delimiter(b"\"x,y\";b;label\n"), b';');
        assert_eq!(sniff_delimiter(b"label\n"), b',');
        // A cell spanning lines cannot be cut into rows.
        assert_eq!(
            normalize(b"x,label\n1,\"two\nlines\"\n", b','),
            Err(DatasetError::MultilineCell { line: 2 })
        );
    }

    #[test]
    fn a_numeric_label_with_many_values_is_flagged() {
        let mut text = String::from("x,target\n");
        for i in 0..400 {
            text.push_str(&format!("{i},{}\n", (i * 7) % 299));
        }
        let s = scan(text.as_bytes(), "target").expect("scan");
        assert_eq!(s.classes.len(), 299);
        assert!(s.label_looks_continuous());
        let mut digits = String::from("x,label\n");
        for i in 0..400 {
            digits.push_str(&format!("{i},{}\n", i % 10));
        }
        let s = scan(digits.as_bytes(), "label").expect("scan");
        assert!(!s.label_looks_continuous());
    }

    #[test]
    fn numeric_classes_sort_as_numbers() {
        let s = scan(b"f,label\n1,10\n2,2\n3,1\n", "label").expect("scan");
        assert_eq!(s.classes, ["1", "2", "10"]);
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        assert_eq!(scan(b"", "label"), Err(DatasetError::Empty));
        assert!(matches!(
            scan(b"a,b\n1,2\n", "label"),
            Err(DatasetError::NoLabel(..))
        ));
        assert_eq!(
            scan(b"a,label\n1,x\nfoo,y\n", "label"),
            Err(DatasetError::NotNumeric {
                line: 3,
                column: "a".into(),
                cell: "foo".into()
            })
        );
        assert_eq!(
            scan(b"a,label\n1,x,3\n", "label"),
            Err(DatasetError::Ragged {
                line: 2,
                found: 3,
                expected: 2
            })
        );
        assert_eq!(scan(b"a,label\n", "label"), Err(DatasetError::NoRecords));
        assert!(scan(b"a,label\nNaN,x\n", "label").is_err());
    }

    #[test]
    fn packing_covers_the_file_with_whole_lines() {
        let mut text = b"f1,f2,label\n".to_vec();
        for i in 0..500 {
            text.extend_from_slice(format!("{i},{},{}\n", i * 3, i % 7).as_bytes());
        }
        let segs = pack(&text, 4, 300).expect("pack");
        assert!(segs.len() > 1);
        let mut at = 0;
        let mut records = 0;
        for s in &segs {
            assert_eq!(s.start, at);
            assert_eq!(s.rows.len(), 4);
            let mut p = s.start;
            for &r in &s.rows {
                assert!(r <= 300);
                let row = &text[p..p + r];
                assert!(row.is_empty() || row.ends_with(b"\n"), "row ends mid-line");
                p += r;
            }
            at += s.len();
            records += s.records.iter().sum::<usize>();
        }
        assert_eq!(at, text.len());
        assert_eq!(records, 500);
        assert!(matches!(
            pack(&text, 4, 5),
            Err(DatasetError::RecordTooLong { .. })
        ));
        // A file smaller than a segment still fills every row.
        let small = pack(&text, 4, 1 << 20).expect("pack");
        assert_eq!(small.len(), 1);
        assert!(
            small[0].records.iter().all(|&r| r > 100),
            "{:?}",
            small[0].records
        );
    }

    #[test]
    fn shuffled_records_come_back_byte_for_byte() {
        let cases: &[&[u8]] = &[
            CSV,
            b"",
            b"a,label\n",
            b"a,label",
            b"\n\na,label\n1,x\n2,y",
            b"a,label\r\n1,x\r\n\r\n2,y\r\n3,z\r\n4,x",
        ];
        for &text in cases {
            for seed in [0, 1, 42, u64::MAX] {
                let (stored, shuffle) = shuffle_records(text, seed);
                assert_eq!(stored.len(), text.len());
                assert_eq!(
                    unshuffle_records(&stored, &shuffle).expect("unshuffle"),
                    text,
                    "{:?} seed {seed}",
                    String::from_utf8_lossy(text)
                );
                assert_eq!(scan(&stored, "label").ok(), scan(text, "label").ok());
            }
        }
    }

    #[test]
    fn shuffling_spreads_a_sorted_file() {
        let mut text = b"x,label\n".to_vec();
        for i in 0..1000 {
            text.extend_from_slice(format!("{i},{}\n", i / 100).as_bytes());
        }
        let (stored, shuffle) = shuffle_records(&text, 7);
        assert_eq!(shuffle.lines, 1000);
        assert!(stored.starts_with(b"x,label\n"));
        // The first tenth of the stored records holds most classes, where
        // the file's first tenth holds one.
        let first: BTreeSet<&[u8]> = stored
            .split(|&b| b == b'\n')
            .skip(1)
            .take(100)
            .filter_map(|l| l.split(|&b| b == b',').nth(1))
            .collect();
        assert!(first.len() >= 8, "{first:?}");
        // Another seed, another order; the same seed, the same.
        assert_ne!(shuffle_records(&text, 8).0, stored);
        assert_eq!(shuffle_records(&text, 7).0, stored);
        // A wrong seed gives other bytes, a wrong count an error.
        let wrong = Shuffle { seed: 8, ..shuffle };
        assert_ne!(
            unshuffle_records(&stored, &wrong).expect("same count"),
            text
        );
        let short = Shuffle {
            lines: 999,
            ..shuffle
        };
        assert_eq!(
            unshuffle_records(&stored, &short),
            Err(DatasetError::BadShuffle {
                found: 1000,
                expected: 999
            })
        );
    }
}
