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

    #[test]
    fn levels_are_whole_components() {
        assert_eq!(level_of(""), "");
        assert_eq!(level_of("abc"), "");
        assert_eq!(level_of("a/b"), "a/");
        assert_eq!(level_of("a/b/"), "a/b/");
    }
}
