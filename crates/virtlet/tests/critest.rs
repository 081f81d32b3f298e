//! critest (cri-tools' CRI validation suite, from `../shared/tools`) against the daemon with
//! real VMs, on the groups that apply to VM pods. critest pulls container image names; image
//! translation configs map each to a copy of the project's tiny-container VM image (a web
//! server on port 80 by default, the container's command otherwise), each copy with its own
//! content where critest expects distinct images. The result of every spec must match
//! `tests/conformance/critest.tsv`, which also says why a spec does not pass.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::cni::TestNet;
use common::critest;
use common::vm::{repo_root, require_libvirtd, tiny_image, variant};
use common::{Daemon, Options};
use virtlet_testkit::{Route, TestServer};

/// The critest groups run here (a regular expression on the specs' full names).
const FOCUS: &str = r"\[k8s\.io\] (Runtime info|PodSandbox runtime should support|Container runtime should support (basic operations|log)|Image Manager|Image Consistency|Image Identifier Consistency|Idempotence|Streaming|Networking|Multiple Containers)";

const GCR: &str = "gcr.io/k8s-staging-cri-tools";

/// critest's image names (repositories) and the copy of the test image each maps to. Names
/// critest needs to be different images get different copies.
fn image_map() -> Vec<(String, &'static str)> {
    let mut m: Vec<(String, &'static str)> = vec![
        ("registry.k8s.io/e2e-test-images/busybox".into(), "busybox"),
        ("registry.k8s.io/e2e-test-images/nginx".into(), "web"),
        ("registry.k8s.io/e2e-test-images/httpd".into(), "web"),
        (format!("{GCR}/hostnet-nginx-amd64"), "hostnet"),
        (format!("{GCR}/test-image-latest"), "latest"),
        (format!("{GCR}/test-image-tag"), "tag"),
        (format!("{GCR}/test-image-digest"), "digest"),
        (format!("{GCR}/test-image-1"), "one"),
        (format!("{GCR}/test-image-2"), "two"),
        (format!("{GCR}/test-image-3"), "three"),
        (format!("{GCR}/test-image-tags"), "tags"),
        ("registry.k8s.io/pause".into(), "pause"),
        ("k8s.gcr.io/pause".into(), "pause"),
    ];
    for u in ["uid", "username", "uid-group", "username-group"] {
        m.push((format!("{GCR}/test-image-user-{u}"), "user"));
    }
    m
}

struct Expected {
    result: String,
    reason: String,
}

fn expectations() -> BTreeMap<String, Expected> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/critest.tsv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut f = line.split('\t');
        let (Some(result), Some(spec)) = (f.next(), f.next()) else {
            panic!("{}: bad line {line:?}", path.display())
        };
        let reason = f.next().unwrap_or("").to_owned();
        assert!(
            matches!(result, "pass" | "fail" | "skip"),
            "{}: result {result:?} in {line:?}",
            path.display()
        );
        assert!(
            result == "pass" || !reason.is_empty(),
            "{}: a spec that does not pass needs its reason: {line:?}",
            path.display()
        );
        out.insert(
            spec.to_owned(),
            Expected {
                result: result.to_owned(),
                reason,
            },
        );
    }
    out
}

/// The conformance page lists every spec with the same result and reason.
#[test]
fn conformance_page_matches_the_list() {
    let page = std::fs::read_to_string(repo_root().join("docs/conformance.md")).unwrap();
    for (spec, e) in expectations() {
        let row = format!(
            "| {} | {} | {} |",
            spec.replace('|', "\\|"),
            e.result,
            e.reason
        );
        assert!(
            page.contains(&row),
            "docs/conformance.md lacks the row:\n{row}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn critest_groups_for_vm_pods() {
    require_libvirtd();
    let tiny = tiny_image();
    let base = tiny.with_file_name("tiny-container.qcow2");
    assert!(
        base.exists(),
        "{} is missing: images/build tiny makes it next to tiny.qcow2",
        base.display()
    );
    let net = TestNet::new(43);
    let d = Daemon::start_with(Options {
        libvirt_uri: "qemu:///system",
        cni_conflist: Some(net.conflist(200, true, &[])),
        ..Options::default()
    })
    .await;

    // The test images, served over HTTP, and the translations of critest's names.
    let work = d.dir.path().join("critest");
    std::fs::create_dir_all(&work).unwrap();
    let server = TestServer::http().await.unwrap();
    let mut made: BTreeMap<&str, ()> = BTreeMap::new();
    let mut yaml = String::from("translations:\n");
    for (i, (name, copy)) in image_map().into_iter().enumerate() {
        if made.insert(copy, ()).is_none() {
            let file = variant(&base, &work, copy, u8::try_from(i + 1).unwrap());
            server.route(
                &format!("/{copy}.qcow2"),
                Route::Content(std::fs::read(&file).unwrap().into()),
            );
        }
        yaml.push_str(&format!(
            "  - name: {name}\n    url: {}\n",
            server.url(&format!("/{copy}.qcow2"))
        ));
    }
    d.write_translation("critest.yaml", &yaml);

    // critest itself.
    let endpoint = format!("unix://{}", d.socket.display());
    let (specs, log) = critest::run(&endpoint, &work, FOCUS, &[]);
    eprintln!(
        "critest's output: {}",
        work.join("critest-output.log").display()
    );

    // Compare every spec with the list.
    let expected = expectations();
    let mut problems = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (name, got) in &specs {
        *counts.entry(got.result.to_owned()).or_default() += 1;
        match expected.get(name) {
            None => problems.push(format!(
                "{name}: {}, and not in critest.tsv (add it with its result)",
                got.result
            )),
            Some(e) if e.result != got.result => problems.push(format!(
                "{name}: expected {}, got {}{}",
                e.result,
                got.result,
                if got.failure.is_empty() {
                    String::new()
                } else {
                    format!(
                        ":\n    {}",
                        got.failure
                            .lines()
                            .take(6)
                            .collect::<Vec<_>>()
                            .join("\n    ")
                    )
                }
            )),
            Some(_) => {}
        }
    }
    for name in expected.keys() {
        if !specs.contains_key(name) {
            problems.push(format!("{name}: in critest.tsv but critest did not run it"));
        }
    }
    eprintln!("critest: {counts:?}");
    assert!(
        problems.is_empty(),
        "critest differs from tests/conformance/critest.tsv:\n{}\n\ncritest's output (end):\n{}",
        problems.join("\n"),
        critest::tail(&log, 60)
    );
}
