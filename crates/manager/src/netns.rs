//! Network namespaces for pods, as `ip netns` makes them: a bind mount of a namespace file at
//! `<dir>/<name>`, so it outlives the thread that made it (and virtlet restarts).

use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// Creates the namespace at `path` with loopback up.
pub fn create(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let target = path.to_owned();
    // unshare() changes only the calling thread, so a thread of its own does it.
    let made = std::thread::spawn(move || -> std::io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        mount(
            Some(own.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(std::io::Error::from)?;
        // Children inherit this thread's namespaces.
        let st = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()?;
        if !st.success() {
            return Err(std::io::Error::other(
                "`ip link set lo up` failed in the pod netns",
            ));
        }
        Ok(())
    })
    .join()
    .map_err(|_| std::io::Error::other("the netns thread panicked"))?;
    if let Err(e) = made {
        let _ = remove(path);
        return Err(e);
    }
    Ok(())
}

/// Removes the namespace at `path` (absent is fine).
pub fn remove(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
