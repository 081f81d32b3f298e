//! virtlet's FlexVolume driver, `virtlet/flexvolume_driver`, as the kubelet calls it
//! (`<plugin dir>/virtlet~flexvolume_driver/flexvolume_driver CALL ARGS...`, answering one
//! JSON object on stdout). It makes nothing itself: `mount` writes the volume's options
//! (with a fresh `uuid`) into the volume's directory as `virtlet-flexvolume.json`, which
//! virtlet reads at CreateContainer and turns into a disk of the VM. Mirantis Virtlet's
//! driver did the same, so pod specs written for it work unchanged:
//!
//! - `init`: success, no attach/detach calls (`"capabilities": {"attach": false}`);
//! - `mount TARGET OPTIONS`: the description written into TARGET, then a tmpfs mounted on
//!   TARGET (the kubelet unmounts only what it sees as a mount point) and the description
//!   written again onto it;
//! - `unmount TARGET`: the tmpfs unmounted and TARGET removed;
//! - anything else: `{"status": "Not supported"}`, as the FlexVolume convention asks.

use std::path::Path;

use serde_json::{Map, Value, json};

/// The file the runtime reads.
pub const DATA_FILE: &str = "virtlet-flexvolume.json";

/// What mounts and unmounts (the real one needs root; tests use a stand-in).
pub trait Mounter {
    fn mount_tmpfs(&self, target: &Path) -> Result<(), String>;
    fn unmount(&self, target: &Path) -> Result<(), String>;
}

/// tmpfs through mount(2).
pub struct SystemMounter;

impl Mounter for SystemMounter {
    fn mount_tmpfs(&self, target: &Path) -> Result<(), String> {
        nix::mount::mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .map_err(|e| format!("cannot mount a tmpfs on {}: {e}", target.display()))
    }

    fn unmount(&self, target: &Path) -> Result<(), String> {
        match nix::mount::umount(target) {
            // Not mounted (any more): nothing to undo.
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(format!("cannot unmount {}: {e}", target.display())),
        }
    }
}

/// The volume types virtlet knows, and what each needs.
fn check(options: &Map<String, Value>) -> Result<(), String> {
    let get = |k: &str| options.get(k).and_then(Value::as_str).unwrap_or("");
    let need = |keys: &[&str]| -> Result<(), String> {
        match keys.iter().find(|k| get(k).is_empty()) {
            Some(k) => Err(format!("type {:?} needs the option {k:?}", get("type"))),
            None => Ok(()),
        }
    };
    match get("type") {
        "qcow2" => Ok(()),
        "raw" => need(&["path"]),
        "ceph" => need(&["monitor", "user", "secret", "pool", "volume"]),
        "" => Err("the option \"type\" is missing (qcow2, raw or ceph)".into()),
        other => Err(format!("type {other:?} is not one of qcow2, raw, ceph")),
    }
}

fn write_data(dir: &Path, options: &Map<String, Value>) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(DATA_FILE);
    let text = serde_json::to_vec(options).map_err(|e| e.to_string())?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&text))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn mount(target: &Path, options: &str, mounter: &dyn Mounter) -> Result<Value, String> {
    let mut options: Map<String, Value> = match serde_json::from_str(options) {
        Ok(Value::Object(m)) => m,
        _ => return Err(format!("the options are not a JSON object: {options:?}")),
    };
    check(&options)?;
    options.insert("uuid".into(), json!(uuid::Uuid::new_v4().to_string()));
    std::fs::create_dir_all(target)
        .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    write_data(target, &options)?;
    mounter.mount_tmpfs(target)?;
    if let Err(e) = write_data(target, &options) {
        let _ = mounter.unmount(target);
        return Err(e);
    }
    Ok(json!({"status": "Success"}))
}

fn unmount(target: &Path, mounter: &dyn Mounter) -> Result<Value, String> {
    mounter.unmount(target)?;
    match std::fs::remove_dir_all(target) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("cannot remove {}: {e}", target.display()))
        }
        _ => Ok(json!({"status": "Success"})),
    }
}

