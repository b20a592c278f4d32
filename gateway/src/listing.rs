//! S3 listing semantics over a level of plaintext keys.
//!
//! The satellite lists by encrypted path, component by component, so its
//! order is not the keys' order and it can only cut listings at `/`. The
//! gateway lists the deepest whole-component level under the requested
//! prefix, decrypts, sorts, and cuts pages here: prefix, any delimiter,
//! markers (V1), start-after and continuation tokens (V2), max-keys.

use base64::Engine;

/// One entry of a page: an object or a common prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<T> {
    Object(T),
    Prefix(String),
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub entries: Vec<Entry<T>>,
    /// Whether entries beyond this page exist.
    pub truncated: bool,
    /// The last key or common prefix on the page: what the next page
    /// starts after.
    pub last: Option<String>,
}

impl<T> Page<T> {
    pub fn objects(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Object(o) => Some(o),
            Entry::Prefix(_) => None,
        })
    }

    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Prefix(p) => Some(p.as_str()),
            Entry::Object(_) => None,
        })
    }
}

/// What a listing asks for.
#[derive(Debug, Clone, Default)]
pub struct Query<'a> {
    pub prefix: &'a str,
    /// None or empty: no grouping.
    pub delimiter: Option<&'a str>,
    /// Entries at or before this key (or common prefix) are skipped.
    pub after: Option<&'a str>,
    pub max_keys: usize,
}

/// The most keys a page holds, whatever is asked (as S3).
pub const MAX_KEYS: usize = 1000;

/// The whole-component level to list for `prefix`: everything up to and
/// including its last `/` (empty: the bucket's top).
pub fn level_of(prefix: &str) -> &str {
    match prefix.rfind('/') {
        Some(i) => &prefix[..=i],
        None => "",
    }
}

/// Cuts one page out of `items` (any order; `key` gives an item's key) as
/// S3 does: keys under the prefix, grouped at the first delimiter after
/// the prefix into common prefixes (each counts as one key), sorted by
/// UTF-8 bytes, after `after`, at most `max_keys`.
pub fn page<T>(mut items: Vec<T>, key: impl Fn(&T) -> &str, q: &Query<'_>) -> Page<T> {
    let delimiter = q.delimiter.filter(|d| !d.is_empty());
    items.retain(|i| key(i).starts_with(q.prefix));
    items.sort_by(|a, b| key(a).cmp(key(b)));
    let mut entries = Vec::new();
    let mut truncated = false;
    let mut last: Option<String> = None;
    for item in items {
        let k = key(&item);
        if q.after.is_some_and(|a| k <= a) {
            continue;
        }
        let group = delimiter.and_then(|d| {
            let rest = &k[q.prefix.len()..];
            rest.find(d)
                .map(|i| k[..q.prefix.len() + i + d.len()].to_string())
        });
        if let Some(g) = &group {
            // Keys rolled into a prefix already given (on this page or,
            // through the marker, on an earlier one) are not repeated.
            if last.as_deref() == Some(g.as_str()) || q.after.is_some_and(|a| g.as_str() <= a) {
                continue;
            }
        }
        if entries.len() >= q.max_keys.min(MAX_KEYS) {
            truncated = true;
            break;
        }
        match group {
            Some(g) => {
                last = Some(g.clone());
                entries.push(Entry::Prefix(g));
            }
            None => {
                last = Some(k.to_string());
                entries.push(Entry::Object(item));
            }
        }
    }
    Page {
        entries,
        truncated,
        last,
    }
}

const TOKEN_TAG: &str = "loam1:";

/// A V2 continuation token for the page after `last` (opaque to clients).
pub fn token_after(last: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{TOKEN_TAG}{last}"))
}

