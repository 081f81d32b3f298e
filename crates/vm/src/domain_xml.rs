//! [`VmSpec`] -> libvirt domain XML (pure; checked by golden files in `tests/golden`).

use std::io;

use quick_xml::Writer;
use quick_xml::events::BytesText;
use virtlet_core::annotations::{CpuSetting, DiskDriver};
use virtlet_core::vmspec::{Cpu, DiskFormat, DiskSource, DomainType, VmSpec};

/// The XML namespace of virtlet's domain metadata.
pub const METADATA_NS: &str = "https://virtlet.cloud/libvirt/metadata/1";
const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";
/// The environment variable that tells `vmwrapper` which netns to enter.
pub const NETNS_ENV: &str = "VIRTLET_NETNS";

type W = Writer<Vec<u8>>;

fn text(w: &mut W, name: &str, value: &str) -> io::Result<()> {
    w.create_element(name)
        .write_text_content(BytesText::new(value))?;
    Ok(())
}

/// Renders the domain XML of `spec`.
pub fn render(spec: &VmSpec) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    // Writing into a Vec cannot fail.
    let _ = write_domain(&mut w, spec);
    let mut out = String::from_utf8_lossy(&w.into_inner()).into_owned();
    out.push('\n');
    out
}

fn write_domain(w: &mut W, spec: &VmSpec) -> io::Result<()> {
    let domain_type = match spec.domain_type {
        DomainType::Kvm => "kvm",
        DomainType::Qemu => "qemu",
    };
    let mut domain = w
        .create_element("domain")
        .with_attribute(("type", domain_type));
    if spec.netns.is_some() {
        domain = domain.with_attribute(("xmlns:qemu", QEMU_NS));
    }
    domain.write_inner_content(|w| {
        text(w, "name", &spec.domain_name)?;
        text(w, "uuid", &spec.uuid)?;
        w.create_element("metadata").write_inner_content(|w| {
            w.create_element("virtlet:vm")
                .with_attribute(("xmlns:virtlet", METADATA_NS))
                .write_inner_content(|w| {
                    text(w, "virtlet:sandbox-id", &spec.sandbox_id)?;
                    text(w, "virtlet:container-id", &spec.container_id)
                })?;
            Ok(())
        })?;
        w.create_element("memory")
            .with_attribute(("unit", "KiB"))
            .write_text_content(BytesText::new(
                &spec.memory_bytes.div_ceil(1024).to_string(),
            ))?;
        text(w, "vcpu", &spec.vcpus.to_string())?;
        if spec.cpu_shares.is_some() || spec.cpu_quota_us.is_some() {
            w.create_element("cputune").write_inner_content(|w| {
                if let Some(s) = spec.cpu_shares {
                    text(w, "shares", &s.to_string())?;
                }
                if let (Some(q), Some(p)) = (spec.cpu_quota_us, spec.cpu_period_us) {
                    text(w, "global_period", &p.to_string())?;
                    text(w, "global_quota", &q.to_string())?;
                }
                Ok(())
            })?;
        }
        w.create_element("sysinfo")
            .with_attribute(("type", "smbios"))
            .write_inner_content(|w| {
                w.create_element("system").write_inner_content(|w| {
                    w.create_element("entry")
                        .with_attribute(("name", "uuid"))
                        .write_text_content(BytesText::new(&spec.uuid))?;
                    Ok(())
                })?;
                Ok(())
            })?;
        w.create_element("os").write_inner_content(|w| {
            w.create_element("type")
                .with_attributes([("arch", "x86_64"), ("machine", "pc")])
                .write_text_content(BytesText::new("hvm"))?;
            w.create_element("boot")
                .with_attribute(("dev", "hd"))
                .write_empty()?;
            w.create_element("smbios")
                .with_attribute(("mode", "sysinfo"))
                .write_empty()?;
            Ok(())
        })?;
        w.create_element("features").write_inner_content(|w| {
            w.create_element("acpi").write_empty()?;
            w.create_element("apic").write_empty()?;
            Ok(())
        })?;
        write_cpu(w, &spec.cpu)?;
        w.create_element("clock")
            .with_attribute(("offset", "utc"))
            .write_empty()?;
        text(w, "on_poweroff", "destroy")?;
        text(w, "on_reboot", "restart")?;
        text(w, "on_crash", "destroy")?;
        w.create_element("devices")
            .write_inner_content(|w| write_devices(w, spec))?;
        if let Some(netns) = &spec.netns {
            w.create_element("qemu:commandline")
                .write_inner_content(|w| {
                    for arg in nic_args(&spec.nics) {
                        w.create_element("qemu:arg")
                            .with_attribute(("value", arg.as_str()))
                            .write_empty()?;
                    }
                    w.create_element("qemu:env")
                        .with_attributes([
                            ("name", NETNS_ENV),
                            ("value", &*netns.to_string_lossy()),
                        ])
                        .write_empty()?;
                    Ok(())
                })?;
        }
        Ok(())
    })?;
    Ok(())
}

