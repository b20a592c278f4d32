//! Commands over many objects at once: `cp -r` both ways, `rm -r` and
//! `rb --force`. Objects go `--parallelism` at a time; one object's failure
//! is reported and the others go on, and the command fails at the end if
//! any did.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::StreamExt;
use loam_uplink::{Item, Project};

use crate::{escape_key, parse_loam, partial_path};

/// Settings shared by the recursive commands.
pub(crate) struct Batch {
    /// Objects transferred or removed at once.
    pub(crate) parallelism: usize,
    /// Print what would be done, do nothing.
    pub(crate) dry_run: bool,
    /// Show a progress bar.
    pub(crate) show: bool,
}

/// A regular file under a directory being uploaded, with its key suffix.
struct LocalFile {
    path: PathBuf,
    key: String,
    size: u64,
}

/// Every regular file under `root` (symbolic links to files followed,
/// to directories not, so a link cannot loop), with the key suffix each
/// gets: its path relative to `root`, components joined by `/`. Sorted by
/// key.
fn local_tree(root: &Path) -> anyhow::Result<Vec<LocalFile>> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name
                .to_str()
                .with_context(|| format!("{} is not UTF-8; object keys must be", path.display()))?;
            let key = format!("{prefix}{name}");
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push((path, format!("{key}/")));
            } else if kind.is_file() || (kind.is_symlink() && path.is_file()) {
                let size = std::fs::metadata(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .len();
                out.push(LocalFile { path, key, size });
            } else {
                eprintln!("skipping {} (not a regular file)", path.display());
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Where object key suffix `rel` goes under directory `dir`, refusing
/// anything that would land outside it (`..`, empty or `.` components,
/// NUL bytes, absolute paths).
pub(crate) fn local_path(dir: &Path, rel: &str) -> anyhow::Result<PathBuf> {
    let mut path = dir.to_path_buf();
    for part in rel.split('/') {
        if matches!(part, "" | "." | "..") || part.contains('\0') {
            bail!(
                "object key part {} cannot be a file name; copy that object on its own",
                escape_key(rel)
            );
        }
        path.push(part);
    }
    Ok(path)
}

/// A bar over `total` bytes and `files` objects.
fn bar(show: bool, total: u64) -> Option<indicatif::ProgressBar> {
    if !show {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40.cyan/blue} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    Some(bar)
}

/// Runs `op` on every item, `parallelism` at a time; prints each failure
/// and fails at the end with their count.
async fn for_each<T, F, Fut>(
    items: Vec<T>,
    parallelism: usize,
    what: &str,
    op: F,
) -> anyhow::Result<()>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let total = items.len();
    let failures: Vec<anyhow::Error> = futures::stream::iter(items)
        .map(op)
        .buffer_unordered(parallelism.max(1))
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    for e in &failures {
        eprintln!("uplink: {e:#}");
    }
    if !failures.is_empty() {
        bail!("{} of {total} {what} failed", failures.len());
    }
    Ok(())
}

/// `cp -r`: a local directory to a `loam://` prefix or a prefix to a local
/// directory. The tree's contents go under the destination, as with
/// `aws s3 cp --recursive`.
pub(crate) async fn copy(
    project: &Project,
    source: &str,
    destination: &str,
    batch: &Batch,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (objects, bytes) = match (
        source.starts_with("loam://"),
        destination.starts_with("loam://"),
    ) {
        (false, true) => upload_tree(project, Path::new(source), destination, batch).await?,
        (true, false) => download_tree(project, source, Path::new(destination), batch).await?,
        (true, true) => relocate_all(project, source, destination, batch, Relocate::Copy).await?,
        (false, false) => bail!("one of source and destination must be a loam:// URL"),
    };
    if !batch.dry_run {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "{objects} objects, {} in {secs:.2} s ({}/s)",
            crate::human(bytes),
            crate::human((bytes as f64 / secs.max(1e-9)) as u64)
        );
    }
    Ok(())
}

