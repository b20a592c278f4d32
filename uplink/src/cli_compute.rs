//! The compute commands of the CLI: `dataset`, `train`, `job`, `model`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use loam_common::compute::{Optimizer, Rounds, Task, TrainParams};
use loam_common::federated::{Algorithm, Choice, Rule};
use loam_common::pb;
use loam_compute::ModelFile;
use loam_uplink::Project;
use loam_uplink::dataset::{DatasetOptions, JobRequest};

use crate::{Output, parse_loam};

#[derive(Subcommand)]
pub enum DatasetCommand {
    /// Upload a CSV (header, numeric features, a label column) as a
    /// dataset: uplink dataset put FILE loam://BUCKET/NAME --label COL; or
    /// a folder of images: uplink dataset put DIR loam://BUCKET/NAME --images
    Put {
        /// The CSV file: a header line, numeric feature columns and a label
        /// column; quoted cells and ',', ';', tab or '|' separators. Or a
        /// Parquet file of flat numeric columns and a label column (stored
        /// as the same CSV). With --images, a folder of class folders.
        file: PathBuf,
        /// Where the dataset goes, as loam://BUCKET/NAME.
        url: String,
        /// The CSV's separator (default: found from the header line).
        #[arg(long, value_parser = parse_delimiter)]
        delimiter: Option<u8>,
        /// The label column (with --images, the name it gets; default
        /// "label").
        #[arg(long, required_unless_present = "images")]
        label: Option<String>,
        /// FILE is a folder with one sub-folder per class, named after it,
        /// of PNG or JPEG images. Each image becomes one record of its
        /// pixels (columns p0, p1, ...: 0 to 255, channel by channel, row by
        /// row), gray unless some image has color; see --image-shape.
        #[arg(long)]
        images: bool,
        /// The records are images of this shape, HxW (gray) or HxWx3
        /// (color): CNNs train on them (`uplink train --model cnn`, the
        /// default for such a dataset) and each channel is scaled as a
        /// whole. With --images, the size every image is resized to
        /// (default: the images' own, when they all share it); for a CSV,
        /// the shape of its feature columns, e.g. 28x28 for 784 pixels.
        #[arg(long)]
        image_shape: Option<loam_common::compute::ImageShape>,
        /// What the label is: classification (each distinct value a class)
        /// or regression (a number to predict; models are trained on squared
        /// error and `model eval` reports MAE, RMSE and R²).
        #[arg(long, value_enum, default_value = "classification")]
        task: TaskArg,
        /// Largest segment in bytes (each data row of a segment is one
        /// training task). Default 16 MiB.
        #[arg(long)]
        segment_size: Option<u64>,
        /// Do not opt the dataset in to compute yet.
        #[arg(long)]
        no_compute: bool,
        /// Store the records in a shuffled order, so that every training
        /// task sees a fair sample even of a file sorted by label. The order
        /// is kept (encrypted) with the dataset: `uplink cp` and `cat` return
        /// the file as uploaded (whole, through memory). `--shuffle-records
        /// false` keeps the file's order.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
        shuffle_records: bool,
        /// The seed of the shuffled order (default: drawn at random).
        #[arg(long)]
        shuffle_seed: Option<u64>,
    },
    /// Opt a dataset in to compute jobs (on) or out (off).
    Compute {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// The dataset, loam://BUCKET/NAME.
        url: String,
    },
    /// Offer a dataset for training by others, as a listing on the
    /// satellite's market (public facts and terms only, never a record).
    Publish(crate::cli_market::PublishArgs),
    /// Take a listing off the market (running jobs finish).
    Unpublish {
        /// The listing, market:ID or ID.
        id: String,
    },
    /// Seal a published dataset's row keys again, to the computing nodes
    /// online now (after nodes left or pieces were repaired elsewhere).
    Reseal {
        /// The published dataset, loam://BUCKET/NAME.
        url: String,
    },
    /// What one of your listings earned: jobs, sample-epochs, fees.
    Usage {
        /// The listing, market:ID or ID.
        id: String,
        /// Output format: text or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: crate::Output,
    },
    /// Show a dataset's columns, classes and layout.
    Info {
        /// The dataset, loam://BUCKET/NAME.
        url: String,
        /// Output format: text or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: crate::Output,
    },
}

