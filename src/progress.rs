//! Progress of long work (snapshot, restore, verify, prune), measured once and shown two ways:
//! a bar on stderr when stderr is a terminal (indicatif), and the daemon's one-line STATUS for
//! `systemctl status`. Off a terminal a command prints nothing but its result.
//!
//! The data path feeds one meter per process (`begin`, then `add_bytes` / `add_items`; the task
//! ends when its guard drops). Feeding it is a few atomic adds, so it is called per chunk.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::systemd::{self, Notifier};

struct Meter {
    task: Mutex<Option<(&'static str, Instant)>>,
    bytes: AtomicU64,
    /// 0: unknown.
    total_bytes: AtomicU64,
    items: AtomicU64,
    /// 0: unknown.
    total_items: AtomicU64,
}

static METER: Meter = Meter {
    task: Mutex::new(None),
    bytes: AtomicU64::new(0),
    total_bytes: AtomicU64::new(0),
    items: AtomicU64::new(0),
    total_items: AtomicU64::new(0),
};

/// Whether `begin` draws a bar (set once by the CLI when stderr is a terminal).
static DRAW: AtomicBool = AtomicBool::new(false);
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Draw bars on stderr from now on, when stderr is a terminal and not the journal.
pub fn draw_on_terminal() {
    let terminal = std::io::stderr().is_terminal() && !systemd::stderr_is_journal();
    DRAW.store(terminal, Ordering::Relaxed);
}

/// How often long work's progress reaches `systemctl status`.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Shows the progress of long work (a snapshot, a restore, the drill) in STATUS, as
/// `snapshot: 120.0 MiB of 400.0 MiB (30%), 12.0 MiB/s, about 24 s left`; work shorter than one
/// period is not shown. The job's own STATUS line replaces it when the work ends.
pub fn spawn_status(notifier: Notifier) {
    if !notifier.enabled() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(STATUS_EVERY).await;
            if let Some(reading) = reading()
                && reading.elapsed >= STATUS_EVERY
            {
                notifier.status(&describe(&reading));
            }
        }
    });
}

/// What the meter reads now.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub task: &'static str,
    pub elapsed: Duration,
    pub bytes: u64,
    pub total_bytes: Option<u64>,
    pub items: u64,
    pub total_items: Option<u64>,
}

/// The running task, if any.
pub fn reading() -> Option<Reading> {
    let (task, started) = (*locked(&METER.task))?;
    let known = |n: u64| (n > 0).then_some(n);
    Some(Reading {
        task,
        elapsed: started.elapsed(),
        bytes: METER.bytes.load(Ordering::Relaxed),
        total_bytes: known(METER.total_bytes.load(Ordering::Relaxed)),
        items: METER.items.load(Ordering::Relaxed),
        total_items: known(METER.total_items.load(Ordering::Relaxed)),
    })
}

/// The work in progress; the task ends (and its bar is cleared) when this drops.
#[must_use = "the task ends when the guard drops"]
pub struct Task(());

impl Drop for Task {
    fn drop(&mut self) {
        *locked(&METER.task) = None;
        if let Some(bar) = locked(&BAR).take() {
            bar.finish_and_clear();
        }
    }
}

/// Starts measuring `task`. `total_bytes` and `total_items` may be estimates (a snapshot uses
/// the previous one's size); unknown totals show a spinner and a rate instead of an ETA.
pub fn begin(task: &'static str, total_bytes: Option<u64>, total_items: Option<u64>) -> Task {
    METER.bytes.store(0, Ordering::Relaxed);
    METER.items.store(0, Ordering::Relaxed);
    METER.total_bytes.store(total_bytes.unwrap_or(0), Ordering::Relaxed);
    METER.total_items.store(total_items.unwrap_or(0), Ordering::Relaxed);
    *locked(&METER.task) = Some((task, Instant::now()));
    if DRAW.load(Ordering::Relaxed) {
        let bar = new_bar(task, total_bytes, total_items);
        if let Some(old) = locked(&BAR).replace(bar) {
            old.finish_and_clear();
        }
    }
    Task(())
}

