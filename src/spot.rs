//! Spot notices from the instance metadata service, IMDSv2 only (token PUT with TTL, reuse and
//! renewal, 401 -> new token: all done by `aws_config::imds`). `spot/instance-action` answers
//! 404 until AWS schedules an interruption; `events/recommendations/rebalance` likewise.

use std::time::Duration;

use aws_config::imds::Client;
use aws_config::imds::client::error::ImdsError;
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// The IMDS address on EC2.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
const INSTANCE_ACTION: &str = "/latest/meta-data/spot/instance-action";
const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";
const INSTANCE_ID: &str = "/latest/meta-data/instance-id";

#[derive(Debug, thiserror::Error)]
pub enum SpotError {
    #[error("instance metadata service at {endpoint} is not usable: {message}")]
    Imds { endpoint: String, message: String },
    #[error("unexpected {path} document from the instance metadata service: {message}")]
    Document { path: &'static str, message: String },
}

/// An interruption AWS scheduled: `action` is terminate, stop or hibernate, at `time`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct InstanceAction {
    pub action: String,
    pub time: DateTime<Utc>,
}

/// A rebalance recommendation: the instance is at elevated risk of interruption.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Rebalance {
    #[serde(rename = "noticeTime")]
    pub notice_time: DateTime<Utc>,
}

/// Reads Spot notices from IMDS.
#[derive(Debug, Clone)]
pub struct SpotWatcher {
    client: Client,
    endpoint: String,
}