#[derive(Args)]
pub struct TrainArgs {
    /// The dataset, loam://BUCKET/NAME; or one or more listings others
    /// published, market:ID (with the same columns and label).
    #[arg(required = true, num_args = 1..)]
    datasets: Vec<String>,
    /// Registry model: logistic (linear for a regression dataset), mlp, or
    /// cnn (conv-pool blocks, then the hidden layers). Default: cnn for an
    /// image dataset, mlp for other classification, linear for
    /// regression.
    #[arg(long)]
    model: Option<String>,
    /// Hidden layer widths (repeat or comma-separate for several layers;
    /// a CNN's come after its conv-pool blocks).
    #[arg(long, value_delimiter = ',', default_value = "64")]
    hidden: Vec<usize>,
    /// A CNN's conv-pool blocks: the channels of each (3×3 convolution,
    /// ReLU, 2×2 max pooling).
    #[arg(long, value_delimiter = ',', default_value = "8,16")]
    conv: Vec<usize>,
    /// A CNN's input image, HxW or HxWxC (default: the dataset's shape,
    /// from `dataset put --images` or `--image-shape`); the features must
    /// be its pixels, channel by channel.
    #[arg(long)]
    image_shape: Option<loam_common::compute::ImageShape>,
    /// Federated rounds: "auto" stops when the validation loss has not
    /// improved for 8 rounds (at most 100) and keeps the best weights; a
    /// number runs exactly that many. Default: auto for classification,
    /// 100 for regression (see docs/compute.md).
    #[arg(long)]
    rounds: Option<Rounds>,
    /// Percent of each task's records the nodes hold out for validation
    /// (0 to 50; "auto" rounds need some).
    #[arg(long, default_value_t = TrainParams::default().validation)]
    validation: u32,
    /// Epochs each task trains locally per round.
    #[arg(long, default_value_t = TrainParams::default().local_epochs)]
    local_epochs: usize,
    /// Local optimizer: sgd or adam. Default: adam for a CNN, sgd for the
    /// others (see docs/compute.md).
    #[arg(long)]
    optimizer: Option<Optimizer>,
    /// Local learning rate (default: 0.1 for sgd, 0.01 for sgd on a
    /// regression dataset, 0.005 for adam, 0.003 for adam on a CNN).
    #[arg(long)]
    lr: Option<f64>,
    /// Batch size.
    #[arg(long, default_value_t = TrainParams::default().batch)]
    batch: usize,
    /// Seed of the initial weights and of every batch order.
    #[arg(long, default_value_t = TrainParams::default().seed)]
    seed: u64,
    /// Where to store the model, loam://BUCKET/KEY.
    #[arg(long)]
    out: String,
    /// Share of tasks re-executed by another node (default: the satellite's).
    #[arg(long)]
    verify: Option<f64>,
    /// The label column (checked against the dataset's).
    #[arg(long)]
    label: Option<String>,
    /// How the satellite turns each round's averaged update into new
    /// weights: scaffold (the default with sgd: each task's gradients
    /// corrected for its drift from the others, for data pieces that hold
    /// a few classes each; its corrections assume sgd steps), fedavg (as
    /// is), fedavgm (with server momentum; the default with adam), fedadam,
    /// or fedprox (tasks held near the global weights). See docs/compute.md
    /// for the measurements.
    #[arg(long)]
    algorithm: Option<Algorithm>,
    /// How task updates are combined: mean (weighted by records), or a
    /// rule robust to a minority of bad tasks: median, trimmed-mean, krum.
    #[arg(long, default_value_t = Rule::default())]
    aggregation: Rule,
    /// Shorten updates longer than this many times the round's median
    /// update (1 to 1000; default: no clipping).
    #[arg(long)]
    clip: Option<f64>,
    /// Where the tasks train: cpu (burn's ndarray backend on any compute
    /// node, verified bit for bit) or gpu (only nodes that offer a GPU;
    /// verified within the satellite's GPU tolerance). A GPU job is
    /// refused when no such node is online.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// Follow the job round by round and store the model when it is done.
    #[arg(long)]
    wait: bool,
}

