//! The bounded buffer of spotkeeper's own log lines waiting for CloudWatch Logs, and how a
//! PutLogEvents batch is cut from it. Pure: no clock (time is passed in), no I/O.
//!
//! Pushing never blocks and never fails: when the buffer is full the OLDEST line is dropped (the
//! recent ones say what is happening now) and counted. A batch that could not be sent is put
//! back at the front, still within the bound.

use std::collections::VecDeque;

/// PutLogEvents: at most this many events per call.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// PutLogEvents: at most this many bytes per call, counting `EVENT_OVERHEAD` per event.
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// What CloudWatch Logs counts for each event on top of its message's UTF-8 bytes.
pub const EVENT_OVERHEAD: usize = 26;
/// One event's message at most (256 KiB with its overhead); longer ones are truncated.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 - EVENT_OVERHEAD;
/// The events of one batch span less than this (24 hours), in milliseconds.
pub const MAX_BATCH_SPAN_MS: i64 = 24 * 3600 * 1000;
/// CloudWatch Logs refuses events older than 14 days: they are dropped (counted) instead.
pub const MAX_AGE_MS: i64 = 14 * 24 * 3600 * 1000;
/// ... and events more than 2 hours ahead: their time is brought back to `now`.
pub const MAX_AHEAD_MS: i64 = 2 * 3600 * 1000;

/// One log line and when it was written (milliseconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    pub timestamp_ms: i64,
    pub message: String,
}

impl LogEvent {
    /// What the event counts for in a batch's size.
    pub fn size(&self) -> usize {
        self.message.len() + EVENT_OVERHEAD
    }
}

/// The bounded buffer; `capacity` is `[logs] buffer_events`.
#[derive(Debug)]
pub struct LogBuffer {
    events: VecDeque<LogEvent>,
    capacity: usize,
    dropped: u64,
}