/// The destination prefix of a `loam://bucket[/prefix]` URL, ending in `/`
/// unless it is empty.
pub(crate) fn prefix_of(key: &str) -> String {
    if key.is_empty() || key.ends_with('/') {
        key.to_string()
    } else {
        format!("{key}/")
    }
}

async fn upload_tree(
    project: &Project,
    dir: &Path,
    destination: &str,
    batch: &Batch,
) -> anyhow::Result<(usize, u64)> {
    if !dir.is_dir() {
        bail!(
            "{} is not a directory; cp without -r copies one file",
            dir.display()
        );
    }
    let dst = parse_loam(destination)?;
    let prefix = prefix_of(&dst.key);
    let files = local_tree(dir)?;
    let (count, bytes) = (files.len(), files.iter().map(|f| f.size).sum::<u64>());
    if batch.dry_run {
        for f in &files {
            println!(
                "would upload {} to loam://{}/{}{}",
                f.path.display(),
                dst.bucket,
                prefix,
                escape_key(&f.key)
            );
        }
        return Ok((count, bytes));
    }
    let bar = bar(batch.show, bytes);
    let bucket = dst.bucket.as_str();
    for_each(files, batch.parallelism, "uploads", |f| {
        let (bar, prefix) = (bar.clone(), &prefix);
        async move {
            let file = std::fs::File::open(&f.path)
                .with_context(|| format!("cannot open {}", f.path.display()))?;
            let progress =
                bar.map(|b| -> loam_uplink::Progress { std::sync::Arc::new(move |n| b.inc(n)) });
            let key = format!("{prefix}{}", f.key);
            project
                .upload_file(bucket, &key, file, progress)
                .await
                .with_context(|| format!("uploading {}", f.path.display()))?;
            Ok(())
        }
    })
    .await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok((count, bytes))
}

async fn download_tree(
    project: &Project,
    source: &str,
    dir: &Path,
    batch: &Batch,
) -> anyhow::Result<(usize, u64)> {
    let src = parse_loam(source)?;
    let prefix = prefix_of(&src.key);
    let items = objects_under(project, &src.bucket, &prefix, source).await?;
    // Every target path is checked before anything is written.
    let mut jobs = Vec::with_capacity(items.len());
    for item in items {
        let rel = item
            .key
            .strip_prefix(&prefix)
            .unwrap_or(&item.key)
            .to_string();
        let path = local_path(dir, &rel)?;
        jobs.push((item, path));
    }
    let (count, bytes) = (jobs.len(), jobs.iter().map(|(i, _)| i.size).sum::<u64>());
    if batch.dry_run {
        for (item, path) in &jobs {
            println!(
                "would download loam://{}/{} to {}",
                src.bucket,
                escape_key(&item.key),
                path.display()
            );
        }
        return Ok((count, bytes));
    }
    let bar = bar(batch.show, bytes);
    let bucket = src.bucket.as_str();
    for_each(jobs, batch.parallelism, "downloads", |(item, path)| {
        let bar = bar.clone();
        async move {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let tmp = partial_path(&path)?;
            let file = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            let progress =
                bar.map(|b| -> loam_uplink::Progress { std::sync::Arc::new(move |n| b.inc(n)) });
            match project
                .download_to_file(bucket, &item.key, file, progress)
                .await
            {
                Ok(_) => std::fs::rename(&tmp, &path)
                    .with_context(|| format!("cannot write {}", path.display())),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    Err(anyhow::Error::from(e).context(format!(
                        "downloading loam://{bucket}/{}",
                        escape_key(&item.key)
                    )))
                }
            }
        }
    })
    .await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok((count, bytes))
}