#[derive(Subcommand)]
pub enum JobCommand {
    /// List this project's jobs.
    Ls {
        /// Output format: text (a table), or json (one job per line).
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// A job's round, loss, accuracy, tasks, work and data moved.
    Status {
        /// The job id, or a unique prefix of it (4 or more hex digits).
        id: String,
        /// Output format: text or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Stop a job.
    Cancel {
        /// The job id, or a unique prefix of it (4 or more hex digits).
        id: String,
    },
    /// Follow a job to its end and store its model at the job's --out.
    Wait {
        /// The job id, or a unique prefix of it (4 or more hex digits).
        id: String,
    },
}

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Accuracy and confusion matrix of MODEL (a file, a loam:// URL or a
    /// model listing market:ID) on a labelled CSV.
    Eval {
        /// The model: a local file, loam://BUCKET/KEY, or market:ID (one
        /// paid download).
        model: String,
        /// A labelled CSV (or Parquet) file with the model's columns, or for
        /// a model of images a folder of class folders of PNG/JPEG files
        /// (as `dataset put --images` takes; resized to the model's shape).
        #[arg(long)]
        data: PathBuf,
        /// The label column of the CSV (default: the model's).
        #[arg(long)]
        label: Option<String>,
        /// The CSV's separator (default: found from the header line).
        #[arg(long, value_parser = parse_delimiter)]
        delimiter: Option<u8>,
        /// Output format: text or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Predicted class of every row of a CSV, as CSV on stdout or --out.
    Predict {
        /// The model: a local file, loam://BUCKET/KEY, or market:ID (one
        /// paid download).
        model: String,
        /// A CSV (or Parquet) file with the model's feature columns (the label column may be
        /// there or not), or for a model of images a folder of class folders
        /// (rows in class, then file name order).
        #[arg(long)]
        data: PathBuf,
        /// Where to write the predictions (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The CSV's separator (default: found from the header line).
        #[arg(long, value_parser = parse_delimiter)]
        delimiter: Option<u8>,
        /// Also print each class's probability (a `p_CLASS` column per
        /// class), as the model computes it in 32-bit floats.
        #[arg(long)]
        probabilities: bool,
    },
    /// Write MODEL in a format other tools read: uplink model export MODEL
    /// --format safetensors --out m.safetensors (PyTorch nn.Linear layout;
    /// sizes, columns, classes and scaling in its metadata).
    Export {
        /// The model: a local file, loam://BUCKET/KEY, or market:ID (one
        /// paid download).
        model: String,
        /// The format to write (safetensors: PyTorch, NumPy, JAX, ...).
        #[arg(long, value_enum, default_value = "safetensors")]
        format: ExportFormat,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Offer a model for others to evaluate and predict with, paid per
    /// download: uplink model publish loam://BUCKET/KEY --title T --price P
    Publish(crate::cli_market::ModelPublishArgs),
}

/// A `--delimiter` value: one ASCII character, or `tab`.
fn parse_delimiter(s: &str) -> Result<u8, String> {
    match s {
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        _ if s.len() == 1 && s.is_ascii() && !s.contains(['"', '\n', '\r']) => Ok(s.as_bytes()[0]),
        _ => Err(format!(
            "{s:?} is not a separator; give one character (',', ';', '|') or tab"
        )),
    }
}

/// Reads a CSV file and rewrites it in the canonical form datasets use
/// (see [`loam_compute::dataset::normalize`]); the separator is
/// `delimiter`, or found from the header line (and said, when it is not
/// a comma).
/// A CSV file in canonical form, or a Parquet file as the same CSV.
fn read_csv(path: &std::path::Path, delimiter: Option<u8>) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if loam_uplink::tabular::is_parquet(&text) {
        if delimiter.is_some() {
            bail!(
                "--delimiter is for CSV files; {} is Parquet",
                path.display()
            );
        }
        return loam_uplink::tabular::parquet_to_csv(text)
            .with_context(|| format!("cannot read {} as a dataset", path.display()));
    }
    let delimiter = match delimiter {
        Some(d) => d,
        None => {
            let d = loam_compute::dataset::sniff_delimiter(&text);
            if d != b',' {
                let name = if d == b'\t' {
                    "tab".to_string()
                } else {
                    format!("'{}'", d as char)
                };
                eprintln!(
                    "reading {} as {name}-separated (found in the header line; --delimiter \
                     overrides)",
                    path.display()
                );
            }
            d
        }
    };
    loam_compute::dataset::normalize(&text, delimiter)
        .with_context(|| format!("{} is not a CSV file Loam can read", path.display()))
}

/// The images of a class-folder tree as dataset records, with a progress
/// bar on a terminal and a word about files left out.
fn read_images(
    dir: &std::path::Path,
    shape: Option<loam_common::compute::ImageShape>,
    label: &str,
) -> anyhow::Result<loam_uplink::images::ImageFolder> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40.cyan/blue} {pos}/{len} images {per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    let folder = loam_uplink::images::read_image_folder(dir, shape, label, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let folder = folder?;
    if let Some(first) = folder.skipped.first() {
        eprintln!(
            "left out {} file(s) that are not PNG or JPEG class images (first: {})",
            folder.skipped.len(),
            first.display()
        );
    }
    eprintln!(
        "read {} images as {}: {}",
        folder.classes.iter().map(|(_, n)| n).sum::<usize>(),
        folder.shape,
        folder
            .classes
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(folder)
}

/// The records `model eval/predict --data` name: a CSV or Parquet file, or
/// a folder of class folders of images, read at the model's image shape.
fn read_model_data(
    data: &std::path::Path,
    delimiter: Option<u8>,
    model: &ModelFile,
) -> anyhow::Result<Vec<u8>> {
    if !data.is_dir() {
        return read_csv(data, delimiter);
    }
    let schema = &model.header.schema;
    let Some(shape) = model.header.spec.image.or(schema.image) else {
        bail!(
            "{} is a folder, and this model does not take images (give a CSV or Parquet file)",
            data.display()
        );
    };
    Ok(read_images(data, Some(shape), schema.label_name())?.csv)
}

fn state_name(s: i32) -> &'static str {
    match pb::JobState::try_from(s) {
        Ok(pb::JobState::JobRunning) => "running",
        Ok(pb::JobState::JobDone) => "done",
        Ok(pb::JobState::JobFailed) => "failed",
        Ok(pb::JobState::JobCancelled) => "cancelled",
        _ => "unknown",
    }
}

fn human_bytes(n: u64) -> String {
    crate::human(n)
}

pub async fn dataset(project: &Project, cmd: DatasetCommand) -> anyhow::Result<()> {
    match cmd {
        DatasetCommand::Publish(args) => crate::cli_market::publish(project, args).await?,
        DatasetCommand::Unpublish { id } => crate::cli_market::unpublish(project, &id).await?,
        DatasetCommand::Reseal { url } => crate::cli_market::reseal(project, &url).await?,
        DatasetCommand::Usage { id, output } => {
            crate::cli_market::usage(project, &id, output).await?
        }
        DatasetCommand::Put {
            file,
            url,
            delimiter,
            label,
            images,
            image_shape,
            task,
            segment_size,
            no_compute,
            shuffle_records,
            shuffle_seed,
        } => {
            let u = parse_loam(&url)?;
            if u.key.is_empty() {
                bail!("{url:?} names no dataset key");
            }
            let task = Task::from(task);
            let (text, label, image_shape) = if images {
                if delimiter.is_some() || task.is_regression() {
                    bail!("--images takes neither --delimiter nor --task regression");
                }
                let label = label.unwrap_or_else(|| "label".to_string());
                let folder = read_images(&file, image_shape, &label)?;
                (folder.csv, label, Some(folder.shape))
            } else {
                let label = label.context("--label names the label column")?;
                (read_csv(&file, delimiter)?, label, image_shape)
            };
            let schema = loam_compute::dataset::scan_with(&text, &label, task, image_shape)?;
            if schema.label_looks_continuous() {
                eprintln!(
                    "warning: label column {label:?} has {} distinct numeric values in {} \
                     records; each value becomes a class of its own. If it is a quantity to \
                     predict, upload it with --task regression (or bin it into a few classes).",
                    schema.classes.len(),
                    schema.records
                );
            }
            let opts = DatasetOptions {
                image: image_shape,
                label,
                task,
                segment_size,
                compute: !no_compute,
                shuffle: shuffle_records.then(|| shuffle_seed.unwrap_or_else(rand::random)),
            };
            let info = project
                .upload_dataset(&u.bucket, &u.key, text, &opts, None)
                .await?;
            println!(
                "Dataset loam://{}/{}: {} records ({}), {}, {}, {} ({} segments, {} training tasks), compute {}",
                u.bucket,
                u.key,
                info.records,
                if opts.shuffle.is_some() {
                    "shuffled"
                } else {
                    "in file order"
                },
                match image_shape {
                    Some(shape) => format!("{shape} images"),
                    None => format!("{} features", info.features),
                },
                match info.task {
                    Task::Classification => format!("{} classes", info.classes.len()),
                    Task::Regression => "a numeric label (regression)".to_string(),
                },
                human_bytes(info.size),
                info.segments,
                info.tasks,
                if opts.compute { "on" } else { "off" }
            );
        }
        DatasetCommand::Compute { state, url } => {
            let u = parse_loam(&url)?;
            let on = state == "on";
            project.set_dataset_compute(&u.bucket, &u.key, on).await?;
            println!("Compute {} for loam://{}/{}", state, u.bucket, u.key);
        }
        DatasetCommand::Info { url, output } => {
            let u = parse_loam(&url)?;
            let (ds, compute) = project.dataset(&u.bucket, &u.key).await?;
            let s = &ds.schema;
            let tasks = ds.records.iter().flatten().filter(|&&r| r > 0).count();
            if output == crate::Output::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "url": url,
                        "records": s.records,
                        "label": s.label_name(),
                        "task": s.task,
                        "classes": s.classes,
                        "label_mean": s.task.is_regression().then_some(s.target_mean),
                        "label_std": s.task.is_regression().then_some(s.target_std),
                        "feature_mean": s.mean,
                        "feature_std": s.std,
                        "features": s.features(),
                        "image_shape": s.image.map(|i| i.to_string()),
                        "columns": s.columns,
                        "segments": ds.records.len(),
                        "tasks": tasks,
                        "compute": compute,
                        "shuffled": ds.shuffle.is_some(),
                    }))?
                );
                return Ok(());
            }
            println!("records   {}", s.records);
            println!("label     {}", s.label_name());
            match s.task {
                Task::Classification => println!("classes   {}", s.classes.join(",")),
                Task::Regression => println!(
                    "task      regression (label mean {}, std {})",
                    s.target_mean, s.target_std
                ),
            }
            match s.image {
                Some(shape) => println!("features  {} ({shape} images)", s.features()),
                None => println!("features  {}", s.features()),
            }
            println!("segments  {} ({tasks} tasks)", ds.records.len());
            println!(
                "order     {}",
                if ds.shuffle.is_some() {
                    "records shuffled (downloads restore the file's order)"
                } else {
                    "as in the file"
                }
            );
            println!("compute   {}", if compute { "on" } else { "off" });
        }
    }
    Ok(())
}

