//! The AWS SDK configuration every client starts from, loaded once: the standard environment
//! (credentials chain, profile, `AWS_ENDPOINT_URL*`) and a region chosen in a fixed order
//! (`region_order`): `[s3] region`, `AWS_REGION`/`AWS_DEFAULT_REGION`, the profile, the
//! instance's own region from IMDS (asked only on EC2), else us-east-1. The choice is logged at
//! debug and shown by `check-config`; off EC2 nothing is printed and nothing waits for IMDS.

use aws_config::meta::region::ProvideRegion;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Where the region in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionSource {
    Config,
    Environment,
    Profile,
    InstanceMetadata,
    Default,
}

impl RegionSource {
    pub fn describe(self) -> &'static str {
        match self {
            RegionSource::Config => "[s3] region",
            RegionSource::Environment => "AWS_REGION or AWS_DEFAULT_REGION",
            RegionSource::Profile => "the AWS profile",
            RegionSource::InstanceMetadata => "this EC2 instance's metadata",
            RegionSource::Default => "the default (none configured)",
        }
    }
}

/// The region used when nothing names one. Custom endpoints rarely care; AWS says so clearly on
/// the first call.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The first region found, in order: configured, environment, profile, instance metadata (when
/// `on_ec2`), default. Pure apart from the lookups it is given.
pub fn region_order(
    configured: Option<String>,
    environment: Option<String>,
    profile: Option<String>,
    instance: Option<String>,
) -> (String, RegionSource) {
    [
        (configured, RegionSource::Config),
        (environment, RegionSource::Environment),
        (profile, RegionSource::Profile),
        (instance, RegionSource::InstanceMetadata),
    ]
    .into_iter()
    .find_map(|(region, source)| region.filter(|r| !r.is_empty()).map(|r| (r, source)))
    .unwrap_or_else(|| (DEFAULT_REGION.to_string(), RegionSource::Default))
}

/// Resolves the region (see the module's doc).
pub async fn resolve_region(configured: Option<&str>) -> (String, RegionSource) {
    let environment = aws_config::environment::region::EnvironmentVariableRegionProvider::new()
        .region()
        .await;
    let profile = if environment.is_none() && configured.is_none() {
        aws_config::profile::ProfileFileRegionProvider::new().region().await
    } else {
        None
    };
    let instance = if configured.is_none() && environment.is_none() && profile.is_none() && on_ec2() {
        aws_config::imds::region::ImdsRegionProvider::builder()
            .build()
            .region()
            .await
    } else {
        None
    };
    let text = |r: Option<Region>| r.map(|r| r.as_ref().to_string());
    let chosen = region_order(
        configured.map(str::to_string),
        text(environment),
        text(profile),
        text(instance),
    );
    tracing::debug!(region = %chosen.0, from = chosen.1.describe(), "AWS region");
    chosen
}

/// Whether this machine looks like an EC2 instance (its DMI or hypervisor says so), and IMDS is
/// not switched off (`AWS_EC2_METADATA_DISABLED`). Off EC2, IMDS is never asked.
pub fn on_ec2() -> bool {
    if std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    read("/sys/devices/virtual/dmi/id/sys_vendor").trim() == "Amazon EC2"
        || read("/sys/devices/virtual/dmi/id/board_asset_tag").starts_with("i-")
        || read("/sys/hypervisor/uuid").starts_with("ec2")
}

/// Loads the shared SDK configuration, in the region `resolve_region` chose.
pub async fn sdk_config(region: Option<&str>) -> SdkConfig {
    let (region, _) = resolve_region(region).await;
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region))
        .load()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_comes_from_the_first_place_that_names_one() {
        let s = |v: &str| Some(v.to_string());
        let cases = [
            (
                (s("eu-west-1"), s("us-west-2"), s("ap-south-1"), s("sa-east-1")),
                ("eu-west-1", RegionSource::Config),
            ),
            (
                (None, s("us-west-2"), s("ap-south-1"), None),
                ("us-west-2", RegionSource::Environment),
            ),
            (
                (None, s(""), s("ap-south-1"), None),
                ("ap-south-1", RegionSource::Profile),
            ),
            (
                (None, None, None, s("sa-east-1")),
                ("sa-east-1", RegionSource::InstanceMetadata),
            ),
            ((None, None, None, None), (DEFAULT_REGION, RegionSource::Default)),
        ];
        for ((configured, environment, profile, instance), (region, source)) in cases {
            let chosen = region_order(configured, environment, profile, instance);
            assert_eq!((chosen.0.as_str(), chosen.1), (region, source));
        }
    }
}
