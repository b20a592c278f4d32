//! Folders of images as datasets: `uplink dataset put DIR --images`.
//!
//! `DIR` holds one sub-folder per class, named after it, of PNG or JPEG
//! files. Every image becomes one record of the dataset's CSV: its pixels
//! (0 to 255, channel by channel, row by row: the `C×H×W` order CNNs take)
//! in columns `p0…pN`, then the class in the label column. Records are
//! whole lines, so a data piece holds whole images, as it holds whole CSV
//! records. Images are converted to grayscale when every one of them is
//! gray (else to RGB; alpha is dropped) and resized to one shape: the
//! images' own when they all share it, else the one asked for.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader};
use loam_common::compute::ImageShape;

#[derive(Debug, thiserror::Error)]
pub enum ImageFolderError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an image Loam can read: {message}")]
    Image { path: PathBuf, message: String },
    #[error(
        "{0} has no class folders: an image dataset is a folder of sub-folders named after their class, holding PNG or JPEG files"
    )]
    NoClasses(PathBuf),
    #[error("class folder {0} holds no PNG or JPEG file")]
    EmptyClass(PathBuf),
    #[error("the folder name {0:?} is not UTF-8 text (class names are)")]
    ClassName(PathBuf),
    #[error(
        "the images differ in size ({first}: {a}, {other}: {b}); give the size to resize them to with --image-shape HxW (or HxWx3 for color)"
    )]
    Sizes {
        first: PathBuf,
        a: String,
        other: PathBuf,
        b: String,
    },
    #[error("{0}")]
    Shape(#[from] loam_common::compute::SpecError),
    #[error("label column {0:?} would clash with the pixel columns p0, p1, ...")]
    LabelClash(String),
}

/// The images of a folder as one dataset CSV.
#[derive(Debug)]
pub struct ImageFolder {
    /// The records, in canonical CSV form (header `p0,…,label`).
    pub csv: Vec<u8>,
    /// The shape every image was converted to.
    pub shape: ImageShape,
    /// Each class with its number of images, in name order.
    pub classes: Vec<(String, usize)>,
    /// Files that are neither PNG nor JPEG (by extension), left out.
    pub skipped: Vec<PathBuf>,
}

/// Each class with its image files.
type Classes = Vec<(String, Vec<PathBuf>)>;

/// The PNG and JPEG files under each class folder of `dir`, by name, and
/// the files left out.
fn list(dir: &Path) -> Result<(Classes, Vec<PathBuf>), ImageFolderError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageFolderError::Io { path, source }
    };
    let sorted = |d: &Path| -> Result<Vec<PathBuf>, ImageFolderError> {
        let mut v = std::fs::read_dir(d)
            .map_err(io(d))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io(d))?;
        v.sort();
        Ok(v)
    };
    let hidden = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
    };
    let mut classes = Vec::new();
    let mut skipped = Vec::new();
    for entry in sorted(dir)? {
        if hidden(&entry) {
            continue;
        }
        if !entry.is_dir() {
            skipped.push(entry);
            continue;
        }
        let name = entry
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ImageFolderError::ClassName(entry.clone()))?
            .to_string();
        let mut files = Vec::new();
        for f in sorted(&entry)? {
            if hidden(&f) {
                continue;
            }
            let ext = f
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            if f.is_file() && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
                files.push(f);
            } else {
                skipped.push(f);
            }
        }
        if files.is_empty() {
            return Err(ImageFolderError::EmptyClass(entry));
        }
        classes.push((name, files));
    }
    if classes.is_empty() {
        return Err(ImageFolderError::NoClasses(dir.to_path_buf()));
    }
    Ok((classes, skipped))
}