pub async fn train(project: &Project, a: TrainArgs) -> anyhow::Result<()> {
    let market = a
        .datasets
        .iter()
        .filter(|d| d.starts_with("market:"))
        .count();
    if market != 0 && market != a.datasets.len() {
        bail!(
            "train either your own dataset (loam://BUCKET/NAME) or listings (market:ID), not both"
        );
    }
    if market == 0 && a.datasets.len() != 1 {
        bail!("train one dataset of your own at a time (or several listings, market:ID)");
    }
    let out = parse_loam(&a.out)?;
    if out.key.is_empty() {
        bail!("--out {:?} names no key", a.out);
    }
    // Defaults that depend on the task need the dataset's description
    // (listings are classification datasets).
    let (task, images) =
        if market == 0 && (a.model.is_none() || a.rounds.is_none() || a.lr.is_none()) {
            let u = parse_loam(&a.datasets[0])?;
            let schema = project.dataset(&u.bucket, &u.key).await?.0.schema;
            (schema.task, schema.image.is_some())
        } else {
            (Task::Classification, false)
        };
    let defaults = TaskDefaults::of(task, images);
    let (rounds, patience) = a.rounds.unwrap_or(defaults.rounds).cap_and_patience();
    let architecture = a.model.unwrap_or_else(|| defaults.model.to_string());
    let local = LocalDefaults::of(&architecture, task, a.optimizer, a.algorithm)?;
    let job = JobRequest {
        architecture,
        hidden: a.hidden,
        image: a.image_shape,
        conv: a.conv,
        rounds,
        patience,
        params: TrainParams {
            learning_rate: a.lr.unwrap_or(local.learning_rate),
            batch: a.batch,
            local_epochs: a.local_epochs,
            seed: a.seed,
            optimizer: local.optimizer,
            validation: a.validation,
            proximal: local.algorithm.proximal(),
        },
        verify_fraction: a.verify,
        out: (out.bucket.clone(), out.key.clone()),
        label: a.label,
        aggregation: Choice {
            algorithm: local.algorithm,
            rule: a.aggregation,
            clip: a.clip,
        },
        device: a.device.into(),
    };
    let info = if market > 0 {
        let ids = a
            .datasets
            .iter()
            .map(|d| loam_uplink::market::parse_listing_id(d))
            .collect::<Result<Vec<_>, _>>()?;
        project.submit_market_job(&ids, &job).await?
    } else {
        let u = parse_loam(&a.datasets[0])?;
        project.submit_job(&u.bucket, &u.key, &job).await?
    };
    let id = hex::encode(&info.job_id);
    println!(
        "Job {id} submitted: {} tasks per round, {} rounds",
        info.tasks_total, info.rounds
    );
    if a.wait {
        wait(project, &info.job_id).await
    } else {
        println!(
            "Follow it with `uplink job wait {id}` (stores the model at {})",
            a.out
        );
        Ok(())
    }
}

/// Whether a job trains a regression model.
fn is_regression(j: &pb::JobInfo) -> bool {
    j.spec.as_ref().is_some_and(|s| s.task == "regression")
}

