//! The data marketplace from the uplink's side: publishing a dataset as a
//! listing (public facts only) and browsing listings.

use loam_common::pb;
use pb::satellite_request::Request as Req;
use pb::satellite_response::Response as Resp;

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

impl Project {
    /// Publishes the dataset at `bucket/key` as a listing. The column and
    /// class names come from the dataset's (encrypted) description, which
    /// only the owner can read; the record count is the satellite's own.
    pub async fn publish_dataset(
        &self,
        bucket: &str,
        key: &str,
        opts: &ListingOptions,
    ) -> Result<pb::Listing, UplinkError> {
        let (ds, compute) = self.dataset(bucket, key).await?;
        if !compute {
            return Err(UplinkError::Job(format!(
                "loam://{bucket}/{key} is not opted in to compute; run `uplink dataset compute on loam://{bucket}/{key}` first"
            )));
        }
        let schema = &ds.schema;
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
            ..Default::default()
        };
        let req = pb::PublishListingRequest {
            bucket: bucket.to_string(),
            encrypted_key: self.encrypt_path(bucket, key)?.into(),
            listing: Some(listing),
        };
        match self.call(Req::PublishListing(req)).await? {
            Resp::PublishListing(l) => Ok(l),
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
