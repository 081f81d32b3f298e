//! The root disk files a pod keeps (qcow2 overlays on an image): removed with their use of
//! the image's data, which the image store then may drop.

use crate::error::io;
use crate::{Manager, Result, RootDisk};

impl Manager {
    /// Removes a root disk's file and ends its use of the image data.
    pub(crate) fn drop_root_disk(&self, sandbox_id: &str, root: &RootDisk) -> Result<()> {
        match std::fs::remove_file(&root.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("cannot remove {}", root.path.display()))(e));
            }
            _ => {}
        }
        self.release_image_use(sandbox_id, root)
    }

    /// Ends a root disk's use of its image's data.
    pub(crate) fn release_image_use(&self, sandbox_id: &str, root: &RootDisk) -> Result<()> {
        if let Ok(d) = virtlet_image::Digest::from_hex(&root.image_digest) {
            let user = if root.image_user.is_empty() {
                sandbox_id
            } else {
                &root.image_user
            };
            self.images.release(&d, user)?;
        }
        Ok(())
    }
}