/// A round's training accuracy; nothing for regression, whose loss says
/// it all.
fn accuracy_text(j: &pb::JobInfo, r: &pb::RoundInfo) -> String {
    if is_regression(j) {
        String::new()
    } else {
        format!("  accuracy {:.4}", r.accuracy)
    }
}

/// The held-out score of a round: accuracy, or for regression R² as
/// 1 − the mean squared error of the label standardized over the dataset
/// (close to the held-out records' own R²).
fn val_score(j: &pb::JobInfo, r: &pb::RoundInfo) -> String {
    if is_regression(j) {
        format!("R² ≈ {:.4}", 1.0 - f64::from(r.val_loss))
    } else {
        format!("accuracy {:.4}", r.val_accuracy)
    }
}

/// How the weights a round started from did on the held-out records.
fn validation_text(j: &pb::JobInfo, r: &pb::RoundInfo) -> String {
    if r.val_records == 0 {
        String::new()
    } else {
        format!(
            "  validation (after round {}) loss {:.4} {}",
            r.round.saturating_sub(1),
            r.val_loss,
            val_score(j, r)
        )
    }
}

/// Follows a job round by round; stores the model when it is done.
async fn wait(project: &Project, id: &[u8]) -> anyhow::Result<()> {
    let mut shown = 0usize;
    let mut waiting = String::new();
    let info = loop {
        let info = project.job(id).await?;
        for r in info.history.iter().skip(shown) {
            println!(
                "round {}/{}  loss {:.4}{}{}  tasks {}/{}  {:.2}s (coordination {:.2}s)",
                r.round,
                info.rounds,
                r.loss,
                accuracy_text(&info, r),
                validation_text(&info, r),
                r.tasks_accepted,
                info.tasks_total,
                r.duration_ms as f64 / 1000.0,
                r.coordination_ms as f64 / 1000.0,
            );
        }
        shown = info.history.len();
        if info.state != pb::JobState::JobRunning as i32 {
            break info;
        }
        if info.waiting != waiting {
            if !info.waiting.is_empty() {
                eprintln!("waiting: {}", info.waiting);
            }
            waiting = info.waiting.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    match pb::JobState::try_from(info.state) {
        Ok(pb::JobState::JobDone) => {}
        _ => bail!("job {}: {}", state_name(info.state), info.error),
    }
    let (bucket, key) = project
        .job_output(&info)
        .context("the job was submitted with another access; cannot tell where its model goes")?;
    let size = project.save_model(&info, &bucket, &key).await?;
    println!(
        "Model stored at loam://{bucket}/{key} ({}); work {:.3} units, dataset bytes moved {}, weights moved {}",
        human_bytes(size),
        info.work_units,
        info.dataset_bytes_fetched,
        human_bytes(info.weight_bytes)
    );
    Ok(())
}

fn device_name(wire: i32) -> &'static str {
    match pb::Device::try_from(wire) {
        Ok(pb::Device::Gpu) => "gpu",
        Ok(pb::Device::Cpu) => "cpu",
        Err(_) => "unknown",
    }
}

fn job_json(j: &pb::JobInfo) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": hex::encode(&j.job_id),
        "state": state_name(j.state),
        "error": j.error,
        "round": j.round,
        "rounds": j.rounds,
        "patience": j.patience,
        "device": device_name(j.device),
        "best_round": j.best_round,
        "stopped_early": (!j.stopped_early.is_empty()).then_some(&j.stopped_early),
        "loss": j.history.last().map(|r| r.loss),
        "accuracy": j.history.last().map(|r| r.accuracy),
        "tasks_total": j.tasks_total,
        "tasks_running": j.tasks_running,
        "waiting": j.waiting,
        "tasks_done": j.tasks_done,
        "tasks_failed": j.tasks_failed,
        "tasks_verified": j.tasks_verified,
        "verification_failures": j.verification_failures,
        "work_units": j.work_units,
        "samples": j.samples,
        "dataset_bytes_fetched": j.dataset_bytes_fetched,
        "verify_bytes_fetched": j.verify_bytes_fetched,
        "weight_bytes": j.weight_bytes,
        "weight_bytes_per_round": j.weight_bytes / u64::from(j.round.max(1)),
        "listings": j.listings.iter().map(|l| format!("market:{}", hex::encode(l))).collect::<Vec<_>>(),
        "data_fees": j.data_fees,
        "compute_charged": j.compute_charged,
        "egress_charged": j.egress_charged,
        "history": j.history.iter().map(|r| serde_json::json!({
            "round": r.round, "loss": r.loss, "accuracy": r.accuracy,
            "validation": (r.val_records > 0).then(|| serde_json::json!({
                "after_round": r.round.saturating_sub(1), "loss": r.val_loss,
                "accuracy": r.val_accuracy, "records": r.val_records,
            })),
            "samples": r.samples, "tasks_accepted": r.tasks_accepted,
            "tasks_rejected": r.tasks_rejected, "weight_bytes": r.weight_bytes,
            "duration_ms": r.duration_ms, "coordination_ms": r.coordination_ms,
            "train_ms": r.train_ms,
        })).collect::<Vec<_>>(),
    });
    v["model"] = j.spec.as_ref().map(|s| s.architecture.clone()).into();
    v["optimizer"] = j
        .params
        .as_ref()
        .map(|p| if p.optimizer == 0 { "adam" } else { "sgd" })
        .into();
    v["learning_rate"] = j.params.as_ref().map(|p| p.learning_rate).into();
    v["algorithm"] = j
        .aggregation
        .as_ref()
        .and_then(|a| Choice::try_from(a).ok())
        .map(|c| c.algorithm.to_string())
        .into();
    v
}