fn new_bar(task: &'static str, total_bytes: Option<u64>, total_items: Option<u64>) -> ProgressBar {
    let (length, template) = match (total_bytes, total_items) {
        (Some(bytes), _) => (
            Some(bytes),
            "{prefix:>9} [{bar:28}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        ),
        (None, Some(items)) => (Some(items), "{prefix:>9} [{bar:28}] {pos}/{len} ETA {eta} {msg}"),
        (None, None) => (
            None,
            "{prefix:>9} {spinner} {binary_bytes} {binary_bytes_per_sec} {msg}",
        ),
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = match length {
        Some(length) => ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    bar.set_style(style);
    bar.set_prefix(task);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// `n` more bytes of the task's work are done.
pub fn add_bytes(n: u64) {
    let bytes = METER.bytes.fetch_add(n, Ordering::Relaxed) + n;
    if DRAW.load(Ordering::Relaxed)
        && (METER.total_bytes.load(Ordering::Relaxed) > 0 || METER.total_items.load(Ordering::Relaxed) == 0)
    {
        with_bar(|bar| {
            // An estimate that was too small grows with the work instead of passing 100 %.
            if bar.length().is_some_and(|length| bytes > length) {
                bar.set_length(bytes);
            }
            bar.set_position(bytes);
        });
    }
}

/// `n` more items (files, snapshots) of the task's work are done.
pub fn add_items(n: u64) {
    let items = METER.items.fetch_add(n, Ordering::Relaxed) + n;
    if !DRAW.load(Ordering::Relaxed) {
        return;
    }
    if METER.total_bytes.load(Ordering::Relaxed) == 0 && METER.total_items.load(Ordering::Relaxed) > 0 {
        with_bar(|bar| bar.set_position(items));
    } else {
        with_bar(|bar| bar.set_message(format!("{items} files")));
    }
}

fn with_bar(f: impl FnOnce(&ProgressBar)) {
    if let Some(bar) = locked(&BAR).as_ref() {
        f(bar);
    }
}

/// A one-line account of `reading` for systemd's STATUS: `snapshot: 120.0 MiB of 400.0 MiB
/// (30%), 12.0 MiB/s, about 23 s left`. A byte total that the work has outgrown (an estimate)
/// is left out, and so is the time left.
pub fn describe(reading: &Reading) -> String {
    let seconds = reading.elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        reading.bytes as f64 / seconds
    } else {
        0.0
    };
    let mut text = format!("{}: {}", reading.task, human_bytes(reading.bytes));
    // An estimate that was too small (a snapshot guesses from the previous one) is dropped.
    let total_bytes = reading.total_bytes.filter(|total| *total >= reading.bytes);
    if let Some(total) = total_bytes {
        let percent = reading.bytes.saturating_mul(100) / total;
        text.push_str(&format!(" of {} ({percent}%)", human_bytes(total)));
    }
    let unit = if reading.task == "prune" { "snapshots" } else { "files" };
    if let Some(total) = reading.total_items {
        text.push_str(&format!(", {} of {total} {unit}", reading.items));
    } else if reading.items > 0 {
        text.push_str(&format!(", {} {unit}", reading.items));
    }
    if rate >= 1.0 {
        text.push_str(&format!(", {}/s", human_bytes(rate as u64)));
        if let Some(total) = total_bytes
            && total > reading.bytes
        {
            let left = (total - reading.bytes) as f64 / rate;
            text.push_str(&format!(", about {} s left", left.ceil() as u64));
        }
    }
    text
}

/// `1.2 MiB`-style sizes for people.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The log writer: stderr, with any bar hidden while a line is written so they never mix.
pub fn stderr_writer() -> StderrBelowBar {
    StderrBelowBar
}

pub struct StderrBelowBar;

impl Write for StderrBelowBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = locked(&BAR).clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)).map(|()| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(bytes: u64, total: Option<u64>, items: u64, total_items: Option<u64>, secs: u64) -> Reading {
        Reading {
            task: "restore",
            elapsed: Duration::from_secs(secs),
            bytes,
            total_bytes: total,
            items,
            total_items,
        }
    }

    #[test]
    fn the_status_line_says_how_far_how_fast_and_how_long() {
        const MIB: u64 = 1024 * 1024;
        let cases = [
            (sample(0, None, 0, None, 0), "restore: 0 B"),
            (
                sample(120 * MIB, Some(400 * MIB), 0, None, 10),
                "restore: 120.0 MiB of 400.0 MiB (30%), 12.0 MiB/s, about 24 s left",
            ),
            // An estimate that was too small is left out, with the time left.
            (
                sample(500 * MIB, Some(400 * MIB), 0, None, 10),
                "restore: 500.0 MiB, 50.0 MiB/s",
            ),
            (sample(0, None, 3, Some(7), 2), "restore: 0 B, 3 of 7 files"),
            (
                sample(2 * MIB, None, 12, None, 1),
                "restore: 2.0 MiB, 12 files, 2.0 MiB/s",
            ),
        ];
        for (reading, expected) in cases {
            assert_eq!(describe(&reading), expected, "{reading:?}");
        }
    }

    #[test]
    fn human_bytes_picks_a_readable_unit() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(268_057_104), "255.6 MiB");
    }

    #[test]
    fn a_task_is_read_while_it_runs_and_gone_after() {
        let task = begin("verify", Some(100), None);
        add_bytes(40);
        add_items(2);
        let now = super::reading().expect("a task runs");
        // Other tests in this process may feed the same meter: at least what this one added.
        assert_eq!((now.task, now.total_bytes), ("verify", Some(100)));
        assert!(now.bytes >= 40 && now.items >= 2, "{now:?}");
        drop(task);
        assert_eq!(super::reading(), None);
    }
}