/// The key a continuation token continues after; None if it is not one of
/// ours.
pub fn after_token(token: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    String::from_utf8(raw)
        .ok()?
        .strip_prefix(TOKEN_TAG)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(page: &Page<String>) -> Vec<String> {
        page.entries
            .iter()
            .map(|e| match e {
                Entry::Object(k) => k.clone(),
                Entry::Prefix(p) => format!("{p}*"),
            })
            .collect()
    }

    fn list(all: &[&str], q: &Query<'_>) -> Page<String> {
        page(all.iter().map(|s| s.to_string()).collect(), |s| s, q)
    }

    const TREE: &[&str] = &[
        "photos/2024/b.jpg",
        "a",
        "photos/2023/a.jpg",
        "photos/2024/a.jpg",
        "docs-old/x",
        "docs/readme",
        "photos/index.html",
        "b/c/d",
        "b/",
        "z",
    ];

    #[test]
    fn no_delimiter_lists_every_key_sorted() {
        let p = list(
            TREE,
            &Query {
                max_keys: 1000,
                ..Default::default()
            },
        );
        assert_eq!(
            keys(&p),
            [
                "a",
                "b/",
                "b/c/d",
                "docs-old/x",
                "docs/readme",
                "photos/2023/a.jpg",
                "photos/2024/a.jpg",
                "photos/2024/b.jpg",
                "photos/index.html",
                "z"
            ]
        );
        assert!(!p.truncated);
    }

    #[test]
    fn slash_delimiter_groups_at_the_first_slash_after_the_prefix() {
        let q = Query {
            delimiter: Some("/"),
            max_keys: 1000,
            ..Default::default()
        };
        assert_eq!(
            keys(&list(TREE, &q)),
            ["a", "b/*", "docs-old/*", "docs/*", "photos/*", "z"]
        );
        let q = Query {
            prefix: "photos/",
            ..q
        };
        assert_eq!(
            keys(&list(TREE, &q)),
            ["photos/2023/*", "photos/2024/*", "photos/index.html"]
        );
        // A prefix that is not a whole component.
        let q = Query {
            prefix: "photos/20",
            ..q
        };
        assert_eq!(keys(&list(TREE, &q)), ["photos/2023/*", "photos/2024/*"]);
        let q = Query { prefix: "doc", ..q };
        assert_eq!(keys(&list(TREE, &q)), ["docs-old/*", "docs/*"]);
    }

    #[test]
    fn any_delimiter_works() {
        let q = Query {
            delimiter: Some("-"),
            max_keys: 1000,
            ..Default::default()
        };
        assert_eq!(
            keys(&list(TREE, &q)),
            [
                "a",
                "b/",
                "b/c/d",
                "docs-*",
                "docs/readme",
                "photos/2023/a.jpg",
                "photos/2024/a.jpg",
                "photos/2024/b.jpg",
                "photos/index.html",
                "z"
            ]
        );
        // A delimiter of several characters.
        let q = Query {
            delimiter: Some("/20"),
            ..q
        };
        assert_eq!(
            keys(&list(TREE, &q)),
            [
                "a",
                "b/",
                "b/c/d",
                "docs-old/x",
                "docs/readme",
                "photos/20*",
                "photos/index.html",
                "z"
            ]
        );
    }

    #[test]
    fn pages_follow_each_other_without_gaps_or_repeats() {
        for delimiter in [None, Some("/"), Some("a")] {
            for max_keys in [1, 2, 3, 7, 1000] {
                let whole = list(
                    TREE,
                    &Query {
                        delimiter,
                        max_keys: 1000,
                        ..Default::default()
                    },
                );
                let mut got = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let p = list(
                        TREE,
                        &Query {
                            delimiter,
                            max_keys,
                            after: after.as_deref(),
                            ..Default::default()
                        },
                    );
                    assert!(p.entries.len() <= max_keys);
                    got.extend(keys(&p));
                    if !p.truncated {
                        break;
                    }
                    after = p.last.clone();
                }
                assert_eq!(got, keys(&whole), "{delimiter:?} by {max_keys}");
            }
        }
    }

    #[test]
    fn a_marker_on_a_common_prefix_skips_its_keys() {
        let q = Query {
            delimiter: Some("/"),
            after: Some("photos/"),
            max_keys: 1000,
            ..Default::default()
        };
        assert_eq!(keys(&list(TREE, &q)), ["z"]);
        // A marker inside a group: the group's later keys still roll up.
        let q = Query {
            after: Some("b/c"),
            ..q
        };
        assert_eq!(
            keys(&list(TREE, &q)),
            ["docs-old/*", "docs/*", "photos/*", "z"]
        );
    }

    #[test]
    fn max_keys_zero_gives_an_empty_truncated_page() {
        let p = list(
            TREE,
            &Query {
                max_keys: 0,
                ..Default::default()
            },
        );
        assert!(p.entries.is_empty());
        assert!(p.truncated);
        let empty = list(
            &[],
            &Query {
                max_keys: 0,
                ..Default::default()
            },
        );
        assert!(!empty.truncated);
    }

    #[test]
    fn tokens_round_trip_and_strangers_are_refused() {
        for k in ["", "a", "photos/2024/", "ünï/cødé"] {
            assert_eq!(after_token(&token_after(k)).as_deref(), Some(k));
        }
        assert_eq!(after_token("not a token"), None);
        assert_eq!(after_token("aGVsbG8"), None);
    }

    /// 10 000 keys: `d0`..`d9` / `s0`..`s9` / `f00`..`f99`.
    fn ten_thousand() -> Vec<String> {
        let mut keys = Vec::new();
        for d in 0..10 {
            for s in 0..10 {
                for f in 0..100 {
                    keys.push(format!("d{d}/s{s}/f{f:02}"));
                }
            }
        }
        // Given in an order unlike the sorted one, as the satellite's
        // encrypted order is.
        keys.reverse();
        keys.rotate_left(3333);
        keys
    }

    /// Every page of a listing, as (entries, truncated).
    fn all_pages(q: &Query<'_>) -> Vec<(Vec<String>, bool)> {
        let mut pages = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let p = page(
                ten_thousand(),
                |s| s,
                &Query {
                    after: after.as_deref(),
                    ..q.clone()
                },
            );
            pages.push((keys(&p), p.truncated));
            if !p.truncated {
                return pages;
            }
            after = p.last.clone();
        }
    }

    #[test]
    fn ten_thousand_keys_page_as_s3_specifies() {
        // No delimiter, 1000 a page: ten full pages in byte order.
        let pages = all_pages(&Query {
            max_keys: 1000,
            ..Default::default()
        });
        assert_eq!(pages.len(), 10);
        for (i, (entries, truncated)) in pages.iter().enumerate() {
            assert_eq!(entries.len(), 1000);
            assert_eq!(entries[0], format!("d{i}/s0/f00"));
            assert_eq!(entries[999], format!("d{i}/s9/f99"));
            assert_eq!(*truncated, i < 9);
        }
        // The default (and most) a page holds is 1000, whatever is asked.
        let p = page(
            ten_thousand(),
            |s| s,
            &Query {
                max_keys: 5000,
                ..Default::default()
            },
        );
        assert_eq!(p.entries.len(), 1000);
        // "/" at the top: the ten first-level prefixes, one page.
        let pages = all_pages(&Query {
            delimiter: Some("/"),
            max_keys: 1000,
            ..Default::default()
        });
        let tops: Vec<String> = (0..10).map(|d| format!("d{d}/*")).collect();
        assert_eq!(pages, vec![(tops, false)]);
        // "/" under d3/, pages of 4: prefixes s0..s9 in pages 4, 4, 2.
        let pages = all_pages(&Query {
            prefix: "d3/",
            delimiter: Some("/"),
            max_keys: 4,
            ..Default::default()
        });
        let sub =
            |r: std::ops::Range<u32>| -> Vec<String> { r.map(|s| format!("d3/s{s}/*")).collect() };
        assert_eq!(
            pages,
            vec![(sub(0..4), true), (sub(4..8), true), (sub(8..10), false)]
        );
        // One level down, 100 keys in pages of 30: 30, 30, 30, 10.
        let pages = all_pages(&Query {
            prefix: "d3/s4/",
            delimiter: Some("/"),
            max_keys: 30,
            ..Default::default()
        });
        let files = |r: std::ops::Range<u32>| -> Vec<String> {
            r.map(|f| format!("d3/s4/f{f:02}")).collect()
        };
        assert_eq!(
            pages,
            vec![
                (files(0..30), true),
                (files(30..60), true),
                (files(60..90), true),
                (files(90..100), false)
            ]
        );
        // A delimiter that is not "/": "s" groups each d<i>/ at "d<i>/s".
        let pages = all_pages(&Query {
            delimiter: Some("s"),
            max_keys: 3,
            ..Default::default()
        });
        let groups: Vec<Vec<String>> = pages.iter().map(|(e, _)| e.clone()).collect();
        assert_eq!(groups.len(), 4);
        assert_eq!(groups[0], ["d0/s*", "d1/s*", "d2/s*"]);
        assert_eq!(groups[3], ["d9/s*"]);
        // "/f9" groups the last ten files of each directory: under d0/s0/,
        // f00..f89 and then the one prefix "d0/s0/f9".
        let pages = all_pages(&Query {
            prefix: "d0/s0/",
            delimiter: Some("f9"),
            max_keys: 1000,
            ..Default::default()
        });
        let mut want: Vec<String> = (0..90).map(|f| format!("d0/s0/f{f:02}")).collect();
        want.push("d0/s0/f9*".into());
        assert_eq!(pages, vec![(want, false)]);
        // A prefix cut mid-component: "d1/s1" holds s1 only.
        let pages = all_pages(&Query {
            prefix: "d1/s1",
            delimiter: Some("/"),
            max_keys: 1000,
            ..Default::default()
        });
        assert_eq!(pages, vec![(vec!["d1/s1/*".to_string()], false)]);
    }

    #[test]
    fn levels_are_whole_components() {
        assert_eq!(level_of(""), "");
        assert_eq!(level_of("abc"), "");
        assert_eq!(level_of("a/b"), "a/");
        assert_eq!(level_of("a/b/"), "a/b/");
    }
}
