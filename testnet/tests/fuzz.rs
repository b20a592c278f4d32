//! A short fuzzing run of every decoder reachable from the network or the
//! disk (see `loam_testnet::fuzz`): no input may panic or make a decoder
//! allocate more than the limit. `testnet fuzz --seconds N` runs longer.

use loam_testnet::fuzz::{self, Budget, CountingAlloc, Keys};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn no_input_panics_or_over_allocates() {
    let keys = Keys::new();
    let corpus = fuzz::corpus_dir();
    let mut reports = Vec::new();
    for target in fuzz::targets() {
        let runs = match target.name {
            // Training a model file's weights is slower per input.
            "model_file" => 2_000,
            _ => 20_000,
        };
        reports.push(fuzz::run(
            &target,
            &keys,
            Some(&corpus),
            Budget::Executions(runs),
            7,
        ));
    }
    for r in &reports {
        eprintln!(
            "{:<20} {:>8} executions, {} panics, {} over-allocations",
            r.target, r.executions, r.panics, r.over_allocations
        );
    }
    let bad: Vec<_> = reports
        .iter()
        .filter(|r| r.panics + r.over_allocations > 0)
        .map(|r| {
            (
                r.target,
                r.panics,
                r.over_allocations,
                r.first_finding.clone(),
            )
        })
        .collect();
    assert!(bad.is_empty(), "findings: {bad:?}");
}

#[test]
fn the_corpus_in_the_repo_covers_every_target() {
    for t in fuzz::targets() {
        let dir = fuzz::corpus_dir().join(t.name);
        let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert!(files > 0, "no corpus for {} in {}", t.name, dir.display());
    }
}

#[test]
fn the_fuzzer_finds_planted_bugs() {
    let keys = Keys::new();
    let panicky = fuzz::Target {
        name: "planted_panic",
        seeds: |_| vec![b"hello".to_vec()],
        run: |_, input| {
            if input.contains(&0xff) {
                panic!("planted");
            }
        },
    };
    let greedy = fuzz::Target {
        name: "planted_allocation",
        seeds: |_| vec![b"hello".to_vec()],
        run: |_, input| {
            // A length taken on the input's word.
            if input.first() == Some(&0x7f) {
                let v = vec![0u8; 128 << 20];
                std::hint::black_box(v);
            }
        },
    };
    let r = fuzz::run(&panicky, &keys, None, Budget::Executions(5_000), 1);
    assert!(r.panics > 0 && r.first_finding.is_some(), "{r:?}");
    let r = fuzz::run(&greedy, &keys, None, Budget::Executions(5_000), 1);
    assert!(r.over_allocations > 0, "{r:?}");
}
