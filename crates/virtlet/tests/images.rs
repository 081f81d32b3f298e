//! The CRI image service over the real socket, against real HTTP(S) servers on loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Daemon, Options, assert_status, spec};
use k8s_cri::v1::{ImageFilter, ImageFsInfoRequest, ListImagesRequest};
use tonic::Code;
use virtlet_testkit::{Route, TestCa, TestServer, qcow2_image, raw_image, sha256sum};

#[tokio::test(flavor = "multi_thread")]
async fn pull_status_list_remove_round_trip() {
    let d = Daemon::start().await;
    let server = TestServer::http().await.unwrap();
    let img = qcow2_image("64M").unwrap();
    let hex = sha256sum(&img).unwrap();
    server.route("/disk.qcow2", Route::Content(Bytes::from(img.clone())));
    let name = format!("virtlet.cloud/{}", server.location("/disk.qcow2"));

    // CRI: PullImage answers the image ID; repoTags keep the tag that was pulled (`:latest`
    // when none), repoDigests the repository with the digest.
    let image_ref = d.pull(&format!("{name}:latest")).await.unwrap();
    let id = format!("sha256:{hex}");
    assert_eq!(image_ref, id);
    let tagged = format!("{name}:latest");
    let repo_digest = format!("{name}@sha256:{hex}");

    for query in [
        name.clone(),
        tagged.clone(),
        id.clone(),
        hex.clone(),
        hex[..12].to_owned(),
        format!("sha256:{}", &hex[..12]),
        repo_digest.clone(),
        format!("{name}:v2@sha256:{hex}"),
    ] {
        let st = d.status(&query, false).await;
        let image = st.image.unwrap_or_else(|| panic!("no status for {query}"));
        assert_eq!(image.id, id);
        assert_eq!(image.repo_tags, std::slice::from_ref(&tagged));
        assert_eq!(image.repo_digests, std::slice::from_ref(&repo_digest));
        assert_eq!(image.size, img.len() as u64);
    }
    // Another tag was not pulled; another digest is not this image.
    for query in [
        format!("{name}:v2"),
        format!("{name}@sha256:{}", "0".repeat(64)),
    ] {
        assert!(d.status(&query, false).await.image.is_none(), "{query}");
    }

    // The same content under a second tag and a second repository is one image with every tag.
    let second = format!("virtlet.cloud/{}", server.location("/again/disk.qcow2"));
    server.route(
        "/again/disk.qcow2",
        Route::Content(Bytes::from(img.clone())),
    );
    assert_eq!(d.pull(&format!("{name}:v2")).await.unwrap(), id);
    assert_eq!(d.pull(&second).await.unwrap(), id);
    let image = d.status(&format!("{name}:v2"), false).await.image.unwrap();
    assert_eq!(
        image.repo_tags,
        [
            format!("{second}:latest"),
            tagged.clone(),
            format!("{name}:v2")
        ]
    );
    assert_eq!(
        image.repo_digests,
        [format!("{second}@sha256:{hex}"), repo_digest.clone()]
    );
    // Removing it by one tag removes the image with all its names.
    d.remove(&format!("{name}:v2")).await.unwrap();
    for query in [tagged.clone(), second.clone(), id.clone()] {
        assert!(d.status(&query, false).await.image.is_none(), "{query}");
    }
    // Pulled by digest: no tag, only the repo digest.
    assert_eq!(d.pull(&repo_digest).await.unwrap(), id);
    let image = d.status(&repo_digest, false).await.image.unwrap();
    assert!(image.repo_tags.is_empty(), "{:?}", image.repo_tags);
    assert_eq!(image.repo_digests, std::slice::from_ref(&repo_digest));
    assert!(d.status(&name, false).await.image.is_none());
    d.remove(&id).await.unwrap();
    d.pull(&name).await.unwrap();

    let verbose = d.status(&name, true).await;
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtualSize"], 64 << 20);
    assert_eq!(info["sourceUrl"], server.url("/disk.qcow2"));

    let mut images = d.images().await;
    let all = images
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(all.len(), 1);
    let filtered = |q: &str| ListImagesRequest {
        filter: Some(ImageFilter {
            image: Some(spec(q)),
        }),
    };
    assert_eq!(
        images
            .list_images(filtered(&name))
            .await
            .unwrap()
            .into_inner()
            .images
            .len(),
        1
    );
    assert_eq!(
        images
            .list_images(filtered("virtlet.cloud/other"))
            .await
            .unwrap()
            .into_inner()
            .images
            .len(),
        0
    );

    let fs = images
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert_eq!(
        usage.fs_id.as_ref().unwrap().mountpoint,
        d.image_dir.display().to_string()
    );
    assert!(usage.used_bytes.as_ref().unwrap().value >= img.len() as u64 / 2);
    assert_eq!(usage.inodes_used.as_ref().unwrap().value, 1);
    assert!(usage.timestamp > 0);

    let blob = d.image_dir.join("blobs/sha256").join(&hex);
    assert_eq!(std::fs::read(&blob).unwrap(), img);
    d.remove(&name).await.unwrap();
    assert!(d.status(&name, false).await.image.is_none());
    assert!(!blob.exists(), "data of a removed, unused image must go");
    // Removing again, or something never pulled, succeeds (the kubelet relies on it).
    d.remove(&name).await.unwrap();
    d.remove("virtlet.cloud/never-pulled").await.unwrap();
    assert!(
        d.status("virtlet.cloud/never-pulled", false)
            .await
            .image
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn default_protocol_file_urls_and_raw_images() {
    let server = TestServer::http().await.unwrap();
    let raw = raw_image(1 << 20, 7);
    server.route("/raw.img", Route::Content(Bytes::from(raw.clone())));
    // With the https default, a location without a protocol goes to https: the plain HTTP
    // server cannot answer that, which proves the protocol was prepended.
    let https_default = Daemon::start_with(Options {
        protocol: "https",
        ..Options::default()
    })
    .await;
    let err = https_default
        .pull(&format!("virtlet.cloud/{}", server.location("/raw.img")))
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains(&format!("https://{}", server.location("/raw.img"))),
        "{}",
        err.message()
    );

    let d = Daemon::start().await;
    let r = d
        .pull(&format!("virtlet.cloud/{}", server.location("/raw.img")))
        .await
        .unwrap();
    assert!(r.ends_with(&sha256sum(&raw).unwrap()));
    let info = d.status(&r, true).await;
    let info: serde_json::Value = serde_json::from_str(&info.info["info"]).unwrap();
    assert_eq!(info["format"], "raw");
    assert_eq!(info["virtualSize"], 1 << 20);

    let local = d.dir.path().join("local.qcow2");
    std::fs::write(&local, qcow2_image("1G").unwrap()).unwrap();
    let name = format!("virtlet.cloud/file://{}", local.display());
    let r = d.pull(&name).await.unwrap();
    assert!(r.starts_with("sha256:"), "{r}");
    let image = d.status(&name, false).await.image.unwrap();
    assert_eq!(image.repo_tags, [format!("{name}:latest")]);
    assert_status(
        d.pull(&format!(
            "virtlet.cloud/file://{}/missing.qcow2",
            d.dir.path().display()
        ))
        .await,
        Code::NotFound,
        &["missing.qcow2", "does not exist"],
    );
    assert_status(
        d.pull(&format!("virtlet.cloud/file://{}", d.dir.path().display()))
            .await,
        Code::InvalidArgument,
        &["not a regular file"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn translations_names_regexps_and_pins() {
    let d = Daemon::start().await;
    let server = TestServer::http().await.unwrap();
    let a = qcow2_image("10M").unwrap();
    let b = raw_image(4096, 1);
    server.route(
        "/images/cirros-0.4.img",
        Route::Content(Bytes::from(a.clone())),
    );
    server.route(
        "/images/fedora-27.raw",
        Route::Content(Bytes::from(b.clone())),
    );
    d.write_translation(
        "images.yaml",
        &format!(
            "translations:\n  - name: cirros\n    url: {}\n  - regexp: 'fedora/(\\d+)'\n    url: {}\n",
            server.url("/images/cirros-0.4.img"),
            server.url("/images/fedora-$1.raw")
        ),
    );
    let hex_a = sha256sum(&a).unwrap();
    assert_eq!(
        d.pull("virtlet.cloud/cirros").await.unwrap(),
        format!("sha256:{hex_a}")
    );
    let hex_b = sha256sum(&b).unwrap();
    assert!(
        d.pull("virtlet.cloud/fedora/27:latest")
            .await
            .unwrap()
            .ends_with(&hex_b)
    );

    // Pinned: the right digest passes, a wrong one fails and leaves nothing behind.
    d.pull(&format!("virtlet.cloud/cirros@sha256:{hex_a}"))
        .await
        .unwrap();
    let before = d.snapshot().await;
    assert_status(
        d.pull(&format!("virtlet.cloud/fedora/27@sha256:{hex_a}"))
            .await,
        Code::DataLoss,
        &[
            "image digest mismatch",
            "virtlet.cloud/fedora/27",
            &hex_a,
            &hex_b,
        ],
    );
    assert_eq!(d.snapshot().await, before);

    // Two names, one content: listed once with both names; removing by ID removes both.
    d.write_translation(
        "more.yaml",
        &format!(
            "translations:\n  - name: cirros-again\n    url: {}\n",
            server.url("/images/cirros-0.4.img")
        ),
    );
    d.pull("virtlet.cloud/cirros-again").await.unwrap();
    let st = d.status("virtlet.cloud/cirros", false).await.image.unwrap();
    assert_eq!(
        st.repo_tags,
        [
            "virtlet.cloud/cirros-again:latest",
            "virtlet.cloud/cirros:latest"
        ]
    );
    d.remove(&format!("sha256:{hex_a}")).await.unwrap();
    assert!(
        d.status("virtlet.cloud/cirros-again", false)
            .await
            .image
            .is_none()
    );
    assert!(!d.image_dir.join("blobs/sha256").join(&hex_a).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_translation_config_is_named_and_others_apply() {
    let d = Daemon::start().await;
    let server = TestServer::http().await.unwrap();
    server.route("/ok.img", Route::Content(Bytes::from(raw_image(2048, 3))));
    d.write_translation("a-broken.yaml", "translations: [\n  - name: x\n");
    d.write_translation(
        "b-good.yaml",
        &format!(
            "translations:\n  - name: ok\n    url: {}\n",
            server.url("/ok.img")
        ),
    );
    d.pull("virtlet.cloud/ok").await.unwrap();
    assert_status(
        d.pull(&format!(
            "virtlet.cloud/{}",
            server.location("/missing.img")
        ))
        .await,
        Code::NotFound,
        &["a-broken.yaml", "404", "virtlet.cloud/"],
    );
    assert!(
        d.log_text().contains("a-broken.yaml"),
        "the daemon log names the bad file"
    );
}

struct BadCase {
    what: &'static str,
    image: String,
    code: Code,
    needles: Vec<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_errors_and_leaves_the_store_unchanged() {
    let d = Daemon::start().await;
    let server = TestServer::http().await.unwrap();
    // Something already present, which every failure must leave alone.
    server.route("/good.img", Route::Content(Bytes::from(raw_image(8192, 9))));
    d.pull(&format!("virtlet.cloud/{}", server.location("/good.img")))
        .await
        .unwrap();

    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    server.route("/500", Route::Status(500));
    server.route(
        "/html",
        Route::Content(Bytes::from_static(
            b"<!DOCTYPE html><html><body>Sign in</body></html>",
        )),
    );
    server.route("/loop", Route::Redirect("/loop".into()));
    server.route("/stall", Route::Stall);
    server.route(
        "/stall-body",
        Route::StallBody {
            sent: Bytes::from(raw_image(4096, 2)),
            total: 1 << 20,
        },
    );
    server.route(
        "/cut",
        Route::Cut {
            sent: Bytes::from(raw_image(4096, 2)),
            total: 1 << 20,
        },
    );
    server.route(
        "/gz",
        Route::Content(Bytes::from_static(b"\x1f\x8b\x08\x00\x00\x00\x00\x00")),
    );
    d.write_translation(
        "slow.yaml",
        &format!(
            "translations:\n  - name: stalled\n    url: {}\n    transport: quick\n  - name: stalled-body\n    url: {}\n    transport: quick\ntransports:\n  quick:\n    timeout: 700\n",
            server.url("/stall"),
            server.url("/stall-body"),
        ),
    );
    let loc = |p: &str| format!("virtlet.cloud/{}", server.location(p));
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases = vec![
        BadCase {
            what: "empty reference",
            image: "".into(),
            code: Code::InvalidArgument,
            needles: s(&["image.image is empty"]),
        },
        BadCase {
            what: "whitespace",
            image: "virtlet.cloud/a b".into(),
            code: Code::InvalidArgument,
            needles: s(&["\"virtlet.cloud/a b\"", "whitespace"]),
        },
        BadCase {
            what: "prefix only",
            image: "virtlet.cloud/".into(),
            code: Code::InvalidArgument,
            needles: s(&["names no image"]),
        },
        BadCase {
            what: "bad digest",
            image: "virtlet.cloud/x@sha256:1234".into(),
            code: Code::InvalidArgument,
            needles: s(&["sha256:1234", "64 lowercase hex"]),
        },
        BadCase {
            what: "unknown scheme",
            image: "virtlet.cloud/ftp://example.com/x.img".into(),
            code: Code::InvalidArgument,
            needles: s(&["\"ftp\"", "ftp://example.com/x.img", "not supported"]),
        },
        BadCase {
            what: "404",
            image: loc("/nothing.img"),
            code: Code::NotFound,
            needles: vec![loc("/nothing.img"), "HTTP 404".into()],
        },
        BadCase {
            what: "500",
            image: loc("/500"),
            code: Code::Unavailable,
            needles: vec![loc("/500"), "HTTP 500".into()],
        },
        BadCase {
            what: "connection refused",
            image: format!("virtlet.cloud/127.0.0.1:{closed_port}/x.img"),
            code: Code::Unavailable,
            needles: s(&["cannot connect", "refused"]),
        },
        BadCase {
            what: "stall before headers",
            image: "virtlet.cloud/stalled".into(),
            code: Code::DeadlineExceeded,
            needles: s(&["virtlet.cloud/stalled", "timed out", "700 ms"]),
        },
        BadCase {
            what: "stall mid-body",
            image: "virtlet.cloud/stalled-body".into(),
            code: Code::DeadlineExceeded,
            needles: s(&["timed out"]),
        },
        BadCase {
            what: "cut connection",
            image: loc("/cut"),
            code: Code::Unavailable,
            needles: s(&["broke off"]),
        },
        BadCase {
            what: "redirect loop",
            image: loc("/loop"),
            code: Code::Unavailable,
            needles: s(&["redirected more than 9 times"]),
        },
        BadCase {
            what: "HTML page",
            image: loc("/html"),
            code: Code::FailedPrecondition,
            needles: s(&["did not serve a disk image", "HTML page"]),
        },
        BadCase {
            what: "gzip",
            image: loc("/gz"),
            code: Code::FailedPrecondition,
            needles: s(&["gzip archive"]),
        },
    ];
    let before = d.snapshot().await;
    for case in cases {
        let result = d.pull(&case.image).await;
        let err = match result {
            Ok(r) => panic!("{}: expected {:?}, pulled {r}", case.what, case.code),
            Err(e) => e,
        };
        assert_eq!(err.code(), case.code, "{}: {}", case.what, err.message());
        for n in &case.needles {
            assert!(
                err.message().contains(n.as_str()),
                "{}: {:?} should contain {n:?}",
                case.what,
                err.message()
            );
        }
        if !case.image.is_empty() && case.code != Code::InvalidArgument {
            assert!(
                err.message().contains(&format!("{:?}", case.image)),
                "{}: names the image: {}",
                case.what,
                err.message()
            );
        }
        assert_eq!(
            d.snapshot().await,
            before,
            "{}: the store changed",
            case.what
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn https_trust_server_name_insecure_and_client_certificates() {
    let ca = TestCa::new("virtlet test CA").unwrap();
    let img = Bytes::from(raw_image(4096, 4));
    let d = Daemon::start().await;
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("            {l}\n"))
            .collect::<String>()
    };

    // Untrusted: our CA is not in the roots yet.
    let plain = TestServer::https(&ca, &[], None).await.unwrap();
    plain.route("/x.img", Route::Content(img.clone()));
    let before = d.snapshot().await;
    assert_status(
        d.pull(&format!("virtlet.cloud/{}", plain.url("/x.img")))
            .await,
        Code::FailedPrecondition,
        &["TLS", "UnknownIssuer"],
    );
    assert_eq!(d.snapshot().await, before);

    // The CA added through a transport profile.
    let named = TestServer::https(&ca, &["images.internal"], None)
        .await
        .unwrap();
    named.route("/x.img", Route::Content(img.clone()));
    let client_ca = TestCa::new("client CA").unwrap();
    let mtls = TestServer::https(&ca, &[], Some(&client_ca)).await.unwrap();
    mtls.route("/x.img", Route::Content(img.clone()));
    let (client_cert, client_key) = client_ca.issue(&["virtlet-node".into()]).unwrap();
    let other = TestCa::new("stranger").unwrap();
    let (wrong_cert, wrong_key) = other.issue(&["virtlet-node".into()]).unwrap();
    d.write_translation(
        "tls.yaml",
        &format!(
            r#"translations:
  - name: trusted
    url: {trusted}
    transport: ca
  - name: renamed
    url: {renamed}
    transport: renamed
  - name: renamed-without-override
    url: {renamed}
    transport: ca
  - name: insecure
    url: {renamed}
    transport: insecure
  - name: mtls
    url: {mtls}
    transport: client
  - name: mtls-wrong
    url: {mtls}
    transport: wrongclient
  - name: mtls-none
    url: {mtls}
    transport: ca
transports:
  ca:
    tls:
      certificates:
        - cert: |
{ca}
  renamed:
    tls:
      serverName: images.internal
      certificates:
        - cert: |
{ca}
  insecure:
    tls:
      insecure: true
  client:
    tls:
      certificates:
        - cert: |
{ca}
        - cert: |
{client_cert}
          key: |
{client_key}
  wrongclient:
    tls:
      certificates:
        - cert: |
{ca}
        - cert: |
{wrong_cert}
          key: |
{wrong_key}
"#,
            trusted = plain.url("/x.img"),
            renamed = named.url("/x.img"),
            mtls = mtls.url("/x.img"),
            ca = indent(&ca.cert_pem),
            client_cert = indent(&client_cert),
            client_key = indent(&client_key),
            wrong_cert = indent(&wrong_cert),
            wrong_key = indent(&wrong_key),
        ),
    );
    d.pull("virtlet.cloud/trusted").await.unwrap();
    d.pull("virtlet.cloud/renamed").await.unwrap();
    assert_status(
        d.pull("virtlet.cloud/renamed-without-override").await,
        Code::FailedPrecondition,
        &["TLS", "not valid for name"],
    );
    d.pull("virtlet.cloud/insecure").await.unwrap();
    d.pull("virtlet.cloud/mtls").await.unwrap();
    for name in ["virtlet.cloud/mtls-none", "virtlet.cloud/mtls-wrong"] {
        let err = d.pull(name).await.unwrap_err();
        assert!(
            matches!(err.code(), Code::FailedPrecondition | Code::Unavailable),
            "{name}: {:?} {}",
            err.code(),
            err.message()
        );
        assert!(err.message().contains(name), "{}", err.message());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redirect_limits_and_proxy_from_transport() {
    let d = Daemon::start().await;
    let server = TestServer::http().await.unwrap();
    server.route("/img", Route::Content(Bytes::from(raw_image(4096, 5))));
    server.route("/r1", Route::Redirect("/img".into()));
    server.route("/r2", Route::Redirect("/r1".into()));
    server.route("/r3", Route::Redirect("/r2".into()));
    let proxy = TestServer::http().await.unwrap();
    proxy.route(
        "/via-proxy.img",
        Route::Content(Bytes::from(raw_image(4096, 6))),
    );
    d.write_translation(
        "r.yaml",
        &format!(
            "translations:\n  - name: two\n    url: {}\n    transport: t\n  - name: three\n    url: {}\n    transport: t\n  - name: proxied\n    url: http://images.invalid/via-proxy.img\n    transport: p\ntransports:\n  t:\n    maxRedirects: 2\n  p:\n    proxy: {}\n",
            server.url("/r2"),
            server.url("/r3"),
            proxy.url(""),
        ),
    );
    d.pull("virtlet.cloud/two").await.unwrap();
    assert_status(
        d.pull("virtlet.cloud/three").await,
        Code::Unavailable,
        &["redirected more than 2 times"],
    );
    d.pull("virtlet.cloud/proxied").await.unwrap();
    assert_eq!(proxy.hits("/via-proxy.img"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_download_once() {
    let d = Daemon::start().await;
    let server = TestServer::http().await.unwrap();
    let body = Bytes::from(raw_image(256 << 10, 8));
    server.route(
        "/slow.img",
        Route::Slow {
            body: body.clone(),
            chunk: 32 << 10,
            every: Duration::from_millis(60),
        },
    );
    let name = format!("virtlet.cloud/{}", server.location("/slow.img"));
    let tagged = format!("{name}:tag");
    let (a, b, c) = tokio::join!(d.pull(&name), d.pull(&name), d.pull(&tagged));
    let a = a.unwrap();
    assert_eq!(a, b.unwrap());
    assert_eq!(a, c.unwrap());
    assert_eq!(
        server.hits("/slow.img"),
        1,
        "one download for concurrent pulls"
    );
    // A later pull downloads again (the content behind a URL may change).
    d.pull(&name).await.unwrap();
    assert_eq!(server.hits("/slow.img"), 2);
}

/// A full disk fails the pull with ResourceExhausted and leaves no partial file. Needs root
/// (it mounts a 2 MiB tmpfs); CI runs as root.
#[tokio::test(flavor = "multi_thread")]
async fn disk_full_is_resource_exhausted_and_leaves_nothing() {
    let mnt = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(mnt.path())
        .status();
    assert!(
        matches!(mounted, Ok(s) if s.success()),
        "this test needs root to mount a small tmpfs (run the suite as root, as CI does)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path().to_owned());
    let d = Daemon::start_with(Options {
        image_dir: Some(mnt.path().join("images")),
        ..Options::default()
    })
    .await;
    let server = TestServer::http().await.unwrap();
    server.route(
        "/small.img",
        Route::Content(Bytes::from(raw_image(64 << 10, 1))),
    );
    server.route(
        "/big.img",
        Route::Content(Bytes::from(raw_image(8 << 20, 2))),
    );
    d.pull(&format!("virtlet.cloud/{}", server.location("/small.img")))
        .await
        .unwrap();
    let before = d.snapshot().await;
    assert_status(
        d.pull(&format!("virtlet.cloud/{}", server.location("/big.img")))
            .await,
        Code::ResourceExhausted,
        &["no space left", "big.img"],
    );
    assert_eq!(d.snapshot().await, before);
    assert_eq!(
        std::fs::read_dir(mnt.path().join("images/tmp"))
            .unwrap()
            .count(),
        0
    );
}
