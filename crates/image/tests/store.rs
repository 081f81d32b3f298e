//! The image store's reference counting and GC, driven through its library API.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use virtlet_image::{ImageStore, ImageStoreConfig};
use virtlet_store::Store;
use virtlet_testkit::{qcow2_image, raw_image};

fn open(dir: &std::path::Path) -> Arc<ImageStore> {
    let meta = Arc::new(Store::open(&dir.join("db")).unwrap());
    Arc::new(
        ImageStore::open(
            ImageStoreConfig {
                image_dir: dir.join("images"),
                translations_dir: dir.join("translations"),
                download_protocol: "https".into(),
            },
            meta,
        )
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn data_used_by_a_vm_outlives_remove_image() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let file = dir.path().join("disk.qcow2");
    std::fs::write(&file, qcow2_image("8M").unwrap()).unwrap();
    let name = format!("virtlet.cloud/file://{}", file.display());
    let pulled = store.pull(&name).await.unwrap();
    let blob = store.blob_path(&pulled.digest);

    let (info, path) = store.acquire(&name, "container-1").unwrap();
    assert_eq!(path, blob);
    assert_eq!(info.format, "qcow2");
    assert_eq!(info.virtual_size, 8 << 20);
    store.acquire(&pulled.image_ref, "container-2").unwrap();

    store.remove(&name).unwrap();
    assert!(store.status(&name).unwrap().is_none(), "the name is gone");
    assert!(blob.exists(), "the data stays while VMs use it");
    assert_eq!(store.gc().unwrap().blobs, 0, "GC keeps data in use");

    store.release(&pulled.digest, "container-1").unwrap();
    assert!(blob.exists());
    store.release(&pulled.digest, "container-2").unwrap();
    assert!(!blob.exists(), "the last release deletes unnamed data");
    store.release(&pulled.digest, "container-2").unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn acquiring_an_absent_image_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = store.acquire("virtlet.cloud/nothing", "c").unwrap_err();
    assert_eq!(err.kind(), virtlet_image::ErrorKind::NotFound);
    assert!(err.to_string().contains("virtlet.cloud/nothing"));
}

#[tokio::test(flavor = "multi_thread")]
async fn re_pulling_a_changed_image_drops_the_old_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let file = dir.path().join("disk.img");
    std::fs::write(&file, raw_image(4096, 1)).unwrap();
    let name = format!("virtlet.cloud/file://{}", file.display());
    let first = store.pull(&name).await.unwrap();
    std::fs::write(&file, raw_image(4096, 2)).unwrap();
    let second = store.pull(&name).await.unwrap();
    assert_ne!(first.digest, second.digest);
    assert!(!store.blob_path(&first.digest).exists());
    assert!(store.blob_path(&second.digest).exists());
    assert_eq!(store.list(None).unwrap().len(), 1);
}

/// On a node shared with containerd, image calls are routed by whether the store serves a name.
#[tokio::test(flavor = "multi_thread")]
async fn serves_prefixed_translated_and_held_images_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let file = dir.path().join("disk.qcow2");
    std::fs::write(&file, qcow2_image("8M").unwrap()).unwrap();
    std::fs::create_dir_all(dir.path().join("translations")).unwrap();
    std::fs::write(
        dir.path().join("translations/critest.yaml"),
        format!(
            "translations:\n- name: registry.k8s.io/e2e-test-images/busybox\n  url: file://{}\n- regexp: '^example\\.com/vm-(.*)$'\n  url: file://{}\n",
            file.display(),
            file.display()
        ),
    )
    .unwrap();
    assert!(store.serves("virtlet.cloud/cirros"), "the prefix");
    assert!(
        store.serves("registry.k8s.io/e2e-test-images/busybox:1.36.1-1"),
        "an exact name"
    );
    assert!(store.serves("example.com/vm-anything:v2"), "a regexp");
    assert!(
        !store.serves("docker.io/library/busybox:local"),
        "a container image"
    );
    assert!(!store.serves("registry.k8s.io/pause:3.6"));
    assert!(!store.serves(""), "nothing");

    let pulled = store
        .pull("registry.k8s.io/e2e-test-images/busybox:1.36.1-1")
        .await
        .unwrap();
    assert!(
        store.serves(&pulled.image_ref),
        "a held image by its reference"
    );
    std::fs::remove_dir_all(dir.path().join("translations")).unwrap();
    assert!(
        store.serves("registry.k8s.io/e2e-test-images/busybox:1.36.1-1"),
        "a held image after its translation went away"
    );
}
