//! Liveness: one mark that the daemon is alive and its current step is moving. The data path
//! marks it as it goes (entries walked, chunks packed or downloaded, parts uploaded), calls bounded
//! by their own timeouts (S3 requests, a container's stop) mark it while they wait
//! (`alive_while`), and the systemd watchdog reads it (`since_mark`). It depends on no other
//! module, so any module may mark it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The moment this process started; marks are counted from it.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds after `epoch()` of the last mark.
static LAST_MARK_MS: AtomicU64 = AtomicU64::new(0);

/// Marks progress: the daemon is alive and its current step is moving. Cheap (one atomic
/// store): call it per part, chunk or file.
pub fn mark() {
    let ms = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
    LAST_MARK_MS.fetch_max(ms, Ordering::Relaxed);
}

/// Runs `work`, a call bounded by its own timeouts, marking progress every second while it runs
/// and for at most `bound`: a slow but live request (a part trickling to a slow S3, a container
/// taking its grace period to stop) is not a hang. Past `bound` it marks nothing, so a call that
/// hangs beyond its own limits still stops the pings.
pub async fn alive_while<F: std::future::Future>(bound: Duration, work: F) -> F::Output {
    marking_while(bound, Duration::from_secs(1), mark, work).await
}

/// `alive_while` with the tick and the mark as arguments (for tests).
async fn marking_while<F: std::future::Future>(bound: Duration, tick: Duration, mark: impl Fn(), work: F) -> F::Output {
    let deadline = Instant::now() + bound;
    let mut work = std::pin::pin!(work);
    loop {
        if Instant::now() < deadline {
            mark();
        }
        tokio::select! {
            output = &mut work => return output,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// How long ago progress was last marked.
pub fn since_mark() -> Duration {
    let now = epoch().elapsed();
    now.saturating_sub(Duration::from_millis(LAST_MARK_MS.load(Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bounded_call_marks_progress_only_within_its_bound() {
        use std::sync::atomic::AtomicU32;
        let marks = AtomicU32::new(0);
        let mark = || {
            marks.fetch_add(1, Ordering::Relaxed);
        };
        // A call that outlives its bound: marked at the start and each tick within the bound
        // (at most 5 ticks of 10 ms in 50 ms, fewer if the machine is slow), never after it.
        let output = marking_while(
            Duration::from_millis(50),
            Duration::from_millis(10),
            mark,
            tokio::time::sleep(Duration::from_millis(300)),
        )
        .await;
        assert_eq!(output, ());
        let counted = marks.load(Ordering::Relaxed);
        assert!((1..=6).contains(&counted), "{counted} marks");
    }

    #[test]
    fn a_mark_is_recent() {
        mark();
        assert!(since_mark() < Duration::from_secs(5));
    }
}