pub async fn job(project: &Project, cmd: JobCommand) -> anyhow::Result<()> {
    match cmd {
        JobCommand::Ls { output } => {
            let jobs = project.jobs().await?;
            if output == Output::Json {
                for j in &jobs {
                    loam_common::cli::print_json_line(&job_json(j))?;
                }
                return Ok(());
            }
            println!(
                "{:<32}  {:<9}  {:>7}  {:>8}  CREATED (UTC)",
                "ID", "STATE", "ROUND", "ACCURACY"
            );
            for j in &jobs {
                println!(
                    "{:<32}  {:<9}  {:>7}  {:>8}  {}",
                    hex::encode(&j.job_id),
                    state_name(j.state),
                    format!("{}/{}", j.round, j.rounds),
                    j.history
                        .last()
                        .map_or("-".into(), |r| if is_regression(j) {
                            if r.val_records == 0 {
                                "-".to_string()
                            } else {
                                format!("R²≈{:.3}", 1.0 - f64::from(r.val_loss))
                            }
                        } else {
                            format!("{:.4}", r.accuracy)
                        }),
                    crate::format_time(j.created_unix_ms)
                );
            }
        }
        JobCommand::Status { id, output } => {
            let j = project.job(&project.resolve_job_id(&id).await?).await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&job_json(&j))?);
                return Ok(());
            }
            let last = j.history.last();
            println!("job                 {}", hex::encode(&j.job_id));
            println!(
                "state               {}{}",
                state_name(j.state),
                if j.error.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", j.error)
                }
            );
            if let Some(s) = &j.spec {
                println!(
                    "model               {}{} hidden {:?}, {} inputs, {}",
                    s.architecture,
                    if s.conv.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " conv {:?} on {}x{}x{} images,",
                            s.conv, s.image_height, s.image_width, s.image_channels
                        )
                    },
                    s.hidden,
                    s.inputs,
                    if s.task.is_empty() {
                        format!("{} classes", s.classes)
                    } else {
                        format!("{} ({} output)", s.task, s.classes)
                    }
                );
            }
            println!("device              {}", device_name(j.device));
            println!(
                "round               {}/{}{}",
                j.round,
                j.rounds,
                if j.patience > 0 {
                    format!(
                        " (auto: stops after {} rounds without a better validation loss)",
                        j.patience
                    )
                } else {
                    String::new()
                }
            );
            if let Some(p) = j.params.as_ref() {
                println!(
                    "local training      {} lr {}, batch {}, {} epochs, {}% held out for validation{}",
                    if p.optimizer == 0 { "adam" } else { "sgd" },
                    p.learning_rate,
                    p.batch,
                    p.local_epochs,
                    p.validation_percent,
                    if p.proximal > 0.0 {
                        format!(", proximal {}", p.proximal)
                    } else {
                        String::new()
                    }
                );
            }
            if j.history.iter().any(|r| r.val_records > 0) {
                println!(
                    "best weights        after round {}{}",
                    j.best_round,
                    if j.stopped_early.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", j.stopped_early)
                    }
                );
                println!("validation curve    (weights after each round, on the held-out records)");
                for r in j.history.iter().filter(|r| r.val_records > 0) {
                    println!(
                        "  round {:>3}  loss {:.4}  {}  ({} records)",
                        r.round.saturating_sub(1),
                        r.val_loss,
                        val_score(&j, r),
                        r.val_records
                    );
                }
            }
            if let Some(c) = j
                .aggregation
                .as_ref()
                .and_then(|a| Choice::try_from(a).ok())
            {
                println!(
                    "aggregation         {}, {}{}",
                    c.algorithm,
                    c.rule,
                    c.clip
                        .map_or(String::new(), |f| format!(", clip at {f}× the median"))
                );
            }
            println!(
                "loss                {}",
                last.map_or("-".into(), |r| format!("{:.4}", r.loss))
            );
            if !is_regression(&j) {
                println!(
                    "accuracy            {}",
                    last.map_or("-".into(), |r| format!(
                        "{:.4} (training, last round)",
                        r.accuracy
                    ))
                );
            }
            println!(
                "tasks               {} per round: {} running, {} done, {} failed",
                j.tasks_total, j.tasks_running, j.tasks_done, j.tasks_failed
            );
            if !j.waiting.is_empty() {
                println!("waiting             {}", j.waiting);
            }
            println!(
                "verification        {} tasks re-executed, {} failures",
                j.tasks_verified, j.verification_failures
            );
            println!(
                "work done           {:.4} units, {} samples",
                j.work_units, j.samples
            );
            println!(
                "dataset bytes moved {} for training, {} for verification",
                j.dataset_bytes_fetched, j.verify_bytes_fetched
            );
            println!(
                "weights moved       {} ({} per round)",
                human_bytes(j.weight_bytes),
                human_bytes(j.weight_bytes / u64::from(j.round.max(1)))
            );
            if let Some(r) = last {
                println!(
                    "last round          {:.2}s, coordination {:.2}s",
                    r.duration_ms as f64 / 1000.0,
                    r.coordination_ms as f64 / 1000.0
                );
            }
        }
        JobCommand::Cancel { id } => {
            let j = project
                .cancel_job(&project.resolve_job_id(&id).await?)
                .await?;
            println!(
                "Job {} cancelling (was {})",
                hex::encode(&j.job_id),
                state_name(j.state)
            );
        }
        JobCommand::Wait { id } => wait(project, &project.resolve_job_id(&id).await?).await?,
    }
    Ok(())
}

/// What `uplink train` does when the user does not say.
struct TaskDefaults {
    model: &'static str,
    rounds: Rounds,
}