/// One call: the JSON answer and whether it succeeded (the exit status).
pub fn run(args: &[String], mounter: &dyn Mounter) -> (Value, bool) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["init"] => Ok(json!({"status": "Success", "capabilities": {"attach": false}})),
        ["mount", target, options] => mount(Path::new(target), options, mounter),
        ["unmount", target] => unmount(Path::new(target), mounter),
        ["init" | "mount" | "unmount", ..] => Err(format!(
            "wrong arguments {:?} (init; mount TARGET OPTIONS_JSON; unmount TARGET)",
            &args[1..]
        )),
        _ => return (json!({"status": "Not supported"}), true),
    };
    match result {
        Ok(v) => (v, true),
        Err(message) => (json!({"status": "Failure", "message": message}), false),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[derive(Default)]
    struct Recorder(RefCell<Vec<String>>);

    impl Mounter for Recorder {
        fn mount_tmpfs(&self, target: &Path) -> Result<(), String> {
            self.0
                .borrow_mut()
                .push(format!("mount {}", target.display()));
            Ok(())
        }
        fn unmount(&self, target: &Path) -> Result<(), String> {
            self.0
                .borrow_mut()
                .push(format!("unmount {}", target.display()));
            Ok(())
        }
    }

    fn call(args: &[&str], m: &Recorder) -> (Value, bool) {
        run(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>(), m)
    }

    #[test]
    fn the_calls_the_kubelet_makes() {
        let m = Recorder::default();
        assert_eq!(
            call(&["init"], &m),
            (
                json!({"status": "Success", "capabilities": {"attach": false}}),
                true
            )
        );
        for other in ["attach", "waitforattach", "getvolumename", "mountdevice"] {
            assert_eq!(
                call(&[other, "x"], &m),
                (json!({"status": "Not supported"}), true)
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir
            .path()
            .join("pods/uid/volumes/virtlet~flexvolume_driver/scratch");
        let t = target.to_str().unwrap();
        let opts = r#"{"type":"qcow2","capacity":"64Mi","kubernetes.io/pod.name":"vm"}"#;
        assert_eq!(
            call(&["mount", t, opts], &m),
            (json!({"status": "Success"}), true)
        );
        let data: Value =
            serde_json::from_slice(&std::fs::read(target.join(DATA_FILE)).unwrap()).unwrap();
        assert_eq!(data["type"], "qcow2");
        assert_eq!(data["capacity"], "64Mi");
        assert_eq!(data["uuid"].as_str().unwrap().len(), 36);
        assert_eq!(
            call(&["unmount", t], &m),
            (json!({"status": "Success"}), true)
        );
        assert!(!target.exists());
        assert_eq!(
            *m.0.borrow(),
            [format!("mount {t}"), format!("unmount {t}")]
        );
    }

    #[test]
    fn bad_options_fail_with_a_message() {
        let m = Recorder::default();
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("v");
        let t = t.to_str().unwrap();
        for (opts, needle) in [
            ("not json", "not a JSON object"),
            (r#"{"capacity":"1Gi"}"#, "\"type\" is missing"),
            (r#"{"type":"nfs"}"#, "\"nfs\""),
            (r#"{"type":"raw"}"#, "\"path\""),
            (r#"{"type":"ceph","monitor":"m"}"#, "\"user\""),
        ] {
            let (v, ok) = call(&["mount", t, opts], &m);
            assert!(!ok && v["status"] == "Failure", "{v}");
            assert!(
                v["message"].as_str().unwrap().contains(needle),
                "{needle}: {v}"
            );
        }
        assert!(m.0.borrow().is_empty(), "nothing mounted");
        let (v, ok) = call(&["mount", t], &m);
        assert!(
            !ok && v["message"].as_str().unwrap().contains("wrong arguments"),
            "{v}"
        );
    }
}
