//! The baselines: the same VM run by `virsh create` or plain QEMU, made from what virtlet
//! defined.

use super::*;

pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn virsh(args: &[&str]) -> Result<String> {
    run(Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args))
}

/// `true` run in the guest with `virsh qemu-agent-command`: guest-exec, then guest-exec-status
/// until the process has exited (the baseline for ExecSync).
pub(crate) fn agent_true(domain: &str) -> Result<()> {
    let started = virsh(&[
        "qemu-agent-command",
        domain,
        r#"{"execute":"guest-exec","arguments":{"path":"true","capture-output":true}}"#,
    ])?;
    let v: serde_json::Value = serde_json::from_str(&started)?;
    let pid = v["return"]["pid"]
        .as_i64()
        .with_context(|| format!("guest-exec answered {started}"))?;
    let status = format!(r#"{{"execute":"guest-exec-status","arguments":{{"pid":{pid}}}}}"#);
    for _ in 0..1000 {
        let s = virsh(&["qemu-agent-command", domain, &status])?;
        let v: serde_json::Value = serde_json::from_str(&s)?;
        if v["return"]["exited"].as_bool() == Some(true) {
            return Ok(());
        }
    }
    anyhow::bail!("true did not exit in the guest")
}

/// A NoCloud seed like virtlet's for a pod of this name (same generator).
pub(crate) fn seed(work: &Path, name: &str) -> Result<PathBuf> {
    let data = virtlet_cloudinit::generate::generate(&virtlet_cloudinit::Input {
        pod_name: name,
        namespace: "bench",
        uuid: "00000000-0000-4000-8000-000000000000",
        ..Default::default()
    })?;
    let path = work.join(format!("{name}-seed.img"));
    virtlet_cloudinit::seed::write_seed(&data, &path)?;
    Ok(path)
}

pub(crate) fn overlay(work: &Path, name: &str, image: &Path) -> Result<PathBuf> {
    let path = work.join(format!("{name}-root.qcow2"));
    let _ = std::fs::remove_file(&path);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(image)
        .arg(&path))?;
    Ok(path)
}

/// Plain QEMU with the devices virtlet gives a VM (virtio-scsi root and seed, serial to a file).
pub(crate) fn plain_qemu(work: &Path, name: &str, image: &Path) -> Result<(Child, PathBuf)> {
    let root = overlay(work, name, image)?;
    let seed = seed(work, name)?;
    let serial = work.join(format!("{name}-serial.log"));
    let _ = std::fs::remove_file(&serial);
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-machine",
            "pc",
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
        ])
        .args([
            "-display",
            "none",
            "-no-reboot",
            "-device",
            "virtio-scsi-pci,id=scsi0",
        ])
        .arg("-drive")
        .arg(format!(
            "file={},format=qcow2,if=none,id=d0",
            root.display()
        ))
        .args(["-device", "scsi-hd,drive=d0,bus=scsi0.0"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=d1,readonly=on",
            seed.display()
        ))
        .args(["-device", "scsi-hd,drive=d1,bus=scsi0.0"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((child, serial))
}

pub(crate) fn attr_after<'a>(xml: &'a str, anchor: &str, attr: &str) -> Option<&'a str> {
    let at = xml.find(anchor)?;
    let rest = &xml[at..];
    let a = rest
        .find(&format!("{attr}='"))
        .map(|i| (i, '\''))
        .or_else(|| rest.find(&format!("{attr}=\"")).map(|i| (i, '"')))?;
    let start = a.0 + attr.len() + 2;
    let end = rest[start..].find(a.1)? + start;
    Some(&rest[start..end])
}

/// The image blob behind the root overlay: qemu-img tells the backing file.
pub(crate) fn blob_of(xml: &str) -> Result<PathBuf> {
    let root = attr_after(xml, "<disk", "file").context("no root disk in the domain XML")?;
    let info = run(Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(root))?;
    let v: serde_json::Value = serde_json::from_str(&info)?;
    Ok(PathBuf::from(
        v["backing-filename"]
            .as_str()
            .context("root disk has no backing file")?,
    ))
}

pub(crate) fn seed_path_of(xml: &str) -> Result<PathBuf> {
    let second = xml.match_indices("<disk").nth(1).context("no seed disk")?.0;
    Ok(PathBuf::from(
        attr_after(&xml[second..], "<source", "file").context("no seed path")?,
    ))
}

/// The domain's serial console written to `file` instead of a socket.
pub(crate) fn console_to_file(xml: &str, file: &Path) -> Result<String> {
    let start = xml
        .find("<serial type='unix'>")
        .or_else(|| xml.find("<serial type=\"unix\">"))
        .context("no unix serial")?;
    let end = start + xml[start..].find("</serial>").context("no </serial>")? + "</serial>".len();
    let mut out = xml.to_owned();
    out.replace_range(
        start..end,
        &format!(
            "<serial type=\"file\">\n      <source path=\"{}\"/>\n      <target port=\"0\"/>\n    </serial>",
            file.display()
        ),
    );
    Ok(out)
}

pub(crate) fn rewrite_for_baseline(
    xml: &str,
    name: &str,
    root: &Path,
    seed: &Path,
    console: &Path,
) -> Result<String> {
    let old_root = attr_after(xml, "<disk", "file")
        .context("no root")?
        .to_owned();
    let old_seed = seed_path_of(xml)?.display().to_string();
    let old_name = xml
        .split("<name>")
        .nth(1)
        .and_then(|s| s.split("</name>").next())
        .context("no name")?
        .to_owned();
    let old_console = attr_after(xml, "<serial", "path")
        .context("no console")?
        .to_owned();
    let mut out = xml
        .replace(
            &format!("<name>{old_name}</name>"),
            &format!("<name>{name}</name>"),
        )
        .replace(&old_root, &root.display().to_string())
        .replace(&old_seed, &seed.display().to_string())
        .replace(&old_console, &console.display().to_string());
    // A new UUID and no netns: the baseline is QEMU started by libvirt, nothing more.
    if let (Some(a), Some(b)) = (out.find("<uuid>"), out.find("</uuid>")) {
        out.replace_range(a..b + "</uuid>".len(), "");
    }
    if let (Some(a), Some(b)) = (
        out.find("<qemu:commandline>"),
        out.find("</qemu:commandline>"),
    ) {
        out.replace_range(a..b + "</qemu:commandline>".len(), "");
    }
    // The pod's NICs are taps in its netns, which the baseline does not have.
    while let (Some(a), Some(b)) = (out.find("<interface "), out.find("</interface>")) {
        out.replace_range(a..b + "</interface>".len(), "");
    }
    Ok(out)
}
