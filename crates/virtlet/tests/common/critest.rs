//! Runs critest (from `../shared/tools`) and reads its JSON report: one result per spec.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::tools::tool;

/// A spec's result: `pass`, `fail` or `skip`, and the failure's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub result: &'static str,
    pub failure: String,
}

/// critest on `endpoint` (runtime and image service) with the specs `focus` matches, run in
/// `work`; `extra` goes on its command line. Returns every spec run (`<containers> :: <it>`)
/// and critest's output, which is also kept in `work/critest-output.log`.
pub fn run(
    endpoint: &str,
    work: &Path,
    focus: &str,
    extra: &[&str],
) -> (BTreeMap<String, Outcome>, String) {
    std::fs::create_dir_all(work).unwrap();
    let config = work.join("crictl.yaml");
    std::fs::write(&config, "").unwrap();
    let report = work.join("report.json");
    let _ = std::fs::remove_file(&report);
    let out = Command::new(tool("critest"))
        .current_dir(work)
        .arg("-config")
        .arg(&config)
        .args(["-runtime-endpoint", endpoint, "-image-endpoint", endpoint])
        .args(["-ginkgo.no-color", "-ginkgo.timeout", "40m"])
        .arg("-ginkgo.json-report")
        .arg(&report)
        .args(["-ginkgo.focus", focus])
        .args(extra)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::write(work.join("critest-output.log"), &log);
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&report)
            .unwrap_or_else(|e| panic!("critest wrote no report ({e}); it said:\n{log}")),
    )
    .unwrap();
    let mut specs = BTreeMap::new();
    for s in report[0]["SpecReports"].as_array().unwrap() {
        if s["LeafNodeType"] != "It" {
            continue;
        }
        let state = s["State"].as_str().unwrap_or("");
        if state == "skipped" && s["Failure"].is_null() {
            continue; // not focused
        }
        let path: Vec<&str> = s["ContainerHierarchyTexts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let name = format!(
            "{} :: {}",
            path.join(" | "),
            s["LeafNodeText"].as_str().unwrap()
        );
        let result = match state {
            "passed" => "pass",
            "skipped" => "skip",
            _ => "fail",
        };
        let failure = s["Failure"]["Message"].as_str().unwrap_or("").to_owned();
        specs.insert(name, Outcome { result, failure });
    }
    (specs, log)
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
