//! The persistent root filesystem: a block volume at `/` holds the VM's root disk, so what
//! the guest writes outlives the pod. Its first sector is Mirantis Virtlet's header (big
//! endian: magic `0x263dbe52ba576702` as u64, version 1 as u16, the image's sha256), the
//! image's raw bytes follow from sector 1, and the VM sees the device from there on. The
//! image is written when the header is missing or names another image; otherwise the
//! device is used as it is. A volume written by Virtlet boots, and the other way round.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use virtlet_core::ErrorKind;

use crate::ManagerError;

/// The header sector; the guest's disk starts after it.
pub const HEADER_SIZE: u64 = 512;
const MAGIC: u64 = 0x263d_be52_ba57_6702;
const VERSION: u16 = 1;

/// The header for an image of sha256 `hash`.
pub fn header(hash: &[u8; 32]) -> [u8; 42] {
    let mut h = [0u8; 42];
    h[..8].copy_from_slice(&MAGIC.to_be_bytes());
    h[8..10].copy_from_slice(&VERSION.to_be_bytes());
    h[10..].copy_from_slice(hash);
    h
}

/// What a device's first bytes say.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderState {
    /// The image of this hash is on it.
    Matches,
    /// No header, or another image's: the image is to be written.
    Stale,
    /// A header of a later version: left alone.
    Unsupported(u16),
}

pub fn check(first: &[u8; 42], hash: &[u8; 32]) -> HeaderState {
    let magic = u64::from_be_bytes(first[..8].try_into().unwrap_or_default());
    let version = u16::from_be_bytes([first[8], first[9]]);
    if magic != MAGIC || &first[10..] != hash {
        HeaderState::Stale
    } else if version != VERSION {
        HeaderState::Unsupported(version)
    } else {
        HeaderState::Matches
    }
}

/// The sha256 of a digest's hex form.
fn hash_of(digest_hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(digest_hex, &mut out).ok()?;
    Some(out)
}

/// Makes `device` hold the image (`image`, of `format`, sha256 `digest_hex`): written unless
/// its header says it is there. Answers whether it was written. Blocking.
pub fn prepare(
    device: &Path,
    image: &Path,
    format: &str,
    digest_hex: &str,
) -> Result<bool, ManagerError> {
    let fail = |what: &str, e: std::io::Error| {
        ManagerError::failed(
            ErrorKind::FailedPrecondition,
            format!(
                "the block volume at / ({}): cannot {what}",
                device.display()
            ),
            e,
        )
    };
    let hash = hash_of(digest_hex).ok_or_else(|| {
        ManagerError::internal(format!("image digest {digest_hex:?} is not a sha256"))
    })?;
    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| fail("open it", e))?;
    let mut first = [0u8; 42];
    dev.read_exact(&mut first)
        .map_err(|e| fail("read its header", e))?;
    match check(&first, &hash) {
        HeaderState::Matches => return Ok(false),
        HeaderState::Unsupported(v) => {
            return Err(ManagerError::precondition(format!(
                "the block volume at / ({}) has a root filesystem header of version {v}, which this virtlet does not know; it is left as it is",
                device.display()
            )));
        }
        HeaderState::Stale => {}
    }
    // The image first, the header last: an interrupted write is written again next time.
    virtlet_vm::disk::write_raw_at(image, format, device, HEADER_SIZE).map_err(|e| {
        ManagerError::failed(
            ErrorKind::Internal,
            format!("cannot write the image onto {}", device.display()),
            e,
        )
    })?;
    dev.seek(SeekFrom::Start(0))
        .and_then(|_| dev.write_all(&header(&hash)))
        .and_then(|()| dev.sync_all())
        .map_err(|e| fail("write its header", e))?;
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn virtlets_header_layout() {
        let hash = [7u8; 32];
        let h = header(&hash);
        assert_eq!(
            h[..10],
            [0x26, 0x3d, 0xbe, 0x52, 0xba, 0x57, 0x67, 0x02, 0, 1]
        );
        assert_eq!(check(&h, &hash), HeaderState::Matches);
        assert_eq!(check(&h, &[8u8; 32]), HeaderState::Stale);
        assert_eq!(check(&[0u8; 42], &hash), HeaderState::Stale);
        let mut later = h;
        later[9] = 2;
        assert_eq!(check(&later, &hash), HeaderState::Unsupported(2));
        assert_eq!(hash_of(&"07".repeat(32)), Some(hash));
        assert_eq!(hash_of("xyz"), None);
    }

    #[test]
    fn the_image_is_written_once_after_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.raw");
        std::fs::write(&image, vec![0xabu8; 4096]).unwrap();
        // A regular file stands in for the device here (qemu-img's host_device driver needs
        // a block device: the e2e tier uses loop devices).
        let dev = dir.path().join("dev");
        std::fs::write(&dev, vec![0u8; 8192]).unwrap();
        let digest = "07".repeat(32);
        let mut first = [0u8; 42];
        first.copy_from_slice(&header(&[7u8; 32]));
        let mut content = std::fs::read(&dev).unwrap();
        content[..42].copy_from_slice(&first);
        std::fs::write(&dev, &content).unwrap();
        // The header says the image is there: nothing is written.
        assert!(!prepare(&dev, &image, "raw", &digest).unwrap());
        let err = prepare(&dir.path().join("missing"), &image, "raw", &digest).unwrap_err();
        assert!(err.to_string().contains("cannot open it"), "{err}");
    }
}
