//! The data marketplace from the uplink's side: publishing a dataset as a
//! listing (public facts only) and browsing listings.

use loam_common::pb;
use loam_compute::dataset::Schema;
use pb::satellite_request::Request as Req;
use pb::satellite_response::Response as Resp;

use crate::dataset::KeyBinding;
use crate::{Project, UplinkError};

/// What the owner says about a listing and allows jobs on it to do.
#[derive(Debug, Clone, Default)]
pub struct ListingOptions {
    pub title: String,
    pub description: String,
    pub license: String,
    pub tags: Vec<String>,
    /// Per 1 000 sample-epochs, in the ledger's smallest unit.
    pub price_per_1000: u64,
    /// Leave the column names out of the listing.
    pub hide_columns: bool,
    pub terms: pb::ListingTerms,
}

/// A listing id from `market:ID` or `ID` (16 hex digits).
pub fn parse_listing_id(s: &str) -> Result<Vec<u8>, UplinkError> {
    let id = s.trim().strip_prefix("market:").unwrap_or(s.trim());
    match hex::decode(id) {
        Ok(bytes) if bytes.len() == 8 => Ok(bytes),
        _ => Err(UplinkError::Job(format!(
            "{s:?} is not a listing id (market:ID with 16 hex digits, from `uplink market ls`)"
        ))),
    }
}

/// BLAKE3 of the feature column names and the label: listings with equal
/// digests have the same columns, even when their names are hidden.
pub fn columns_digest(schema: &Schema) -> Vec<u8> {
    let mut h = blake3::Hasher::new_derive_key("loam 2026 listing columns v1");
    for (i, c) in schema.columns.iter().enumerate() {
        if i != schema.label {
            h.update(&(c.len() as u64).to_le_bytes());
            h.update(c.as_bytes());
        }
    }
    h.update(b"label");
    h.update(schema.label_name().as_bytes());
    h.finalize().as_bytes().to_vec()
}

/// The schema of a model trained across `listings`: their columns (or
/// f1..fn when hidden), label and classes, and each feature's mean and
/// standard deviation pooled over all their records (exact for population
/// figures: the pooled variance is the records-weighted mean of
/// variance + mean², less the pooled mean²).
pub fn pooled_schema(listings: &[pb::Listing]) -> Result<Schema, UplinkError> {
    let first = listings
        .first()
        .ok_or_else(|| UplinkError::Job("name at least one listing (market:ID)".into()))?;
    // Sized by what the listing holds, not by the count it states.
    let features = first.feature_mean.len();
    let mut sum = vec![0f64; features];
    let mut sumsq = vec![0f64; features];
    let mut records = 0u64;
    for l in listings {
        let id = hex::encode(&l.id);
        if l.features as usize != features
            || l.feature_mean.len() != features
            || l.feature_std.len() != features
        {
            return Err(UplinkError::Job(format!(
                "listing market:{id} has {} features, market:{} has {features}; a job across \
                 listings needs the same columns",
                l.features,
                hex::encode(&first.id)
            )));
        }
        if l.classes != first.classes || l.label != first.label {
            return Err(UplinkError::Job(format!(
                "listing market:{id}'s label or classes differ from market:{}'s",
                hex::encode(&first.id)
            )));
        }
        let n = l.records as f64;
        for f in 0..features {
            let (m, sd) = (f64::from(l.feature_mean[f]), f64::from(l.feature_std[f]));
            sum[f] += n * m;
            sumsq[f] += n * (sd * sd + m * m);
        }
        records = records.saturating_add(l.records);
    }
    let n = records.max(1) as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std: Vec<f32> = sum
        .iter()
        .zip(&sumsq)
        .map(|(s, q)| {
            let sd = (q / n - (s / n) * (s / n)).max(0.0).sqrt();
            if sd < 1e-9 { 1.0 } else { sd as f32 }
        })
        .collect();
    let mut columns: Vec<String> = if first.columns.len() == features + 1 {
        first
            .columns
            .iter()
            .filter(|c| **c != first.label)
            .cloned()
            .collect()
    } else {
        (1..=features).map(|i| format!("f{i}")).collect()
    };
    columns.push(first.label.clone());
    let schema = Schema {
        label: features,
        columns,
        classes: first.classes.clone(),
        mean,
        std,
        records,
        task: Default::default(),
        target_mean: 0.0,
        target_std: 1.0,
        image: None,
    };
    schema
        .validate()
        .map_err(|e| UplinkError::Job(format!("the listings describe no usable schema: {e}")))?;
    Ok(schema)
}

