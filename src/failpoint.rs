//! Crash points for tests: in a debug build, `SPOTKEEPER_FAILPOINT=NAME:N` makes the Nth call of
//! `hit(NAME)` kill the process with SIGKILL, as a power cut would, so a test can stop a
//! multi-step operation between any two steps. Release builds compile `hit` to nothing.

/// Reached between two durable steps of an operation named `name`.
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    {
        use std::sync::atomic::{AtomicU32, Ordering};
        static REACHED: AtomicU32 = AtomicU32::new(0);
        let Ok(wanted) = std::env::var("SPOTKEEPER_FAILPOINT") else {
            return;
        };
        let Some((wanted_name, nth)) = wanted.split_once(':') else {
            return;
        };
        if wanted_name != name {
            return;
        }
        let reached = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
        if nth.parse::<u32>().ok() == Some(reached) {
            eprintln!("spotkeeper: failpoint {name}:{reached} reached; killing this process");
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