impl TaskDefaults {
    fn of(task: Task, images: bool) -> Self {
        match task {
            Task::Classification if images => Self {
                model: "cnn",
                rounds: Rounds::Auto,
            },
            Task::Classification => Self {
                model: "mlp",
                rounds: Rounds::Auto,
            },
            // A linear model, run for a fixed number of rounds: on small
            // tabular sets the MLP does no better, and the held-out squared
            // error is too noisy for `auto` to stop at the right round
            // (docs/compute.md has the measurements).
            Task::Regression => Self {
                model: "linear",
                rounds: Rounds::Fixed(100),
            },
        }
    }
}

/// The local optimizer, its learning rate and the server's algorithm of a
/// job on `architecture`, where the user left them out.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LocalDefaults {
    optimizer: Optimizer,
    learning_rate: f64,
    algorithm: Algorithm,
}

impl LocalDefaults {
    fn of(
        architecture: &str,
        task: Task,
        optimizer: Option<Optimizer>,
        algorithm: Option<Algorithm>,
    ) -> anyhow::Result<Self> {
        let cnn = architecture == "cnn";
        // Under plain SGD a CNN learns more slowly than an MLP on the same
        // images (its gradients are small at the start), so a CNN trains
        // with Adam at a smaller step than an MLP's Adam (docs/compute.md
        // "Images and CNNs" has the measurements).
        let optimizer = optimizer.unwrap_or(if cnn {
            Optimizer::Adam
        } else {
            Optimizer::default()
        });
        let learning_rate = match optimizer {
            Optimizer::Adam if cnn => 0.003,
            o => o.default_learning_rate_for(task),
        };
        // SCAFFOLD estimates each task's mean gradient from its SGD steps,
        // which Adam's steps are not.
        let algorithm = match algorithm {
            Some(a) => a,
            None if optimizer == Optimizer::Adam => Algorithm::FedAvgM,
            None => Algorithm::default(),
        };
        algorithm
            .check_optimizer(optimizer)
            .map_err(anyhow::Error::msg)?;
        Ok(Self {
            optimizer,
            learning_rate,
            algorithm,
        })
    }
}

/// `uplink dataset put --task`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskArg {
    Classification,
    Regression,
}

impl From<TaskArg> for Task {
    fn from(t: TaskArg) -> Self {
        match t {
            TaskArg::Classification => Self::Classification,
            TaskArg::Regression => Self::Regression,
        }
    }
}

/// `uplink train --device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Gpu,
}

impl From<DeviceArg> for pb::Device {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Cpu => Self::Cpu,
            DeviceArg::Gpu => Self::Gpu,
        }
    }
}

/// The formats `uplink model export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// safetensors (Hugging Face): loads in PyTorch, NumPy, JAX, ...
    Safetensors,
}

/// Whether a model command needs the network (a loam:// model).
pub fn model_needs_access(cmd: &ModelCommand) -> bool {
    let m = match cmd {
        ModelCommand::Eval { model, .. }
        | ModelCommand::Predict { model, .. }
        | ModelCommand::Export { model, .. } => model,
        ModelCommand::Publish(_) => return true,
    };
    m.starts_with("loam://") || m.starts_with("market:")
}

async fn load_model(project: Option<&Project>, model: &str) -> anyhow::Result<ModelFile> {
    let bytes = match project {
        Some(p) if model.starts_with("loam://") => {
            let u = parse_loam(model)?;
            p.read_all(&u.bucket, &u.key).await?
        }
        Some(p) if model.starts_with("market:") => {
            let id = loam_uplink::market::parse_listing_id(model)?;
            let (bytes, charged) = p.fetch_model(&id).await?;
            eprintln!("bought one download of {model} for {charged} base units");
            bytes
        }
        _ => std::fs::read(model).with_context(|| format!("cannot read model {model}"))?,
    };
    // Models exported as safetensors load too (their metadata carries
    // what the Loam header would).
    if bytes.starts_with(b"LOAMMDL1") {
        Ok(ModelFile::from_bytes(&bytes)?)
    } else {
        loam_compute::export::from_safetensors(&bytes)
            .with_context(|| format!("{model} is neither a Loam model nor an exported one"))
    }
}