fn write_cpu(w: &mut W, cpu: &Cpu) -> io::Result<()> {
    match cpu {
        Cpu::Default => Ok(()),
        Cpu::HostModel => {
            w.create_element("cpu")
                .with_attribute(("mode", "host-model"))
                .write_empty()?;
            Ok(())
        }
        Cpu::Custom(setting) => write_cpu_setting(w, setting),
    }
}

fn write_cpu_setting(w: &mut W, c: &CpuSetting) -> io::Result<()> {
    let mut attrs: Vec<(&str, &str)> = Vec::new();
    if let Some(m) = &c.mode {
        attrs.push(("mode", m));
    }
    if let Some(m) = &c.match_ {
        attrs.push(("match", m));
    }
    if let Some(m) = &c.check {
        attrs.push(("check", m));
    }
    w.create_element("cpu")
        .with_attributes(attrs)
        .write_inner_content(|w| {
            if let Some(model) = &c.model {
                let mut attrs: Vec<(&str, &str)> = Vec::new();
                if let Some(f) = &model.fallback {
                    attrs.push(("fallback", f));
                }
                if let Some(v) = &model.vendor_id {
                    attrs.push(("vendor_id", v));
                }
                let el = w.create_element("model").with_attributes(attrs);
                match &model.value {
                    Some(v) => el.write_text_content(BytesText::new(v))?,
                    None => el.write_empty()?,
                };
            }
            if let Some(v) = &c.vendor {
                text(w, "vendor", v)?;
            }
            if let Some(t) = &c.topology {
                let nums: Vec<(&str, String)> = [
                    ("sockets", t.sockets),
                    ("dies", t.dies),
                    ("cores", t.cores),
                    ("threads", t.threads),
                ]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v.to_string())))
                .collect();
                w.create_element("topology")
                    .with_attributes(nums.iter().map(|(k, v)| (*k, v.as_str())))
                    .write_empty()?;
            }
            for f in &c.features {
                let mut attrs: Vec<(&str, &str)> = Vec::new();
                if let Some(p) = &f.policy {
                    attrs.push(("policy", p));
                }
                attrs.push(("name", &f.name));
                w.create_element("feature")
                    .with_attributes(attrs)
                    .write_empty()?;
            }
            Ok(())
        })?;
    Ok(())
}

