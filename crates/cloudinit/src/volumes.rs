//! Volume disks in the guest: cloud-init finds each by the serial virtlet gave it (in
//! sysfs: `/sys/block/*/serial` for virtio-blk, page 0x80 of the SCSI VPD for virtio-scsi,
//! so it works without udev), links it where the pod spec says, formats a fresh ephemeral
//! disk on first use, and mounts it (`mounts`, with `nofail`: a disk that is not there does
//! not stop the boot). The links are made at every boot (`bootcmd`).

/// One volume disk as the guest should see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestVolume {
    /// The disk's serial.
    pub serial: String,
    /// A link to the disk (`/dev/data`, a block volume's devicePath).
    pub link: Option<String>,
    /// Where the disk's filesystem is mounted.
    pub mount_path: Option<String>,
    /// Made a filesystem (ext4, ext2 with busybox) while blank: an ephemeral disk.
    pub format: bool,
    pub read_only: bool,
}

/// A host directory shared over virtio-9p, as the guest mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFilesystem {
    pub tag: String,
    pub mount_path: String,
    pub read_only: bool,
}

/// The uid and gid `VirtletChown9pfsMounts` gives 9p mounts in the guest: the cloud images'
/// default user.
pub const CHOWN_TO: &str = "1000:1000";

/// cloud-init `mounts` entries for 9p directories.
pub fn fs_mounts(filesystems: &[GuestFilesystem]) -> Vec<Vec<String>> {
    filesystems
        .iter()
        .map(|f| {
            let ro = if f.read_only { ",ro" } else { "" };
            vec![
                f.tag.clone(),
                f.mount_path.clone(),
                "9p".into(),
                format!("trans=virtio,version=9p2000.L,msize=262144,nofail{ro}"),
            ]
        })
        .collect()
}

/// `runcmd` lines that chown the writable 9p mounts (`VirtletChown9pfsMounts`).
pub fn chown_lines(filesystems: &[GuestFilesystem]) -> Vec<String> {
    filesystems
        .iter()
        .filter(|f| !f.read_only)
        .map(|f| format!("chown -R {CHOWN_TO} {}", quote(&f.mount_path)))
        .collect()
}

/// The shell functions the commands use: `virtlet_disk SERIAL` prints the device,
/// `virtlet_link SERIAL LINK` waits for it (5 s at most) and links it, `virtlet_format DEV`
/// makes a filesystem on a blank disk (its first 64 KiB all zero, as a fresh ephemeral disk
/// is: anything else is left alone, so data survives reboots and no filesystem probe is
/// needed): ext4, or ext2 with busybox's `mke2fs`.
const FUNCTIONS: [&str; 3] = [
    r#"virtlet_disk() { for b in /sys/block/*; do s=$(cat "$b/serial" 2>/dev/null || tail -c +5 "$b/device/vpd_pg80" 2>/dev/null | tr -d '\000 '); [ "$s" = "$1" ] && { echo "/dev/${b##*/}"; return 0; }; done; return 1; }"#,
    r#"virtlet_link() { i=0; until d=$(virtlet_disk "$1"); do i=$((i+1)); [ $i -gt 50 ] && { echo "virtlet: no disk with serial $1" >&2; return 1; }; sleep 0.1; done; mkdir -p "${2%/*}"; ln -sf "$d" "$2"; }"#,
    r#"virtlet_format() { [ -n "$(dd if="$1" bs=4096 count=16 2>/dev/null | tr -d '\000' | head -c 1)" ] && return 0; if command -v mkfs.ext4 >/dev/null 2>&1; then mkfs.ext4 -q -F "$1"; else mke2fs -q "$1"; fi; }"#,
];

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The link a volume is found by in the guest.
fn link(v: &GuestVolume) -> String {
    v.link
        .clone()
        .unwrap_or_else(|| format!("/dev/virtlet/{}", v.serial))
}

/// The `bootcmd` lines that link (and format) the volumes; empty without volumes.
pub fn bootcmd(volumes: &[GuestVolume]) -> Vec<String> {
    if volumes.is_empty() {
        return Vec::new();
    }
    let mut lines: Vec<String> = FUNCTIONS.iter().map(|f| (*f).to_owned()).collect();
    for v in volumes {
        let l = link(v);
        let mut line = format!("virtlet_link {} {}", quote(&v.serial), quote(&l));
        if v.format && !v.read_only {
            line.push_str(&format!(" && virtlet_format {}", quote(&l)));
        }
        lines.push(line);
    }
    lines
}

/// cloud-init `mounts` entries: `[device, path, fstype, options]`.
pub fn mounts(volumes: &[GuestVolume]) -> Vec<Vec<String>> {
    volumes
        .iter()
        .filter_map(|v| {
            let path = v.mount_path.as_ref()?;
            let opts = if v.read_only {
                "ro,nofail"
            } else {
                "defaults,nofail"
            };
            Some(vec![link(v), path.clone(), "auto".into(), opts.into()])
        })
        .collect()
}

/// The same as a shell script, for user-data scripts that ask for Virtlet's mount script.
pub fn script(volumes: &[GuestVolume], filesystems: &[GuestFilesystem]) -> String {
    let mut s = String::new();
    for m in fs_mounts(filesystems) {
        s.push_str(&format!(
            "mkdir -p {path} && mount -t 9p -o {opts} {tag} {path}\n",
            path = quote(&m[1]),
            opts = m[3].replace(",nofail", ""),
            tag = quote(&m[0])
        ));
    }
    for line in bootcmd(volumes) {
        s.push_str(&line);
        s.push('\n');
    }
    for m in mounts(volumes) {
        let ro = if m[3].starts_with("ro") { "-o ro " } else { "" };
        s.push_str(&format!(
            "mkdir -p {path} && mount {ro}{dev} {path}\n",
            path = quote(&m[1]),
            dev = quote(&m[0])
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volumes() -> Vec<GuestVolume> {
        vec![
            GuestVolume {
                serial: "virtlet-vol0".into(),
                link: Some("/dev/data".into()),
                mount_path: None,
                format: false,
                read_only: false,
            },
            GuestVolume {
                serial: "virtlet-vol1".into(),
                link: Some("/dev/virtlet/scratch".into()),
                mount_path: Some("/mnt/it's".into()),
                format: true,
                read_only: false,
            },
        ]
    }

    #[test]
    fn links_formats_and_mounts() {
        let b = bootcmd(&volumes());
        assert_eq!(b.len(), 5);
        assert_eq!(b[3], "virtlet_link 'virtlet-vol0' '/dev/data'");
        assert_eq!(
            b[4],
            "virtlet_link 'virtlet-vol1' '/dev/virtlet/scratch' && virtlet_format '/dev/virtlet/scratch'"
        );
        assert_eq!(
            mounts(&volumes()),
            vec![vec![
                "/dev/virtlet/scratch".to_owned(),
                "/mnt/it's".into(),
                "auto".into(),
                "defaults,nofail".into()
            ]]
        );
        assert!(script(&volumes(), &[]).ends_with(
            "mkdir -p '/mnt/it'\\''s' && mount '/dev/virtlet/scratch' '/mnt/it'\\''s'\n"
        ));
        assert!(bootcmd(&[]).is_empty());
    }
}