/// Removes every object under `prefix` of `bucket` (the whole bucket when
/// empty); returns how many.
pub(crate) async fn remove_all(
    project: &Project,
    bucket: &str,
    prefix: &str,
    batch: &Batch,
) -> anyhow::Result<usize> {
    let keys: Vec<String> = project
        .list(bucket, prefix, true)
        .await?
        .into_iter()
        .filter(|i| !i.is_prefix)
        .map(|i| i.key)
        .collect();
    if batch.dry_run {
        for key in &keys {
            println!("would remove loam://{bucket}/{}", escape_key(key));
        }
        return Ok(keys.len());
    }
    let n = keys.len();
    for_each(keys, batch.parallelism, "removals", |key| async move {
        project
            .delete(bucket, &key)
            .await
            .with_context(|| format!("removing loam://{bucket}/{}", escape_key(&key)))?;
        println!("removed loam://{bucket}/{}", escape_key(&key));
        Ok(())
    })
    .await?;
    Ok(n)
}

/// Every object under `prefix` (recursively); none is an error naming
/// `url`.
async fn objects_under(
    project: &Project,
    bucket: &str,
    prefix: &str,
    url: &str,
) -> anyhow::Result<Vec<Item>> {
    let items: Vec<Item> = project
        .list(bucket, prefix, true)
        .await?
        .into_iter()
        .filter(|i| !i.is_prefix)
        .collect();
    if items.is_empty() {
        bail!("nothing under {url}");
    }
    Ok(items)
}

/// Whether [`relocate_all`] moves or copies.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Relocate {
    Move,
    Copy,
}

/// `mv -r` and `cp -r` between two `loam://` prefixes: every object under
/// the source prefix, moved or copied on the satellite (no piece data
/// moves) to the same relative key under the destination prefix. Returns
/// the objects and their bytes.
pub(crate) async fn relocate_all(
    project: &Project,
    source: &str,
    destination: &str,
    batch: &Batch,
    how: Relocate,
) -> anyhow::Result<(usize, u64)> {
    let (src, dst) = (parse_loam(source)?, parse_loam(destination)?);
    let (from, to) = (prefix_of(&src.key), prefix_of(&dst.key));
    if src.bucket == dst.bucket && to.starts_with(&from) {
        bail!("{destination} lies under {source}; choose a destination outside it");
    }
    let items = objects_under(project, &src.bucket, &from, source).await?;
    let (count, bytes) = (items.len(), items.iter().map(|i| i.size).sum::<u64>());
    let verb = match how {
        Relocate::Move => "move",
        Relocate::Copy => "copy",
    };
    let target = |key: &str| format!("{to}{}", key.strip_prefix(&from).unwrap_or(key));
    if batch.dry_run {
        for item in &items {
            println!(
                "would {verb} loam://{}/{} to loam://{}/{}",
                src.bucket,
                escape_key(&item.key),
                dst.bucket,
                escape_key(&target(&item.key))
            );
        }
        return Ok((count, bytes));
    }
    let (sb, db) = (src.bucket.as_str(), dst.bucket.as_str());
    for_each(items, batch.parallelism, "objects", |item| {
        let new_key = target(&item.key);
        async move {
            let done = match how {
                Relocate::Move => project.move_object(sb, &item.key, db, &new_key).await,
                Relocate::Copy => project.copy_object(sb, &item.key, db, &new_key).await,
            };
            done.with_context(|| format!("{verb} loam://{sb}/{}", escape_key(&item.key)))?;
            Ok(())
        }
    })
    .await?;
    Ok((count, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursive_downloads_stay_inside_the_directory() {
        let d = Path::new("/tmp/out");
        assert_eq!(
            local_path(d, "a/b/c").expect("ok"),
            d.join("a").join("b").join("c")
        );
        for bad in ["../x", "a/../../x", "a//b", "./a", "a/", "", "a/\0"] {
            assert!(local_path(d, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_local_tree_is_listed_with_relative_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        std::fs::write(dir.path().join("a/b/f"), b"1").expect("write");
        std::fs::write(dir.path().join("z"), b"22").expect("write");
        std::fs::create_dir_all(dir.path().join("empty")).expect("mkdir");
        let files = local_tree(dir.path()).expect("tree");
        let keys: Vec<(&str, u64)> = files.iter().map(|f| (f.key.as_str(), f.size)).collect();
        assert_eq!(keys, [("a/b/f", 1), ("z", 2)]);
    }
}