fn write_devices(w: &mut W, spec: &VmSpec) -> io::Result<()> {
    text(w, "emulator", &spec.emulator.to_string_lossy())?;
    let bus = match spec.disk_bus {
        DiskDriver::Scsi => {
            w.create_element("controller")
                .with_attributes([("type", "scsi"), ("index", "0"), ("model", "virtio-scsi")])
                .write_empty()?;
            "scsi"
        }
        DiskDriver::Virtio => "virtio",
    };
    for disk in &spec.disks {
        let format = match disk.format {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        };
        let path = disk.path.to_string_lossy();
        let kind = match disk.source {
            DiskSource::File => "file",
            DiskSource::Block { .. } => "block",
            DiskSource::Rbd { .. } => "network",
        };
        w.create_element("disk")
            .with_attributes([("type", kind), ("device", "disk")])
            .write_inner_content(|w| {
                w.create_element("driver")
                    .with_attributes([("name", "qemu"), ("type", format)])
                    .write_empty()?;
                match &disk.source {
                    DiskSource::File => {
                        w.create_element("source")
                            .with_attribute(("file", &*path))
                            .write_empty()?;
                    }
                    DiskSource::Block { offset: 0, .. } => {
                        w.create_element("source")
                            .with_attribute(("dev", &*path))
                            .write_empty()?;
                    }
                    DiskSource::Block { offset, size } => {
                        w.create_element("source")
                            .with_attribute(("dev", &*path))
                            .write_inner_content(|w| {
                                w.create_element("slices").write_inner_content(|w| {
                                    w.create_element("slice")
                                        .with_attributes([
                                            ("type", "storage"),
                                            ("offset", &*offset.to_string()),
                                            ("size", &*size.to_string()),
                                        ])
                                        .write_empty()?;
                                    Ok(())
                                })?;
                                Ok(())
                            })?;
                    }
                    DiskSource::Rbd {
                        monitors,
                        pool,
                        image,
                        user,
                        secret_uuid,
                    } => {
                        w.create_element("auth")
                            .with_attribute(("username", user.as_str()))
                            .write_inner_content(|w| {
                                w.create_element("secret")
                                    .with_attributes([
                                        ("type", "ceph"),
                                        ("uuid", secret_uuid.as_str()),
                                    ])
                                    .write_empty()?;
                                Ok(())
                            })?;
                        w.create_element("source")
                            .with_attributes([
                                ("protocol", "rbd"),
                                ("name", &*format!("{pool}/{image}")),
                            ])
                            .write_inner_content(|w| {
                                for m in monitors {
                                    let (host, port) = m.rsplit_once(':').unwrap_or((m, "6789"));
                                    w.create_element("host")
                                        .with_attributes([("name", host), ("port", port)])
                                        .write_empty()?;
                                }
                                Ok(())
                            })?;
                    }
                }
                w.create_element("target")
                    .with_attributes([("dev", disk.target.as_str()), ("bus", bus)])
                    .write_empty()?;
                if let Some(serial) = &disk.serial {
                    text(w, "serial", serial)?;
                }
                if disk.read_only {
                    w.create_element("readonly").write_empty()?;
                }
                Ok(())
            })?;
    }
    // Directories over virtio-9p: QEMU (root) reads and writes them as the host sees them.
    for fs in &spec.filesystems {
        w.create_element("filesystem")
            .with_attributes([("type", "mount"), ("accessmode", "passthrough")])
            .write_inner_content(|w| {
                w.create_element("source")
                    .with_attribute(("dir", &*fs.source.to_string_lossy()))
                    .write_empty()?;
                w.create_element("target")
                    .with_attribute(("dir", fs.tag.as_str()))
                    .write_empty()?;
                if fs.read_only {
                    w.create_element("readonly").write_empty()?;
                }
                Ok(())
            })?;
    }
    match &spec.console_socket {
        Some(path) => {
            w.create_element("serial")
                .with_attribute(("type", "unix"))
                .write_inner_content(|w| {
                    w.create_element("source")
                        .with_attributes([("mode", "bind"), ("path", &*path.to_string_lossy())])
                        .write_empty()?;
                    w.create_element("target")
                        .with_attribute(("port", "0"))
                        .write_empty()?;
                    Ok(())
                })?;
        }
        None => {
            w.create_element("serial")
                .with_attribute(("type", "pty"))
                .write_inner_content(|w| {
                    w.create_element("target")
                        .with_attribute(("port", "0"))
                        .write_empty()?;
                    Ok(())
                })?;
        }
    }
    // Terminals for `exec -t`: virtio consoles on virtio-serial ports 1.., ttys in the guest
    // (`/dev/hvc1`..), each behind a socket. Port 0, the guest's hvc0, is a null console:
    // systemd starts a getty on hvc0 when it exists, which must not share an exec terminal.
    if let Some(console) = &spec.console_socket {
        for n in 0..=virtlet_core::vmspec::EXEC_TTYS {
            let path = virtlet_core::vmspec::exec_tty_socket(console, n);
            let port = n.to_string();
            w.create_element("console")
                .with_attribute(("type", if n == 0 { "null" } else { "unix" }))
                .write_inner_content(|w| {
                    if n > 0 {
                        w.create_element("source")
                            .with_attributes([("mode", "bind"), ("path", &*path.to_string_lossy())])
                            .write_empty()?;
                    }
                    w.create_element("target")
                        .with_attribute(("type", "virtio"))
                        .write_empty()?;
                    w.create_element("address")
                        .with_attributes([
                            ("type", "virtio-serial"),
                            ("controller", "0"),
                            ("bus", "0"),
                            ("port", port.as_str()),
                        ])
                        .write_empty()?;
                    Ok(())
                })?;
        }
    }
    // The QEMU guest agent's channel (exec): libvirt picks the socket and talks to the agent.
    w.create_element("channel")
        .with_attribute(("type", "unix"))
        .write_inner_content(|w| {
            w.create_element("target")
                .with_attributes([("type", "virtio"), ("name", crate::agent::CHANNEL)])
                .write_empty()?;
            Ok(())
        })?;
    w.create_element("input")
        .with_attributes([("type", "tablet"), ("bus", "usb")])
        .write_empty()?;
    w.create_element("graphics")
        .with_attributes([
            ("type", "vnc"),
            ("port", "-1"),
            ("autoport", "yes"),
            ("listen", "127.0.0.1"),
        ])
        .write_empty()?;
    w.create_element("video").write_inner_content(|w| {
        w.create_element("model")
            .with_attribute(("type", "vga"))
            .write_empty()?;
        Ok(())
    })?;
    w.create_element("memballoon")
        .with_attribute(("model", "virtio"))
        .write_inner_content(|w| {
            w.create_element("stats")
                .with_attribute(("period", "5"))
                .write_empty()?;
            Ok(())
        })?;
    w.create_element("rng")
        .with_attribute(("model", "virtio"))
        .write_inner_content(|w| {
            w.create_element("backend")
                .with_attribute(("model", "random"))
                .write_text_content(BytesText::new("/dev/urandom"))?;
            Ok(())
        })?;
    Ok(())
}

