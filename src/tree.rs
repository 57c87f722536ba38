//! Pure: what every format records of a state tree besides its entries: the mode and owner of
//! the state directory itself, and the paths the walk met but could not keep. Format 1's
//! manifest, format 2's snapshot description, the walk, the mirror and the restore share them.

use serde::{Deserialize, Serialize};

/// The mode and owner of a directory (the state directory itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Permission bits, e.g. 0o700 = 448.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// The mode a restore gives a state directory recorded with this one, in either format: bits
    /// above 0o777 (setuid, setgid, sticky) and the world-write bit are never planted (another
    /// local user could plant files in the app's state). Also says what was dropped, if anything.
    pub fn planted_mode(&self) -> (u32, Option<String>) {
        const PLANTED: u32 = 0o775;
        let extra = self.mode & !PLANTED;
        let dropped = (extra != 0).then(|| format!("mode bits {extra:#o} of the recorded {:#o} dropped", self.mode));
        (self.mode & PLANTED, dropped)
    }
}

/// A path the walk met but could not keep (a socket, a fifo, a device, a non-UTF-8 name), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_directory_is_never_planted_setuid_sticky_or_world_writable() {
        let planted = |mode| Owner { mode, uid: 0, gid: 0 }.planted_mode();
        assert_eq!(planted(0o700), (0o700, None));
        assert_eq!(planted(0o775), (0o775, None));
        let (mode, dropped) = planted(0o6777);
        assert_eq!(mode, 0o775);
        assert!(dropped.is_some_and(|d| d.contains("0o6002")));
        assert_eq!(planted(0o1777).0, 0o775);
    }
}