pub async fn model(project: Option<&Project>, cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Publish(args) => {
            let project = project.context("publishing needs an access grant")?;
            crate::cli_market::publish_model(project, args).await?;
        }
        ModelCommand::Eval {
            model,
            data,
            label,
            delimiter,
            output,
        } => {
            let m = load_model(project, &model).await?;
            let schema = &m.header.schema;
            if let Some(l) = &label
                && l != schema.label_name()
            {
                bail!("the model predicts {:?}, not {l:?}", schema.label_name());
            }
            let text = read_model_data(&data, delimiter, &m)?;
            check_header(&text, schema)?;
            let records = loam_compute::dataset::parse_records(&text, schema, true)?;
            if records.is_empty() {
                bail!("{} has no records", data.display());
            }
            if schema.task.is_regression() {
                let e = loam_compute::train::evaluate_regression(
                    &m.header.spec,
                    &m.weights,
                    &records,
                    schema,
                )?;
                if output == Output::Json {
                    println!("{}", serde_json::to_string_pretty(&e)?);
                } else {
                    println!("R²   {:.4}", e.r2);
                    println!("MAE  {:.4}", e.mae);
                    println!("RMSE {:.4}", e.rmse);
                    println!("records {}", e.records);
                }
                return Ok(());
            }
            let eval = loam_compute::train::evaluate(&m.header.spec, &m.weights, &records)?;
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "accuracy": eval.accuracy,
                        "macro_f1": eval.macro_f1,
                        "log_loss": eval.log_loss,
                        "records": eval.records,
                        "classes": schema.classes,
                        "per_class": schema.classes.iter().zip(&eval.per_class).map(|(c, m)| {
                            serde_json::json!({
                                "class": c,
                                "precision": m.precision,
                                "recall": m.recall,
                                "f1": m.f1,
                                "support": m.support,
                            })
                        }).collect::<Vec<_>>(),
                        "confusion_matrix": eval.matrix,
                    }))?
                );
                return Ok(());
            }
            println!("accuracy {:.4}", eval.accuracy);
            println!("macro F1 {:.4}", eval.macro_f1);
            println!("log loss {:.4}", eval.log_loss);
            println!("records {}", eval.records);
            let w = schema
                .classes
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(1)
                .max(5);
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "\n{:>w$} {:>9} {:>9} {:>9} {:>9}",
                "class", "precision", "recall", "f1", "records"
            )?;
            for (c, m) in schema.classes.iter().zip(&eval.per_class) {
                writeln!(
                    out,
                    "{c:>w$} {:>9.4} {:>9.4} {:>9.4} {:>9}",
                    m.precision, m.recall, m.f1, m.support
                )?;
            }
            writeln!(
                out,
                "\nconfusion matrix (rows: true class, columns: predicted)"
            )?;
            write!(out, "{:>w$}", "")?;
            for c in &schema.classes {
                write!(out, " {c:>w$}")?;
            }
            writeln!(out)?;
            for (c, row) in schema.classes.iter().zip(&eval.matrix) {
                write!(out, "{c:>w$}")?;
                for n in row {
                    write!(out, " {n:>w$}")?;
                }
                writeln!(out)?;
            }
        }
        ModelCommand::Predict {
            model,
            data,
            out,
            delimiter,
            probabilities,
        } => {
            let m = load_model(project, &model).await?;
            let schema = m.header.schema.clone();
            let text = read_model_data(&data, delimiter, &m)?;
            let records = predict_records(&text, &schema)?;
            if schema.task.is_regression() && probabilities {
                bail!("--probabilities is for classifiers; this model predicts a number");
            }
            let values = if schema.task.is_regression() {
                loam_compute::train::predict_values(&m.header.spec, &m.weights, &records, &schema)?
            } else {
                Vec::new()
            };
            let pred = if schema.task.is_regression() {
                Vec::new()
            } else {
                loam_compute::train::predict(&m.header.spec, &m.weights, &records)?
            };
            let probs = if probabilities {
                loam_compute::train::probabilities(&m.header.spec, &m.weights, &records)?
            } else {
                Vec::new()
            };
            let mut w: Box<dyn Write> = match &out {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("cannot create {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut csv = csv::Writer::from_writer(&mut w);
            let mut head = vec![
                "row".to_string(),
                format!("predicted_{}", schema.label_name()),
            ];
            if probabilities {
                head.extend(schema.classes.iter().map(|c| format!("p_{c}")));
            }
            csv.write_record(&head)?;
            for (i, v) in values.iter().enumerate() {
                csv.write_record([i.to_string(), v.to_string()])?;
            }
            let classes = schema.classes.len();
            for (i, p) in pred.iter().enumerate() {
                let mut row = vec![
                    i.to_string(),
                    schema
                        .classes
                        .get(*p as usize)
                        .map_or("?", String::as_str)
                        .to_string(),
                ];
                // f32's Display is the shortest text that reads back as the
                // same value.
                if let Some(ps) = probs.get(i * classes..(i + 1) * classes) {
                    row.extend(ps.iter().map(f32::to_string));
                }
                csv.write_record(&row)?;
            }
            csv.flush()?;
            drop(csv);
            w.flush()?;
        }
        ModelCommand::Export { model, format, out } => {
            let m = load_model(project, &model).await?;
            let bytes = match format {
                ExportFormat::Safetensors => loam_compute::export::to_safetensors(&m)?,
            };
            loam_common::config::write_atomic(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "wrote {} ({} {}, {} parameters, {} bytes)",
                out.display(),
                m.header.spec.architecture,
                m.header
                    .spec
                    .widths()
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join("-"),
                m.header.spec.params(),
                bytes.len()
            );
        }
    }
    Ok(())
}

/// The CSV's header must name the model's columns in order.
fn check_header(text: &[u8], schema: &loam_compute::Schema) -> anyhow::Result<()> {
    let header = loam_compute::dataset::header(text)?;
    if header != schema.columns {
        if !header.iter().any(|c| c == schema.label_name()) {
            bail!(
                "label column {:?} is missing from the data",
                schema.label_name()
            );
        }
        bail!(
            "the data's columns ({}) are not the model's ({})",
            header.join(","),
            schema.columns.join(",")
        );
    }
    Ok(())
}

/// Records of a (canonical) CSV for prediction: with the label column (any
/// known class) or without it.
fn predict_records(
    text: &[u8],
    schema: &loam_compute::Schema,
) -> anyhow::Result<loam_compute::Records> {
    if check_header(text, schema).is_ok() {
        return Ok(loam_compute::dataset::parse_records(text, schema, true)?);
    }
    let features: Vec<&str> = schema.feature_names().collect();
    let names = loam_compute::dataset::header(text)?;
    if names != features {
        bail!(
            "the data's columns ({}) are not the model's features ({})",
            names.join(","),
            features.join(",")
        );
    }
    // No label column: add a placeholder class (or value) to every record.
    let placeholder = schema.classes.first().map_or("0", String::as_str);
    let with_label =
        loam_compute::dataset::insert_column(text, schema.label, schema.label_name(), placeholder)?;
    Ok(loam_compute::dataset::parse_records(
        &with_label,
        schema,
        true,
    )?)
}