/// The PCI slot of the first NIC; the next ones count down. libvirt does not know these
/// devices and hands out slots from 2 upwards, so the NICs take them from the top.
const NIC_TOP_SLOT: usize = 0x1f;

/// QEMU arguments for the VM's NICs. libvirt cannot open a tap inside another netns, so the
/// NICs are handed to QEMU directly: `vmwrapper` has entered the pod netns before QEMU runs,
/// and QEMU opens each persistent tap there by name. No option ROM: SeaBIOS boots the disk.
pub fn nic_args(nics: &[virtlet_core::vmspec::Nic]) -> Vec<String> {
    let mut out = Vec::with_capacity(nics.len() * 4);
    for (k, nic) in nics.iter().enumerate().take(NIC_TOP_SLOT - 0x10) {
        out.push("-netdev".to_owned());
        out.push(format!(
            "tap,id=vnet{k},ifname={},script=no,downscript=no",
            nic.tap
        ));
        out.push("-device".to_owned());
        out.push(format!(
            "virtio-net-pci,netdev=vnet{k},id=net{k},mac={},host_mtu={},romfile=,bus=pci.0,addr={:#x}",
            nic.mac,
            nic.mtu,
            NIC_TOP_SLOT - k
        ));
    }
    out
}
/// The files of a domain's disks (`<disk><source file=.../>`), as libvirt describes it.
pub fn disk_files(xml: &str) -> Vec<std::path::PathBuf> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut in_disk = false;
    let mut out = Vec::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.name().as_ref() == b"disk" => in_disk = true,
            Ok(Event::End(e)) if e.name().as_ref() == b"disk" => in_disk = false,
            Ok(Event::Empty(e) | Event::Start(e)) if in_disk && e.name().as_ref() == b"source" => {
                if let Ok(Some(a)) = e.try_get_attribute("file")
                    && let Ok(v) = a.unescape_value()
                {
                    out.push(std::path::PathBuf::from(v.as_ref()));
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_files_are_read_from_libvirts_description() {
        let xml = r#"<domain type="qemu"><name>virtlet-x</name><devices>
            <disk type="file" device="disk"><driver name="qemu" type="qcow2"/>
              <source file="/var/lib/virtlet/vms/s1/root-vm.qcow2" index="2"/>
              <backingStore type="file"><source file="/var/lib/virtlet/images/blob"/></backingStore>
              <target dev="sda" bus="scsi"/></disk>
            <disk type="file" device="cdrom"><target dev="sdb"/></disk>
            <disk type="file" device="disk"><source file="/a &amp; b/seed.img"></source></disk>
            <interface type="ethernet"><source dev="tap0"/></interface>
            </devices></domain>"#;
        let files = disk_files(xml);
        assert_eq!(
            files,
            [
                std::path::PathBuf::from("/var/lib/virtlet/vms/s1/root-vm.qcow2"),
                "/var/lib/virtlet/images/blob".into(),
                "/a & b/seed.img".into()
            ]
        );
    }
}
