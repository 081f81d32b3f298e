//! Pod sysctls (`linux.sysctls` of the sandbox) for the guest: checked at RunPodSandbox, then
//! set at every boot by cloud-init's `bootcmd` (`sysctl -w name=value`). In a VM every sysctl
//! is the guest kernel's own, so the node's safe/unsafe split does not apply; what is refused
//! is what no Linux guest can have.

/// The top-level directories of `/proc/sys`: a name outside them is not a Linux sysctl.
const ROOTS: &[&str] = &[
    "abi", "crypto", "debug", "dev", "fs", "kernel", "net", "sunrpc", "user", "vm",
];

/// Why `name = value` cannot be a sysctl of the guest, if it cannot.
pub fn check(name: &str, value: &str) -> Result<(), String> {
    // Kubernetes' two forms: `net.ipv4.conf.eth0/100.rp_filter` (a '/' stands for a dot
    // inside a word) and `net/ipv4/conf/eth0.100/rp_filter`; the first separator tells which.
    let (sep, inner) = match (name.find('.'), name.find('/')) {
        (Some(d), Some(s)) if s < d => ('/', b'.'),
        (None, Some(_)) => ('/', b'.'),
        _ => ('.', b'/'),
    };
    let parts: Vec<&str> = name.split(sep).collect();
    if parts.len() < 2
        || parts.iter().any(|p| {
            p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b) || b == inner)
        })
    {
        return Err(format!(
            "{name:?} is not a sysctl name (dot- or slash-separated words of letters, digits, '_' and '-', e.g. kernel.shm_rmid_forced)"
        ));
    }
    if !ROOTS.contains(&parts[0]) {
        return Err(format!(
            "{name:?} is not under any of /proc/sys/{{{}}}: no Linux guest has it",
            ROOTS.join(",")
        ));
    }
    if value.is_empty() || value.len() > 4096 || value.bytes().any(|b| b == b'\n' || b == 0) {
        return Err(format!(
            "the value {value:?} of {name:?} must be one line of 1 to 4096 bytes"
        ));
    }
    Ok(())
}

/// The `bootcmd` entries that set the sysctls (argv form, no shell).
pub fn bootcmd(sysctls: &[(String, String)]) -> Vec<Vec<String>> {
    sysctls
        .iter()
        .map(|(k, v)| vec!["sysctl".into(), "-w".into(), format!("{k}={v}")])
        .collect()
}

/// A shell script's lines that set the sysctls, for user-data that is a `#!` script.
pub fn shell_lines(sysctls: &[(String, String)]) -> String {
    sysctls
        .iter()
        .map(|(k, v)| {
            format!(
                "sysctl -w '{}'\n",
                format!("{k}={v}").replace('\'', r"'\''")
            )
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_are_checked() {
        for ok in [
            ("kernel.shm_rmid_forced", "1"),
            ("net.ipv4.ip_local_port_range", "1024 65000"),
            ("net/ipv4/conf/eth0.100/rp_filter", "1"),
            ("net.ipv4.conf.eth0/100.rp_filter", "1"),
            ("fs.mqueue.msg_max", "100"),
        ] {
            check(ok.0, ok.1).unwrap();
        }
        for (name, value, says) in [
            ("shm_rmid_forced", "1", "not a sysctl name"),
            ("kernel..x", "1", "not a sysctl name"),
            ("kernel.x;reboot", "1", "not a sysctl name"),
            ("foo.bar", "1", "no Linux guest has it"),
            ("kernel.x", "", "one line"),
            ("kernel.x", "1\nkernel.y=2", "one line"),
        ] {
            let err = check(name, value).unwrap_err();
            assert!(err.contains(says), "{name}: {err}");
        }
    }

    #[test]
    fn commands_set_each_sysctl() {
        let s = vec![
            ("kernel.shm_rmid_forced".to_owned(), "1".to_owned()),
            (
                "net.ipv4.ip_local_port_range".to_owned(),
                "1024 65000".to_owned(),
            ),
        ];
        assert_eq!(
            bootcmd(&s)[1],
            ["sysctl", "-w", "net.ipv4.ip_local_port_range=1024 65000"]
        );
        assert_eq!(
            shell_lines(&s),
            "sysctl -w 'kernel.shm_rmid_forced=1'\nsysctl -w 'net.ipv4.ip_local_port_range=1024 65000'\n"
        );
    }
}