impl SpotWatcher {
    /// `endpoint` is overridden by `AWS_EC2_METADATA_SERVICE_ENDPOINT` when set.
    pub fn new(endpoint: &str) -> Result<SpotWatcher, SpotError> {
        let endpoint = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| endpoint.to_string());
        let client = Client::builder()
            .endpoint(&endpoint)
            .map_err(|e| SpotError::Imds {
                endpoint: endpoint.clone(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .max_attempts(2)
            .build();
        Ok(SpotWatcher { client, endpoint })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn imds_error(&self, error: &ImdsError) -> SpotError {
        SpotError::Imds {
            endpoint: self.endpoint.clone(),
            message: error.to_string(),
        }
    }

    async fn get_optional(&self, path: &str) -> Result<Option<String>, SpotError> {
        match self.client.get(path).await {
            Ok(body) => Ok(Some(body.as_ref().to_string())),
            Err(ImdsError::ErrorResponse(e)) if e.response().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(self.imds_error(&e)),
        }
    }

    /// The instance id; also the probe for "are we on EC2".
    pub async fn instance_id(&self) -> Result<String, SpotError> {
        self.client
            .get(INSTANCE_ID)
            .await
            .map(|id| id.as_ref().to_string())
            .map_err(|e| self.imds_error(&e))
    }

    /// The scheduled interruption, if any.
    pub async fn instance_action(&self) -> Result<Option<InstanceAction>, SpotError> {
        match self.get_optional(INSTANCE_ACTION).await? {
            Some(body) => parse_instance_action(&body).map(Some),
            None => Ok(None),
        }
    }

    /// The rebalance recommendation, if any.
    pub async fn rebalance(&self) -> Result<Option<Rebalance>, SpotError> {
        match self.get_optional(REBALANCE).await? {
            Some(body) => parse_rebalance(&body).map(Some),
            None => Ok(None),
        }
    }
}

pub fn parse_instance_action(body: &str) -> Result<InstanceAction, SpotError> {
    serde_json::from_str(body).map_err(|e| SpotError::Document {
        path: INSTANCE_ACTION,
        message: format!("{e}: {body:?}"),
    })
}

pub fn parse_rebalance(body: &str) -> Result<Rebalance, SpotError> {
    serde_json::from_str(body).map_err(|e| SpotError::Document {
        path: REBALANCE,
        message: format!("{e}: {body:?}"),
    })
}

/// How long the container may take to stop when an interruption is due at `deadline`: what is
/// left after reserving time for the final snapshot (`upload_estimate`, at least 20 s and at
/// most half the budget), never more than `stop_timeout`, never less than 1 s.
pub fn stop_budget(
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
    stop_timeout: Duration,
    upload_estimate: Duration,
) -> Duration {
    let budget = (deadline - now).to_std().unwrap_or(Duration::ZERO);
    let reserve = upload_estimate.max(Duration::from_secs(20)).min(budget / 2);
    budget
        .saturating_sub(reserve)
        .min(stop_timeout)
        .max(Duration::from_secs(1))
}

/// Whether a Spot notice first takes a snapshot of the running app, frozen, before SIGTERM:
/// it holds everything the app acknowledged before the notice even if the drain or the final
/// snapshot does not finish, and with an open repository it costs about what changed. Taken when
/// the app can be frozen and the snapshot's estimate (`upload_estimate`) still leaves the drain
/// at least half of `stop_timeout` and the final snapshot its reserve.
pub fn snapshot_first(
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
    stop_timeout: Duration,
    upload_estimate: Duration,
    can_freeze: bool,
) -> bool {
    let budget = (deadline - now).to_std().unwrap_or(Duration::ZERO);
    let needed = upload_estimate + stop_timeout / 2 + upload_estimate.max(Duration::from_secs(20));
    can_freeze && budget >= needed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_notices() {
        let action = parse_instance_action(r#"{"action":"terminate","time":"2026-11-23T10:00:00Z"}"#).expect("valid");
        assert_eq!(action.action, "terminate");
        assert_eq!(action.time.to_rfc3339(), "2026-11-23T10:00:00+00:00");
        let rebalance = parse_rebalance(r#"{"noticeTime":"2026-11-23T09:55:00Z"}"#).expect("valid");
        assert_eq!(rebalance.notice_time.to_rfc3339(), "2026-11-23T09:55:00+00:00");
        let err = parse_instance_action("<html>").expect_err("not json");
        assert!(err.to_string().contains("spot/instance-action"), "{err}");
    }

    #[test]
    fn a_notice_takes_a_frozen_snapshot_first_when_it_fits() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let at = |s: i64| now + chrono::TimeDelta::seconds(s);
        let secs = Duration::from_secs;
        // (deadline in s, stop timeout, estimate, can freeze) -> first?
        let rows = [
            ((120, 90, 5, true), true),
            ((120, 90, 30, true), true),
            ((120, 90, 40, true), false),
            ((120, 90, 5, false), false),
            ((90, 90, 5, true), true),
            ((60, 90, 5, true), false),
            ((30, 90, 5, true), false),
            ((-5, 90, 0, true), false),
        ];
        for ((deadline, stop, estimate, freeze), expected) in rows {
            assert_eq!(
                snapshot_first(now, at(deadline), secs(stop), secs(estimate), freeze),
                expected,
                "{deadline} {stop} {estimate} {freeze}"
            );
        }
    }

    #[test]
    fn the_stop_budget_leaves_room_for_the_upload() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let deadline = now + chrono::TimeDelta::seconds(120);
        let sixty = Duration::from_secs(60);
        // Two minutes, a quick upload: the full stop timeout.
        assert_eq!(stop_budget(now, deadline, sixty, Duration::from_secs(5)), sixty);
        // A slow upload takes its share first.
        assert_eq!(stop_budget(now, deadline, sixty, Duration::from_secs(90)), sixty);
        assert_eq!(
            stop_budget(now, deadline, Duration::from_secs(100), Duration::from_secs(50)),
            Duration::from_secs(70)
        );
        // Notice seen late: half of what is left.
        let late = now + chrono::TimeDelta::seconds(30);
        assert_eq!(
            stop_budget(now, late, sixty, Duration::from_secs(5)),
            Duration::from_secs(15)
        );
        // Past the deadline: still a moment to stop cleanly.
        assert_eq!(
            stop_budget(deadline, now, sixty, Duration::ZERO),
            Duration::from_secs(1)
        );
    }
}