impl LogBuffer {
    /// An empty buffer holding at most `capacity` events (at least 1).
    pub fn new(capacity: usize) -> LogBuffer {
        LogBuffer {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Events dropped so far: pushed out by newer ones, refused as too old, or given up on.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Counts events lost elsewhere (a batch CloudWatch Logs refused for good).
    pub fn count_dropped(&mut self, events: u64) {
        self.dropped += events;
    }

    /// Forgets every buffered line without counting it (shipping turned out to be off).
    pub fn clear(&mut self) {
        self.events.clear();
    }

    /// A new bound (the configured one, once the config is read); the oldest events beyond it
    /// are dropped.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        self.trim();
    }

    /// Adds one line; never blocks. A message longer than `MAX_MESSAGE_BYTES` is truncated (at a
    /// character boundary); when full, the oldest line goes.
    pub fn push(&mut self, timestamp_ms: i64, mut message: String) {
        truncate(&mut message, MAX_MESSAGE_BYTES);
        self.events.push_back(LogEvent { timestamp_ms, message });
        self.trim();
    }

    /// Cuts the next batch within PutLogEvents' limits, oldest first: at most `MAX_BATCH_EVENTS`
    /// events and `MAX_BATCH_BYTES`, spanning less than 24 h, in time order. Events older than
    /// 14 days at `now_ms` are dropped (counted); events more than 2 h ahead are stamped `now_ms`.
    /// Empty when nothing is buffered.
    pub fn take_batch(&mut self, now_ms: i64) -> Vec<LogEvent> {
        let mut batch: Vec<LogEvent> = Vec::new();
        let mut bytes = 0;
        let (mut earliest, mut latest) = (i64::MAX, i64::MIN);
        while let Some(next) = self.events.front() {
            let timestamp = if next.timestamp_ms > now_ms + MAX_AHEAD_MS {
                now_ms
            } else {
                next.timestamp_ms
            };
            if timestamp < now_ms - MAX_AGE_MS {
                self.events.pop_front();
                self.dropped += 1;
                continue;
            }
            let span = latest.max(timestamp) - earliest.min(timestamp);
            if batch.len() == MAX_BATCH_EVENTS
                || bytes + next.size() > MAX_BATCH_BYTES
                || (!batch.is_empty() && span >= MAX_BATCH_SPAN_MS)
            {
                break;
            }
            let Some(mut event) = self.events.pop_front() else {
                break;
            };
            event.timestamp_ms = timestamp;
            bytes += event.size();
            earliest = earliest.min(timestamp);
            latest = latest.max(timestamp);
            batch.push(event);
        }
        // Lines from several threads can arrive a millisecond out of order; a batch must not.
        batch.sort_by_key(|e| e.timestamp_ms);
        batch
    }

    /// Puts a batch that could not be sent back at the front, in its order; what no longer fits
    /// within the bound is dropped, oldest first, and counted.
    pub fn put_back(&mut self, batch: Vec<LogEvent>) {
        for event in batch.into_iter().rev() {
            self.events.push_front(event);
        }
        self.trim();
    }

    fn trim(&mut self) {
        while self.events.len() > self.capacity {
            self.events.pop_front();
            self.dropped += 1;
        }
    }
}

/// Shortens `text` to at most `max` bytes, at a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn buffer_of(capacity: usize, lines: &[(i64, &str)]) -> LogBuffer {
        let mut buffer = LogBuffer::new(capacity);
        for (at, text) in lines {
            buffer.push(*at, text.to_string());
        }
        buffer
    }

    /// Lines as (timestamp, message).
    type Lines<'a> = &'a [(i64, &'a str)];
    /// Messages, in order.
    type Texts<'a> = &'a [&'a str];

    fn messages(batch: &[LogEvent]) -> Vec<&str> {
        batch.iter().map(|e| e.message.as_str()).collect()
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_it() {
        // (capacity, lines pushed, what stays, dropped)
        let table: [(usize, &[&str], &[&str], u64); 5] = [
            (3, &["a", "b"], &["a", "b"], 0),
            (3, &["a", "b", "c"], &["a", "b", "c"], 0),
            (3, &["a", "b", "c", "d"], &["b", "c", "d"], 1),
            (2, &["a", "b", "c", "d", "e"], &["d", "e"], 3),
            (1, &["a", "b"], &["b"], 1),
        ];
        for (capacity, pushed, kept, dropped) in table {
            let lines: Vec<(i64, &str)> = pushed.iter().map(|m| (NOW, *m)).collect();
            let mut buffer = buffer_of(capacity, &lines);
            assert_eq!(buffer.dropped(), dropped, "{pushed:?} into {capacity}");
            assert_eq!(messages(&buffer.take_batch(NOW)), kept, "{pushed:?} into {capacity}");
        }
    }

    #[test]
    fn a_capacity_of_zero_still_holds_one_line() {
        let mut buffer = buffer_of(0, &[(NOW, "a"), (NOW, "b")]);
        assert_eq!(messages(&buffer.take_batch(NOW)), ["b"]);
        assert_eq!(buffer.dropped(), 1);
    }

    #[test]
    fn batches_obey_put_log_events_limits() {
        let big = "x".repeat(100_000); // 100,026 bytes counted each
        // (lines, sizes of the batches cut one after another, dropped)
        let many: Vec<(i64, &str)> = (0..10_001).map(|i| (NOW - 10_001 + i, "m")).collect();
        let heavy: Vec<(i64, &str)> = (0..21).map(|i| (NOW + i, big.as_str())).collect();
        let days: Vec<(i64, &str)> = vec![
            (NOW - 3 * MAX_BATCH_SPAN_MS, "three days ago"),
            (
                NOW - 3 * MAX_BATCH_SPAN_MS + MAX_BATCH_SPAN_MS - 1,
                "just within a day of it",
            ),
            (NOW - 3 * MAX_BATCH_SPAN_MS + MAX_BATCH_SPAN_MS, "a day after it"),
            (NOW, "now"),
        ];
        let stale: Vec<(i64, &str)> = vec![
            (NOW - MAX_AGE_MS - 1, "older than 14 days"),
            (NOW - MAX_AGE_MS, "exactly 14 days"),
            (NOW, "now"),
        ];
        let table: [(&str, Lines, &[usize], u64); 5] = [
            ("10,001 events: 10,000 then 1", &many, &[10_000, 1], 0),
            // 10 x 100,026 = 1,000,260 fits; an 11th would pass 1,048,576.
            ("bytes: 10 + 10 + 1", &heavy, &[10, 10, 1], 0),
            ("span under 24 h", &days, &[2, 1, 1], 0),
            ("too old dropped; 14 days apart, two batches", &stale, &[1, 1], 1),
            ("empty", &[], &[], 0),
        ];
        for (name, lines, sizes, dropped) in table {
            let mut buffer = buffer_of(100_000, lines);
            let mut cut = Vec::new();
            for _ in 0..10 {
                let batch = buffer.take_batch(NOW);
                if batch.is_empty() {
                    break;
                }
                let bytes: usize = batch.iter().map(LogEvent::size).sum();
                assert!(batch.len() <= MAX_BATCH_EVENTS && bytes <= MAX_BATCH_BYTES, "{name}");
                let span = batch.last().map_or(0, |l| l.timestamp_ms) - batch[0].timestamp_ms;
                assert!(span < MAX_BATCH_SPAN_MS, "{name}: span {span}");
                cut.push(batch.len());
            }
            assert_eq!(cut, sizes, "{name}");
            assert_eq!(buffer.dropped(), dropped, "{name}");
            assert!(buffer.is_empty(), "{name}");
        }
    }

    #[test]
    fn a_batch_is_in_time_order_and_the_future_is_brought_back_to_now() {
        let mut buffer = buffer_of(
            10,
            &[
                (NOW + 2, "third"),
                (NOW + 1, "second"),
                (NOW + MAX_AHEAD_MS + 1, "far ahead"),
                (NOW, "first"),
            ],
        );
        let batch = buffer.take_batch(NOW);
        assert_eq!(messages(&batch), ["far ahead", "first", "second", "third"]);
        let times: Vec<i64> = batch.iter().map(|e| e.timestamp_ms).collect();
        assert_eq!(times, [NOW, NOW, NOW + 1, NOW + 2]);
    }

    #[test]
    fn a_long_line_is_truncated_to_the_event_limit_at_a_character_boundary() {
        // (message length in bytes, kept bytes)
        let table = [
            ("x".repeat(10), 10),
            ("x".repeat(MAX_MESSAGE_BYTES), MAX_MESSAGE_BYTES),
            ("x".repeat(MAX_MESSAGE_BYTES + 1), MAX_MESSAGE_BYTES),
            // A 3-byte character straddling the limit goes whole.
            (format!("{}€", "x".repeat(MAX_MESSAGE_BYTES - 1)), MAX_MESSAGE_BYTES - 1),
        ];
        for (message, kept) in table {
            let mut buffer = LogBuffer::new(1);
            buffer.push(NOW, message);
            let batch = buffer.take_batch(NOW);
            assert_eq!(batch[0].message.len(), kept);
            assert!(batch[0].size() <= 256 * 1024);
        }
    }

    #[test]
    fn a_batch_put_back_comes_first_again_and_overflow_is_counted() {
        // (capacity, buffered, taken, pushed meanwhile, then the batch put back:
        //  what the next take holds, dropped)
        let table: [(usize, Texts, Texts, Texts, u64); 4] = [
            (10, &["a", "b"], &["c"], &["a", "b", "c"], 0),
            (3, &["a", "b"], &["c"], &["a", "b", "c"], 0),
            // Full again: the oldest of the put-back batch go first.
            (3, &["a", "b"], &["c", "d"], &["b", "c", "d"], 1),
            (2, &["a", "b"], &["c", "d"], &["c", "d"], 2),
        ];
        for (capacity, first, meanwhile, next, dropped) in table {
            let lines: Vec<(i64, &str)> = first.iter().map(|m| (NOW, *m)).collect();
            let mut buffer = buffer_of(capacity, &lines);
            let batch = buffer.take_batch(NOW);
            for m in meanwhile {
                buffer.push(NOW + 1, m.to_string());
            }
            buffer.put_back(batch);
            assert_eq!(messages(&buffer.take_batch(NOW)), next, "{first:?} + {meanwhile:?}");
            assert_eq!(buffer.dropped(), dropped, "{first:?} + {meanwhile:?}");
        }
    }

    #[test]
    fn a_smaller_bound_drops_the_oldest() {
        let mut buffer = buffer_of(5, &[(NOW, "a"), (NOW, "b"), (NOW, "c")]);
        buffer.set_capacity(1);
        assert_eq!(buffer.dropped(), 2);
        assert_eq!(messages(&buffer.take_batch(NOW)), ["c"]);
    }
}
