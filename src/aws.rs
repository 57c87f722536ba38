//! The AWS SDK configuration every client starts from, loaded once: the standard environment
//! (credentials chain, profile, `AWS_ENDPOINT_URL*`), the configured region, else the
//! environment's, else us-east-1 (custom endpoints rarely care; AWS says so on the first call).

use aws_config::meta::region::RegionProviderChain;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Loads the shared SDK configuration.
pub async fn sdk_config(region: Option<&str>) -> SdkConfig {
    let region = RegionProviderChain::first_try(region.map(|r| Region::new(r.to_string())))
        .or_default_provider()
        .or_else(Region::new("us-east-1"));
    aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .load()
        .await
}
