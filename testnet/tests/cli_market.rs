//! The marketplace through the real binaries: an owner publishes a dataset,
//! another project trains on it with `uplink train market:ID`, is charged,
//! cannot read the data; the owner sees its earnings and verified ledger;
//! a model listing is bought with `uplink model eval market:ID`.
//!
//! Needs the binaries built (`cargo build --release --workspace --bins`,
//! which `scripts/test` does first).

mod support;

use std::path::Path;

use support::{fails, four_nodes, json_lines, ok, run, uplink};

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_is_trained_on_paid_for_and_a_model_bought_from_the_cli() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let net = four_nodes(tmp.path()).await?;
    let owner = net.dir.join("access");
    let (train, test) = loam_testnet::digits_split();
    let train_csv = tmp.path().join("train.csv");
    let test_csv = tmp.path().join("test.csv");
    std::fs::write(&train_csv, train)?;
    std::fs::write(&test_csv, test)?;

    ok(uplink(&owner, &["mb", "loam://clinic"]));
    ok(uplink(
        &owner,
        &[
            "dataset",
            "put",
            path(&train_csv),
            "loam://clinic/digits",
            "--label",
            "label",
            "--segment-size",
            "65536",
        ],
    ));
    ok(uplink(&owner, &["payout-address", "set", "0xclinic"]));
    let listing: serde_json::Value = serde_json::from_str(&ok(uplink(
        &owner,
        &[
            "dataset",
            "publish",
            "loam://clinic/digits",
            "--title",
            "Digits, clinic A",
            "--price",
            "1000",
            "--allow-model",
            "mlp",
            "--max-rounds",
            "10",
            "-o",
            "json",
        ],
    )))?;
    let id = listing["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("market:"), "{listing}");
    assert_eq!(listing["records"], 1437);

    // Another project, made by the operator.
    let sat_dir = net.dir.join("satellite");
    let grant = ok(run(
        "satellite",
        &[
            "api-key",
            "create",
            "--dir",
            path(&sat_dir),
            "--project",
            "lab",
            "--passphrase",
            "lab passphrase",
        ],
    ));
    let lab = tmp.path().join("lab-access");
    std::fs::write(&lab, grant.trim())?;
    ok(uplink(&lab, &["mb", "loam://lab"]));
    let shown = ok(uplink(&lab, &["market", "show", &id]));
    assert!(shown.contains("Digits, clinic A"), "{shown}");

    // A term broken: one line, naming the listing.
    let e = fails(uplink(
        &lab,
        &["train", &id, "--rounds", "11", "--out", "loam://lab/m"],
    ));
    assert!(e.contains("at most 10 rounds") && e.contains(&id), "{e}");
    let trained = ok(uplink(
        &lab,
        &[
            "train",
            &id,
            "--model",
            "mlp",
            "--rounds",
            "6",
            // Every record trained on, so that the fees are records × epochs.
            "--validation",
            "0",
            "--verify",
            "0",
            "--out",
            "loam://lab/models/m",
            "--wait",
        ],
    ));
    assert!(
        trained.contains("Model stored at loam://lab/models/m"),
        "{trained}"
    );
    let eval: serde_json::Value = serde_json::from_str(&ok(uplink(
        &lab,
        &[
            "model",
            "eval",
            "loam://lab/models/m",
            "--data",
            path(&test_csv),
            "-o",
            "json",
        ],
    )))?;
    assert!(
        eval["accuracy"].as_f64().expect("accuracy") > 0.85,
        "{eval}"
    );
    // The consumer cannot read the owner's dataset.
    let back = tmp.path().join("stolen");
    fails(uplink(&lab, &["cp", "loam://clinic/digits", path(&back)]));
    assert!(!back.exists());

    // Charges and earnings agree: 1437 records × 2 epochs × 6 rounds at
    // 1 000 per 1 000 sample-epochs.
    let charges: serde_json::Value =
        serde_json::from_str(&ok(uplink(&lab, &["charges", "-o", "json"])))?;
    assert_eq!(charges["data_fees"], 1437 * 2 * 6, "{charges}");
    let usage: serde_json::Value = serde_json::from_str(&ok(uplink(
        &owner,
        &["dataset", "usage", &id, "-o", "json"],
    )))?;
    assert_eq!(usage["earned"], charges["data_fees"], "{usage}");
    assert_eq!(usage["sample_epochs"], 1437 * 2 * 6);
    assert_eq!(usage["jobs"], 1);
    let ledger = tmp.path().join("ledger.txt");
    let earnings: serde_json::Value = serde_json::from_str(&ok(uplink(
        &owner,
        &["earnings", "-o", "json", "--save", path(&ledger)],
    )))?;
    assert_eq!(earnings["unpaid"], charges["data_fees"], "{earnings}");
    assert_eq!(earnings["payout_address"], "0xclinic");
    assert_eq!(earnings["ledger_verified"], true);
    assert!(ledger.exists());

    // The consumer sells its model; the owner buys one download.
    let model: serde_json::Value = serde_json::from_str(&ok(uplink(
        &lab,
        &[
            "model",
            "publish",
            "loam://lab/models/m",
            "--title",
            "Digits MLP",
            "--price",
            "5",
            "-o",
            "json",
        ],
    )))?;
    let model_id = model["id"].as_str().expect("id").to_string();
    let out = uplink(
        &owner,
        &[
            "model",
            "eval",
            &model_id,
            "--data",
            path(&test_csv),
            "-o",
            "json",
        ],
    );
    let note = String::from_utf8_lossy(&out.stderr).into_owned();
    let bought: serde_json::Value = serde_json::from_str(&ok(out))?;
    assert!(note.contains("for 5 base units"), "{note}");
    assert_eq!(bought["accuracy"], eval["accuracy"]);
    let sold: serde_json::Value = serde_json::from_str(&ok(uplink(
        &lab,
        &["dataset", "usage", &model_id, "-o", "json"],
    )))?;
    assert_eq!(
        (sold["earned"].clone(), sold["downloads"].clone()),
        (5.into(), 1.into())
    );
    let listed = json_lines(&ok(uplink(&owner, &["market", "ls", "-o", "json"])))?;
    assert_eq!(listed.len(), 2);
    Ok(())
}
