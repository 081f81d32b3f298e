//! Recognises disk image formats from their first bytes (pure).
//!
//! qcow2 by its header; raw by what a bootable disk or filesystem starts with (an MBR or GPT,
//! an ISO9660 volume descriptor, an ext2/3/4 superblock). Anything else, such as an HTML error
//! page served with status 200, is refused with what it looks like.

use std::fmt;

/// How many leading bytes detection wants (the ISO9660 descriptor sits at 32 KiB).
pub const SNIFF_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatInfo {
    pub format: DiskFormat,
    /// The disk size the guest sees.
    pub virtual_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("content is not a qcow2 or raw disk image (it looks like {looks_like})")]
    NotAnImage { looks_like: &'static str },
    #[error("qcow2 image names a backing file, which could expose host files; flatten it first")]
    BackingFile,
    #[error("qcow2 image uses an external data file, which is not supported")]
    ExternalDataFile,
    #[error("qcow2 image is encrypted, which is not supported")]
    Encrypted,
    #[error("qcow2 header is invalid: {0}")]
    BadQcow2(&'static str),
}

const QCOW2_MAGIC: &[u8] = b"QFI\xfb";

/// Detects the format of an image whose first bytes are `head` and whose length is `total_len`.
pub fn detect(head: &[u8], total_len: u64) -> Result<FormatInfo, FormatError> {
    if head.starts_with(QCOW2_MAGIC) {
        return qcow2(head);
    }
    if looks_raw(head) {
        return Ok(FormatInfo {
            format: DiskFormat::Raw,
            virtual_size: total_len,
        });
    }
    Err(FormatError::NotAnImage {
        looks_like: describe(head),
    })
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn qcow2(head: &[u8]) -> Result<FormatInfo, FormatError> {
    let short = FormatError::BadQcow2("header is truncated");
    let version = be32(head, 4).ok_or(short.clone())?;
    if !(2..=3).contains(&version) {
        return Err(FormatError::BadQcow2("unknown version"));
    }
    if be64(head, 8).ok_or(short.clone())? != 0 {
        return Err(FormatError::BackingFile);
    }
    let virtual_size = be64(head, 24).ok_or(short.clone())?;
    if be32(head, 32).ok_or(short.clone())? != 0 {
        return Err(FormatError::Encrypted);
    }
    if version >= 3 {
        let incompatible = be64(head, 72).ok_or(short)?;
        if incompatible & (1 << 2) != 0 {
            return Err(FormatError::ExternalDataFile);
        }
    }
    Ok(FormatInfo {
        format: DiskFormat::Qcow2,
        virtual_size,
    })
}

fn looks_raw(head: &[u8]) -> bool {
    let mbr = head.get(510..512) == Some(&[0x55, 0xAA]);
    let gpt = head.get(512..520) == Some(b"EFI PART");
    let iso = head.get(0x8001..0x8006) == Some(b"CD001");
    let ext = head.get(1080..1082) == Some(&[0x53, 0xEF]);
    mbr || gpt || iso || ext
}

fn describe(head: &[u8]) -> &'static str {
    let trimmed: &[u8] = {
        let start = head
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(head.len());
        &head[start..]
    };
    let lower: Vec<u8> = trimmed
        .iter()
        .take(64)
        .map(u8::to_ascii_lowercase)
        .collect();
    match head {
        [] => "an empty file",
        [0x1f, 0x8b, ..] => "a gzip archive",
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => "an xz archive",
        [b'B', b'Z', b'h', ..] => "a bzip2 archive",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "a zstd archive",
        [b'K', b'D', b'M', b'V', ..] => "a VMDK image",
        [b'v', b'h', b'd', b'x', b'f', b'i', b'l', b'e', ..] => "a VHDX image",
        [b'c', b'o', b'n', b'e', b'c', b't', b'i', b'x', ..] => "a VHD image",
        _ if head.get(64..68) == Some(&[0x7f, 0x10, 0xda, 0xbe]) => "a VDI image",
        _ if lower.starts_with(b"<!doctype html") || lower.starts_with(b"<html") => "an HTML page",
        _ if lower.starts_with(b"<?xml") || lower.starts_with(b"<") => "an XML or HTML document",
        _ if lower.starts_with(b"{") || lower.starts_with(b"[") => "a JSON document",
        _ if head.iter().take(512).all(|b| b.is_ascii() && *b != 0) => "a text file",
        _ => "data of an unknown format",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn qcow2_header(version: u32, backing: u64, size: u64, crypt: u32, incompat: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(QCOW2_MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[8..16].copy_from_slice(&backing.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[32..36].copy_from_slice(&crypt.to_be_bytes());
        h[72..80].copy_from_slice(&incompat.to_be_bytes());
        h
    }

    #[test]
    fn qcow2_is_recognised_with_its_virtual_size() {
        let info = detect(&qcow2_header(3, 0, 1 << 30, 0, 0), 512).unwrap();
        assert_eq!(
            info,
            FormatInfo {
                format: DiskFormat::Qcow2,
                virtual_size: 1 << 30
            }
        );
        assert_eq!(
            detect(&qcow2_header(2, 0, 5, 0, 0), 512).unwrap().format,
            DiskFormat::Qcow2
        );
    }

    #[test]
    fn dangerous_qcow2_is_refused() {
        assert_eq!(
            detect(&qcow2_header(3, 1024, 1, 0, 0), 512),
            Err(FormatError::BackingFile)
        );
        assert_eq!(
            detect(&qcow2_header(3, 0, 1, 1, 0), 512),
            Err(FormatError::Encrypted)
        );
        assert_eq!(
            detect(&qcow2_header(3, 0, 1, 0, 4), 512),
            Err(FormatError::ExternalDataFile)
        );
        assert!(matches!(
            detect(&qcow2_header(7, 0, 1, 0, 0), 512),
            Err(FormatError::BadQcow2(_))
        ));
        assert!(matches!(
            detect(QCOW2_MAGIC, 4),
            Err(FormatError::BadQcow2(_))
        ));
    }

    #[test]
    fn raw_disks_are_recognised() {
        let mut mbr = vec![0u8; 1024];
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert_eq!(
            detect(&mbr, 10 << 20).unwrap(),
            FormatInfo {
                format: DiskFormat::Raw,
                virtual_size: 10 << 20
            }
        );
        let mut iso = vec![0u8; SNIFF_LEN];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        assert_eq!(detect(&iso, 1 << 20).unwrap().format, DiskFormat::Raw);
        let mut ext = vec![0u8; 2048];
        ext[1080] = 0x53;
        ext[1081] = 0xEF;
        assert_eq!(detect(&ext, 1 << 20).unwrap().format, DiskFormat::Raw);
    }

    #[test]
    fn other_content_is_named() {
        for (content, looks) in [
            (&b"<!DOCTYPE html><html>oops</html>"[..], "an HTML page"),
            (b"  <html><body>404</body></html>", "an HTML page"),
            (b"{\"error\": 1}", "a JSON document"),
            (b"hello world\n", "a text file"),
            (b"\x1f\x8b\x08\x00", "a gzip archive"),
            (b"KDMV\x01\x00", "a VMDK image"),
            (b"", "an empty file"),
            (b"\x00\x01\x02\xff", "data of an unknown format"),
        ] {
            let err = detect(content, content.len() as u64).unwrap_err();
            assert_eq!(err, FormatError::NotAnImage { looks_like: looks });
            assert!(err.to_string().contains(looks));
        }
    }
}
