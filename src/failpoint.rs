//! Crash and pause points for tests: in a debug build, `SPOTKEEPER_FAILPOINT=NAME:N` makes the
//! Nth call of `hit(NAME)` kill the process with SIGKILL, as a power cut would, so a test can
//! stop a multi-step operation between any two steps; `SPOTKEEPER_FAILPOINT=NAME:N:pause:FILE`
//! instead creates FILE at the Nth call and waits (at most `PAUSE_LIMIT`) until the test removes
//! it, so a test can run something else exactly there. Release builds compile `hit` to nothing.

/// The longest a pause point waits for its file to be removed.
pub const PAUSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Reached between two durable steps of an operation named `name`.
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    {
        use std::sync::atomic::{AtomicU32, Ordering};
        static REACHED: AtomicU32 = AtomicU32::new(0);
        let Ok(wanted) = std::env::var("SPOTKEEPER_FAILPOINT") else {
            return;
        };
        let mut parts = wanted.splitn(4, ':');
        let (Some(wanted_name), Some(nth)) = (parts.next(), parts.next()) else {
            return;
        };
        if wanted_name != name {
            return;
        }
        let reached = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
        if nth.parse::<u32>().ok() != Some(reached) {
            return;
        }
        if let (Some("pause"), Some(file)) = (parts.next(), parts.next()) {
            pause(name, reached, std::path::Path::new(file));
            return;
        }
        eprintln!("spotkeeper: failpoint {name}:{reached} reached; killing this process");
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

#[cfg(debug_assertions)]
fn pause(name: &str, reached: u32, file: &std::path::Path) {
    eprintln!(
        "spotkeeper: failpoint {name}:{reached} reached; paused until {} is removed",
        file.display()
    );
    if let Err(e) = std::fs::write(file, b"paused\n") {
        eprintln!("spotkeeper: failpoint {name}: cannot create {}: {e}", file.display());
        return;
    }
    let started = std::time::Instant::now();
    while file.exists() && started.elapsed() < PAUSE_LIMIT {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    eprintln!("spotkeeper: failpoint {name}:{reached} released");
}