fn reader(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>, ImageFolderError> {
    ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|source| ImageFolderError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn image_error(path: &Path, e: image::ImageError) -> ImageFolderError {
    ImageFolderError::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The shape the images of `classes` share, from their headers alone:
/// their size, with three channels if any is in color.
fn common_shape(classes: &[(String, Vec<PathBuf>)]) -> Result<ImageShape, ImageFolderError> {
    let mut first: Option<(PathBuf, (u32, u32))> = None;
    let mut color = false;
    for path in classes.iter().flat_map(|(_, f)| f) {
        let decoder = reader(path)?
            .into_decoder()
            .map_err(|e| image_error(path, e))?;
        let size = decoder.dimensions();
        color |= decoder.color_type().has_color();
        match &first {
            None => first = Some((path.clone(), size)),
            Some((p, s)) if *s != size => {
                return Err(ImageFolderError::Sizes {
                    first: p.clone(),
                    a: format!("{}x{}", s.1, s.0),
                    other: path.clone(),
                    b: format!("{}x{}", size.1, size.0),
                });
            }
            Some(_) => {}
        }
    }
    let (_, (w, h)) = first.ok_or(ImageFolderError::NoClasses(PathBuf::new()))?;
    Ok(ImageShape::new(
        h as usize,
        w as usize,
        if color { 3 } else { 1 },
    )?)
}

/// `image`'s pixels in `shape` (resized if needed), channel by channel.
fn pixels(image: DynamicImage, shape: ImageShape) -> Vec<u8> {
    let (w, h) = (shape.width as u32, shape.height as u32);
    let image = if image.width() != w || image.height() != h {
        image.resize_exact(w, h, FilterType::Triangle)
    } else {
        image
    };
    if shape.channels == 1 {
        return image.to_luma8().into_raw();
    }
    let rgb = image.to_rgb8().into_raw();
    let plane = shape.height * shape.width;
    let mut out = vec![0u8; plane * shape.channels];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            out[c * plane + i] = v;
        }
    }
    out
}

/// Reads every image under `dir` as [`ImageFolder`] records, labelled in
/// column `label`. `shape` resizes them (and picks gray or color); without
/// it they must share one size. `progress` is called with the images done
/// and the total.
pub fn read_image_folder(
    dir: &Path,
    shape: Option<ImageShape>,
    label: &str,
    mut progress: impl FnMut(usize, usize),
) -> Result<ImageFolder, ImageFolderError> {
    if label
        .strip_prefix('p')
        .is_some_and(|n| n.parse::<usize>().is_ok())
    {
        return Err(ImageFolderError::LabelClash(label.to_string()));
    }
    let (classes, skipped) = list(dir)?;
    let shape = match shape {
        Some(s) => ImageShape::new(s.height, s.width, s.channels)?,
        None => common_shape(&classes)?,
    };
    if shape.channels != 1 && shape.channels != 3 {
        return Err(ImageFolderError::Shape(
            loam_common::compute::SpecError::BadModel(format!(
                "images are read as gray (1 channel) or color (3), not {} channels",
                shape.channels
            )),
        ));
    }
    let total: usize = classes.iter().map(|(_, f)| f.len()).sum();
    let mut csv = Vec::with_capacity(total * (shape.pixels() * 4 + 16));
    let header: Vec<String> = (0..shape.pixels()).map(|i| format!("p{i}")).collect();
    csv.extend_from_slice(header.join(",").as_bytes());
    csv.push(b',');
    push_cell(&mut csv, label);
    csv.push(b'\n');
    let mut done = 0;
    let mut counts = Vec::with_capacity(classes.len());
    for (class, files) in &classes {
        for path in files {
            let image = reader(path)?.decode().map_err(|e| image_error(path, e))?;
            for v in pixels(image, shape) {
                csv.extend_from_slice(v.to_string().as_bytes());
                csv.push(b',');
            }
            push_cell(&mut csv, class);
            csv.push(b'\n');
            done += 1;
            progress(done, total);
        }
        counts.push((class.clone(), files.len()));
    }
    Ok(ImageFolder {
        csv,
        shape,
        classes: counts,
        skipped,
    })
}

/// A CSV cell, quoted where the canonical form quotes it.
fn push_cell(out: &mut Vec<u8>, cell: &str) {
    if cell.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(cell.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(cell.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn gray(dir: &Path, class: &str, name: &str, size: (u32, u32), v: u8) {
        std::fs::create_dir_all(dir.join(class)).expect("mkdir");
        GrayImage::from_pixel(size.0, size.1, Luma([v]))
            .save(dir.join(class).join(name))
            .expect("save");
    }

    #[test]
    fn class_folders_become_records_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        gray(dir.path(), "b", "1.png", (3, 2), 7);
        gray(dir.path(), "a,x", "2.png", (3, 2), 200);
        gray(dir.path(), "a,x", "1.jpg", (3, 2), 0);
        std::fs::write(dir.path().join("b").join("notes.txt"), "x").expect("write");
        std::fs::write(dir.path().join("b").join(".DS_Store"), "x").expect("write");
        let f = read_image_folder(dir.path(), None, "label", |_, _| {}).expect("read");
        assert_eq!(f.shape, ImageShape::new(2, 3, 1).expect("shape"));
        assert_eq!(f.classes, vec![("a,x".into(), 2), ("b".into(), 1)]);
        assert_eq!(f.skipped, vec![dir.path().join("b").join("notes.txt")]);
        let text = String::from_utf8(f.csv).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "p0,p1,p2,p3,p4,p5,label");
        // JPEG is lossy, but a flat black image stays black.
        assert_eq!(lines[1], "0,0,0,0,0,0,\"a,x\"");
        assert_eq!(lines[2], "200,200,200,200,200,200,\"a,x\"");
        assert_eq!(lines[3], "7,7,7,7,7,7,b");
        // What is written is what a dataset stores.
        assert_eq!(
            loam_compute::dataset::normalize(text.as_bytes(), b',').expect("normalize"),
            text.as_bytes()
        );
    }

    #[test]
    fn color_images_are_channel_planes_and_sizes_must_agree() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("red")).expect("mkdir");
        let mut img = RgbImage::from_pixel(2, 2, Rgb([255, 0, 0]));
        img.put_pixel(1, 0, Rgb([1, 2, 3]));
        img.save(dir.path().join("red").join("a.png"))
            .expect("save");
        gray(dir.path(), "gray", "g.png", (2, 2), 9);
        let f = read_image_folder(dir.path(), None, "label", |_, _| {}).expect("read");
        assert_eq!(f.shape.channels, 3);
        let text = String::from_utf8(f.csv).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "9,9,9,9,9,9,9,9,9,9,9,9,gray");
        // R plane, G plane, B plane; pixel (x=1, y=0) is the second.
        assert_eq!(lines[2], "255,1,255,255,0,2,0,0,0,3,0,0,red");
        gray(dir.path(), "gray", "big.png", (4, 4), 9);
        let e = read_image_folder(dir.path(), None, "label", |_, _| {}).expect_err("sizes");
        assert!(e.to_string().contains("--image-shape"), "{e}");
        // Resized to the shape asked for, as gray.
        let mut seen = 0;
        let f = read_image_folder(
            dir.path(),
            Some("2x2".parse().expect("shape")),
            "label",
            |done, total| {
                seen = done;
                assert_eq!(total, 3);
            },
        )
        .expect("resized");
        assert_eq!(seen, 3);
        assert_eq!(f.shape.pixels(), 4);
        let text = String::from_utf8(f.csv).expect("utf8");
        assert!(
            text.lines()
                .nth(1)
                .expect("line")
                .starts_with("9,9,9,9,gray")
        );
    }

    #[test]
    fn bad_folders_are_refused_with_the_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = read_image_folder(dir.path(), None, "label", |_, _| {}).expect_err("empty");
        assert!(matches!(e, ImageFolderError::NoClasses(_)), "{e}");
        std::fs::create_dir_all(dir.path().join("cat")).expect("mkdir");
        let e = read_image_folder(dir.path(), None, "label", |_, _| {}).expect_err("no files");
        assert!(matches!(e, ImageFolderError::EmptyClass(_)), "{e}");
        std::fs::write(dir.path().join("cat").join("x.png"), b"not a png").expect("write");
        let e = read_image_folder(dir.path(), None, "label", |_, _| {}).expect_err("garbage");
        assert!(e.to_string().contains("x.png"), "{e}");
        let e = read_image_folder(dir.path(), None, "p3", |_, _| {}).expect_err("clash");
        assert!(matches!(e, ImageFolderError::LabelClash(_)), "{e}");
        assert!(read_image_folder(&dir.path().join("nope"), None, "label", |_, _| {}).is_err());
    }
}