impl Project {
    /// Seals a published dataset's row keys under a fresh listing tag
    /// (valid for any job on the listing; listings train on the CPU).
    async fn seal_listing_keys(
        &self,
        bucket: &str,
        key: &str,
        ds: &crate::dataset::DatasetMeta,
        obj_key: &loam_common::encryption::Key,
    ) -> Result<([u8; 16], Vec<u8>, Vec<pb::TaskKeys>), UplinkError> {
        let tag: [u8; 16] = rand::random();
        let (enc, tasks) = self
            .seal_dataset_keys(
                bucket,
                key,
                ds,
                obj_key,
                KeyBinding::Listing(tag),
                true,
                pb::Device::Cpu,
            )
            .await?;
        Ok((tag, enc, tasks))
    }

    /// Publishes the dataset at `bucket/key` as a listing. The column and
    /// class names come from the dataset's (encrypted) description, which
    /// only the owner can read; the record count is the satellite's own.
    pub async fn publish_dataset(
        &self,
        bucket: &str,
        key: &str,
        opts: &ListingOptions,
    ) -> Result<pb::Listing, UplinkError> {
        let (ds, compute, obj_key) = self.dataset_and_key(bucket, key).await?;
        if !compute {
            return Err(UplinkError::Job(format!(
                "loam://{bucket}/{key} is not opted in to compute; run `uplink dataset compute on loam://{bucket}/{key}` first"
            )));
        }
        let schema = &ds.schema;
        if schema.task.is_regression() {
            return Err(UplinkError::Job(format!(
                "loam://{bucket}/{key} has a numeric (regression) label; the market lists classification datasets only"
            )));
        }
        let listing = pb::Listing {
            title: opts.title.clone(),
            description: opts.description.clone(),
            license: opts.license.clone(),
            tags: opts.tags.clone(),
            price_per_1000: opts.price_per_1000,
            features: u32::try_from(schema.features()).unwrap_or(u32::MAX),
            classes: schema.classes.clone(),
            columns: if opts.hide_columns {
                Vec::new()
            } else {
                schema.columns.clone()
            },
            label: schema.label_name().to_string(),
            terms: Some(opts.terms.clone()),
            feature_mean: schema.mean.clone(),
            feature_std: schema.std.clone(),
            columns_digest: columns_digest(schema).into(),
            ..Default::default()
        };
        let (tag, enc, tasks) = self.seal_listing_keys(bucket, key, &ds, &obj_key).await?;
        let req = pb::PublishListingRequest {
            bucket: bucket.to_string(),
            encrypted_key: enc.into(),
            listing: Some(listing),
            tasks,
            key_tag: tag.to_vec().into(),
            ..Default::default()
        };
        match self.call(Req::PublishListing(req)).await? {
            Resp::PublishListing(l) => Ok(l),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// Publishes the model at `bucket/key` for others to evaluate and
    /// predict with, at `price` per download. The model is copied
    /// (server-side, no piece moves) into a folder of its own, and the
    /// listing carries a read-only grant to that folder only, which the
    /// satellite hands to each buyer.
    pub async fn publish_model(
        &self,
        bucket: &str,
        key: &str,
        opts: &ListingOptions,
        price_per_download: u64,
    ) -> Result<pb::Listing, UplinkError> {
        let bytes = self.read_all(bucket, key).await?;
        let model = loam_compute::ModelFile::from_bytes(&bytes).map_err(|e| {
            UplinkError::Job(format!("loam://{bucket}/{key} is not a Loam model: {e}"))
        })?;
        let folder = format!(".market/{}/", hex::encode(rand::random::<[u8; 8]>()));
        let shared = format!("{folder}model");
        self.copy_object(bucket, key, bucket, &shared).await?;
        let grant = self
            .access()
            .restrict(&loam_common::access::Restriction {
                paths: vec![(bucket.to_string(), folder)],
                disallow_writes: true,
                disallow_deletes: true,
                disallow_lists: true,
                ..Default::default()
            })
            .map_err(|e| UplinkError::Job(e.to_string()))?;
        let schema = &model.header.schema;
        let listing = pb::Listing {
            kind: "model".into(),
            title: opts.title.clone(),
            description: opts.description.clone(),
            license: opts.license.clone(),
            tags: opts.tags.clone(),
            price_per_download,
            model: model.header.spec.architecture.to_string(),
            features: u32::try_from(schema.features()).unwrap_or(u32::MAX),
            classes: schema.classes.clone(),
            columns: if opts.hide_columns {
                Vec::new()
            } else {
                schema.columns.clone()
            },
            label: schema.label_name().to_string(),
            feature_mean: schema.mean.clone(),
            feature_std: schema.std.clone(),
            columns_digest: columns_digest(schema).into(),
            records: schema.records,
            terms: Some(pb::ListingTerms {
                expires_unix_ms: opts.terms.expires_unix_ms,
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = pb::PublishListingRequest {
            bucket: bucket.to_string(),
            encrypted_key: self.encrypt_path(bucket, &shared)?.into(),
            listing: Some(listing),
            model_grant: grant.serialize(),
            model_key: shared,
            ..Default::default()
        };
        match self.call(Req::PublishListing(req)).await? {
            Resp::PublishListing(l) => Ok(l),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// Buys one download of a model listing and returns the model's bytes
    /// (read with the listing's read-only grant, not this project's).
    pub async fn fetch_model(&self, id: &[u8]) -> Result<(Vec<u8>, u64), UplinkError> {
        let req = pb::ListingRequest {
            id: id.to_vec().into(),
        };
        let bought = match self.call(Req::FetchModel(req)).await? {
            Resp::FetchModel(r) => r,
            _ => return Err(UplinkError::Unexpected),
        };
        let access = loam_common::access::Access::parse(&bought.grant)
            .map_err(|e| UplinkError::Job(format!("the listing's grant: {e}")))?;
        if access.satellite.id != self.access().satellite.id {
            return Err(UplinkError::Job(
                "the listing's grant names another satellite".into(),
            ));
        }
        let seller = Project::open(access)?;
        let bytes = seller.read_all(&bought.bucket, &bought.key).await;
        seller.close().await;
        Ok((bytes?, bought.charged))
    }

    /// Seals the row keys of the published dataset at `bucket/key` again,
    /// to the nodes a fresh plan names (after nodes left or pieces moved).
    pub async fn reseal_listing(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<pb::Listing, UplinkError> {
        let (ds, _, obj_key) = self.dataset_and_key(bucket, key).await?;
        let (tag, enc, tasks) = self.seal_listing_keys(bucket, key, &ds, &obj_key).await?;
        let req = pb::ResealListingRequest {
            bucket: bucket.to_string(),
            encrypted_key: enc.into(),
            tasks,
            key_tag: tag.to_vec().into(),
        };
        match self.call(Req::ResealListing(req)).await? {
            Resp::ResealListing(l) => Ok(l),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// What one of this project's listings earned.
    pub async fn listing_usage(&self, id: &[u8]) -> Result<pb::ListingUsageResponse, UplinkError> {
        let req = pb::ListingRequest {
            id: id.to_vec().into(),
        };
        match self.call(Req::ListingUsage(req)).await? {
            Resp::ListingUsage(u) => Ok(u),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// This project's earnings as a data owner, with its ledger.
    pub async fn earnings(&self) -> Result<pb::EarningsResponse, UplinkError> {
        match self.call(Req::Earnings(pb::EarningsRequest {})).await? {
            Resp::Earnings(e) => Ok(e),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// Sets where this project's earnings are paid.
    pub async fn set_payout_address(&self, address: &str) -> Result<String, UplinkError> {
        let req = pb::SetPayoutAddressRequest {
            address: address.to_string(),
        };
        match self.call(Req::SetPayoutAddress(req)).await? {
            Resp::SetPayoutAddress(r) => Ok(r.address),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// What this project was charged for its jobs.
    pub async fn charges(&self) -> Result<pb::ChargesResponse, UplinkError> {
        match self.call(Req::Charges(pb::ChargesRequest {})).await? {
            Resp::Charges(c) => Ok(c),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// Takes one of this project's listings off the market.
    pub async fn unpublish(&self, id: &[u8]) -> Result<pb::Listing, UplinkError> {
        let req = pb::ListingRequest {
            id: id.to_vec().into(),
        };
        match self.call(Req::UnpublishListing(req)).await? {
            Resp::UnpublishListing(l) => Ok(l),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// Open listings with `tag` (empty: any) whose text holds every word of
    /// `search`; every listing with `all`.
    pub async fn listings(
        &self,
        tag: &str,
        search: &str,
        all: bool,
    ) -> Result<Vec<pb::Listing>, UplinkError> {
        let req = pb::ListListingsRequest {
            tag: tag.to_string(),
            search: search.to_string(),
            all,
        };
        match self.call(Req::ListListings(req)).await? {
            Resp::ListListings(r) => Ok(r.listings),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// One listing.
    pub async fn listing(&self, id: &[u8]) -> Result<pb::Listing, UplinkError> {
        let req = pb::ListingRequest {
            id: id.to_vec().into(),
        };
        match self.call(Req::GetListing(req)).await? {
            Resp::GetListing(l) => Ok(l),
            _ => Err(UplinkError::Unexpected),
        }
    }
}
