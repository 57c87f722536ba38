//! Sparse files: where their data is (`SEEK_DATA`/`SEEK_HOLE`), and the map that the archive
//! stores before their data (GNU tar's PAX sparse format 1.0, which GNU tar and bsdtar extract
//! sparse by hand). A file's holes cost nothing to read, store or restore.

use std::fs::File;
use std::io;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

/// At most this many data segments are kept per file; past it, the rest of the file is stored
/// as one segment (holes included), so a pathological file cannot make the map unbounded.
pub const MAX_SEGMENTS: usize = 16 * 1024;
/// Tar block size: the map is padded to it.
const BLOCK: u64 = 512;

/// A run of data: (offset, length) in bytes.
pub type Segment = (u64, u64);

/// The data segments of `file` (of apparent size `size`, `blocks` 512-byte blocks allocated),
/// or `None` when it has no hole worth keeping (or the filesystem cannot say).
pub fn data_segments(file: &File, size: u64, blocks: u64) -> io::Result<Option<Vec<Segment>>> {
    // Cheap first test: a file that has as many blocks as bytes has no hole.
    if size == 0 || blocks.saturating_mul(BLOCK) >= size {
        return Ok(None);
    }
    let mut segments = Vec::new();
    let mut pos = 0;
    while pos < size {
        let data = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(data) => data,
            Err(Errno::NXIO) => break, // only a hole from here to the end
            Err(Errno::INVAL | Errno::NOTSUP) => return Ok(None), // no SEEK_DATA here
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = match rustix::fs::seek(file, SeekFrom::Hole(data)) {
            Ok(hole) => hole.min(size),
            Err(Errno::NXIO) => size,
            Err(e) => return Err(e.into()),
        };
        if segments.len() + 1 == MAX_SEGMENTS {
            segments.push((data, size - data));
            break;
        }
        segments.push((data, hole - data));
        pos = hole;
    }
    let stored: u64 = segments.iter().map(|(_, len)| len).sum();
    if stored == size {
        return Ok(None);
    }
    Ok(Some(segments))
}

/// The map as stored before the data: the count, then offset and length of each segment, one
/// decimal number a line, padded with NULs to a 512-byte block. A file that ends in a hole gets
/// a last, empty segment at its end, as GNU tar writes it.
pub fn encode_map(segments: &[Segment], size: u64) -> Vec<u8> {
    let mut all: Vec<Segment> = segments.to_vec();
    if all.last().is_none_or(|(off, len)| off + len < size) {
        all.push((size, 0));
    }
    let mut text = format!("{}\n", all.len());
    for (offset, len) in &all {
        text.push_str(&format!("{offset}\n{len}\n"));
    }
    let mut bytes = text.into_bytes();
    let padded = (bytes.len() as u64).div_ceil(BLOCK) * BLOCK;
    bytes.resize(usize::try_from(padded).unwrap_or(bytes.len()), 0);
    bytes
}

/// Reads a map written by `encode_map` from the start of a member's data. Returns the
/// segments and how many bytes the map took. Refuses anything malformed, unordered,
/// overlapping, past `size`, or with more than `MAX_SEGMENTS` + 1 entries.
pub fn decode_map(reader: &mut impl io::Read, size: u64) -> Result<(Vec<Segment>, u64), String> {
    let mut consumed = 0u64;
    let mut line = Vec::new();
    let mut next_number = |reader: &mut dyn io::Read| -> Result<u64, String> {
        line.clear();
        loop {
            let mut byte = [0u8];
            reader
                .read_exact(&mut byte)
                .map_err(|e| format!("the sparse map ends early: {e}"))?;
            consumed += 1;
            match byte[0] {
                b'\n' => break,
                b'0'..=b'9' if line.len() < 20 => line.push(byte[0]),
                _ => return Err("the sparse map is not a list of decimal numbers".into()),
            }
        }
        std::str::from_utf8(&line)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| "the sparse map holds a number that is not one".to_string())
    };
    let count = next_number(reader)?;
    if count > MAX_SEGMENTS as u64 + 1 {
        return Err(format!(
            "the sparse map has {count} segments, more than {}",
            MAX_SEGMENTS + 1
        ));
    }
    let mut segments = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut end = 0u64;
    for _ in 0..count {
        let offset = next_number(reader)?;
        let len = next_number(reader)?;
        let stop = offset.checked_add(len).ok_or("a sparse segment overflows")?;
        if offset < end || stop > size {
            return Err("sparse segments overlap, are out of order or pass the file's size".into());
        }
        end = stop;
        segments.push((offset, len));
    }
    let padded = consumed.div_ceil(BLOCK) * BLOCK;
    let mut padding = vec![0u8; usize::try_from(padded - consumed).unwrap_or(0)];
    reader
        .read_exact(&mut padding)
        .map_err(|e| format!("the sparse map ends early: {e}"))?;
    if padding.iter().any(|b| *b != 0) {
        return Err("the sparse map's padding is not zeros".into());
    }
    Ok((segments, padded))
}

/// The PAX records that mark a member as a sparse file of apparent size `size` named `path`.
pub fn pax_records(path: &str, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in [
        ("GNU.sparse.major", "1".to_string()),
        ("GNU.sparse.minor", "0".to_string()),
        ("GNU.sparse.name", path.to_string()),
        ("GNU.sparse.realsize", size.to_string()),
    ] {
        out.extend_from_slice(&pax_record(key, &value));
    }
    out
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // space, '=', newline
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len += 1;
    }
    format!("{len} {key}={value}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_and_bad_ones_are_refused() {
        let segments = vec![(0, 4096), (1 << 30, 8192)];
        let size = 2u64 << 30;
        let map = encode_map(&segments, size);
        assert_eq!(map.len() % 512, 0);
        let (back, used) = decode_map(&mut map.as_slice(), size).expect("decodes");
        assert_eq!(back, vec![(0, 4096), (1 << 30, 8192), (size, 0)]);
        assert_eq!(used, map.len() as u64);
        for bad in ["2\n0\n10\n5\n10\n", "1\n0\n99\n", "x\n", "99999999\n"] {
            let mut padded = bad.as_bytes().to_vec();
            padded.resize(512, 0);
            assert!(decode_map(&mut padded.as_slice(), 50).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for value in [
            "1",
            "a".repeat(5).as_str(),
            "b".repeat(94).as_str(),
            "c".repeat(995).as_str(),
        ] {
            let record = pax_record("GNU.sparse.name", value);
            let text = String::from_utf8(record.clone()).expect("utf8");
            let (len, _) = text.split_once(' ').expect("space");
            assert_eq!(len.parse::<usize>().expect("number"), record.len(), "{text}");
        }
    }

    #[test]
    fn finds_the_data_of_a_sparse_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sparse");
        let file = File::create(&path).expect("create");
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"head", 0).expect("write");
        file.write_all_at(b"middle", 64 << 20).expect("write");
        file.set_len(256 << 20).expect("extend");
        let meta = file.metadata().expect("meta");
        use std::os::unix::fs::MetadataExt;
        let file = File::open(&path).expect("open");
        let segments = data_segments(&file, meta.len(), meta.blocks())
            .expect("seek")
            .expect("sparse");
        let stored: u64 = segments.iter().map(|s| s.1).sum();
        assert!(stored < 1 << 20, "{segments:?}");
        assert_eq!(segments[0].0, 0);
        assert!(
            segments
                .iter()
                .any(|(off, len)| *off <= 64 << 20 && off + len >= (64 << 20) + 6)
        );
    }
}
