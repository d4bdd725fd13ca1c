//! The Containerfiles cannot be built here (no container engine), so what can
//! be checked without building is checked: they build the workspace's real
//! packages and binaries, cache dependencies in a layer of their own, copy
//! only paths that exist, run the binaries the Deployment and DaemonSet
//! expect, and the coordinator runs as a numeric non-root user. The
//! must-gather image puts the gather script where `oc adm must-gather` runs
//! it, on a base with `oc` and the tools oc needs in the pod.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::path::{Path, PathBuf};

use kata_tests::manifests::deploy_dir;
use serde::Deserialize;
use serde_yaml::Value;

fn repo_root() -> PathBuf {
    deploy_dir().join("..")
}

/// One instruction: keyword (upper case) and the rest, continuation lines
/// joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    rest: String,
}

fn parse(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            rest: rest.trim().to_owned(),
        });
        current.clear();
    }
    assert!(current.is_empty(), "a dangling line continuation");
    out
}

/// The instructions split into stages at each FROM.
fn stages(instructions: &[Instruction]) -> Vec<&[Instruction]> {
    let starts: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.keyword == "FROM")
        .map(|(n, _)| n)
        .collect();
    assert!(!starts.is_empty(), "no FROM");
    assert_eq!(
        starts[0],
        count_leading_args(instructions),
        "only ARGs before the first FROM"
    );
    starts
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            let end = starts.get(k + 1).copied().unwrap_or(instructions.len());
            &instructions[start..end]
        })
        .collect()
}

fn count_leading_args(instructions: &[Instruction]) -> usize {
    instructions
        .iter()
        .take_while(|i| i.keyword == "ARG")
        .count()
}

fn toml_value(manifest: &str, section: &str, key: &str) -> Vec<String> {
    // The few values needed from Cargo.toml: `key = "value"` lines inside
    // `[section]` or `[[section]]` tables.
    let mut out = Vec::new();
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line.trim_matches(['[', ']']) == section;
            continue;
        }
        if inside
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            out.push(v.trim().trim_matches('"').to_owned());
        }
    }
    out
}

struct Image {
    crate_dir: &'static str,
    containerfile: &'static str,
    /// deploy/base file and kind of the workload that runs the image.
    workload: (&'static str, &'static str),
}

const COORDINATOR: Image = Image {
    crate_dir: "coordinator",
    containerfile: "Containerfile.coordinator",
    workload: ("base/coordinator.yaml", "Deployment"),
};
const NODE_AGENT: Image = Image {
    crate_dir: "node-agent",
    containerfile: "Containerfile.node-agent",
    workload: ("base/node-agent.yaml", "DaemonSet"),
};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn workload_container(image: &Image) -> Value {
    let (file, kind) = image.workload;
    let text = read(&deploy_dir().join(file));
    let doc = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .find(|d| d["kind"] == kind)
        .unwrap();
    let containers = doc["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap();
    assert_eq!(containers.len(), 1);
    containers[0].clone()
}

/// A COPY's flags (`--chmod=...`), sources and destination.
fn copy_parts(rest: &str) -> (Vec<&str>, Vec<&str>, &str) {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let flags = words.iter().take_while(|w| w.starts_with("--")).count();
    let (dest, sources) = words[flags..]
        .split_last()
        .expect("COPY names a destination");
    (words[..flags].to_vec(), sources.to_vec(), dest)
}

/// Every COPY from the build context names a path that exists (the context
/// is the repository root).
fn assert_copies_exist(containerfile: &str, stages: &[&[Instruction]]) {
    for stage in stages {
        for i in stage.iter().filter(|i| i.keyword == "COPY") {
            let (flags, sources, _) = copy_parts(&i.rest);
            if flags.iter().any(|f| f.starts_with("--from=")) {
                continue;
            }
            for source in sources {
                assert!(
                    repo_root().join(source).exists(),
                    "{containerfile}: COPY {source}: no such path in the repository",
                );
            }
        }
    }
}

fn exec_form(rest: &str) -> Vec<String> {
    serde_json::from_str(rest).unwrap_or_else(|e| panic!("{rest} is not exec (JSON) form: {e}"))
}

fn check_image(image: &Image) {
    let path = deploy_dir().join(image.containerfile);
    let text = read(&path);
    let instructions = parse(&text);
    let stages = stages(&instructions);
    assert!(stages.len() >= 2, "{}: multi-stage", image.containerfile);

    let manifest = read(&repo_root().join(image.crate_dir).join("Cargo.toml"));
    let package = toml_value(&manifest, "package", "name");
    assert_eq!(package.len(), 1);
    let package = &package[0];
    let bins = toml_value(&manifest, "bin", "name");
    assert_eq!(bins.len(), 1, "{}: one binary", image.crate_dir);
    let bin = &bins[0];

    // The builder builds the package, locked and optimised, twice: first on
    // stand-in sources (the dependency layer), then on the copied sources.
    let builder = stages[0];
    let build = format!("cargo build --release --locked -p {package}");
    let runs: Vec<(usize, &Instruction)> = builder
        .iter()
        .enumerate()
        .filter(|(_, i)| i.keyword == "RUN" && i.rest.contains(&build))
        .collect();
    assert_eq!(
        runs.len(),
        2,
        "{}: `{build}` for deps, then for the crate",
        image.containerfile
    );
    let copy_src = builder
        .iter()
        .position(|i| {
            i.keyword == "COPY" && i.rest.starts_with(&format!("{}/src ", image.crate_dir))
        })
        .unwrap_or_else(|| panic!("{}: COPY {}/src", image.containerfile, image.crate_dir));
    assert!(
        runs[0].0 < copy_src && copy_src < runs[1].0,
        "{}: the dependency build runs before the sources are copied",
        image.containerfile
    );
    assert!(
        builder[..runs[0].0]
            .iter()
            .any(|i| i.keyword == "COPY" && i.rest.starts_with("Cargo.toml Cargo.lock")),
        "{}: the lockfile is in the dependency layer (for --locked)",
        image.containerfile
    );
    assert!(
        runs[1].1.rest.contains(&format!("target/release/{bin}")),
        "{}: the binary {bin} is taken from target/release",
        image.containerfile
    );

    assert_copies_exist(image.containerfile, &stages);

    // The final stage runs the binary, copied from the builder, as the
    // ENTRYPOINT; the workload's args start with the `run` subcommand.
    let last = stages[stages.len() - 1];
    let entrypoint: Vec<&Instruction> = last.iter().filter(|i| i.keyword == "ENTRYPOINT").collect();
    assert_eq!(
        entrypoint.len(),
        1,
        "{}: one ENTRYPOINT",
        image.containerfile
    );
    let entrypoint = exec_form(&entrypoint[0].rest);
    assert_eq!(
        entrypoint.len(),
        1,
        "{}: ENTRYPOINT is the binary alone",
        image.containerfile
    );
    let binary_path = &entrypoint[0];
    assert_eq!(
        Path::new(binary_path)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap(),
        bin.as_str()
    );
    assert!(
        last.iter().any(|i| i.keyword == "COPY"
            && i.rest.starts_with("--from=builder ")
            && i.rest.ends_with(&format!(" {binary_path}"))),
        "{}: {binary_path} is copied from the builder",
        image.containerfile
    );
    assert!(
        !last.iter().any(|i| i.keyword == "CMD"),
        "{}: no CMD; the workload gives the args",
        image.containerfile
    );
    let container = workload_container(image);
    assert!(
        container["command"].is_null(),
        "the workload keeps the ENTRYPOINT"
    );
    assert_eq!(container["args"][0], "run", "`{bin} run`");
    let image_ref = container["image"].as_str().unwrap();
    assert!(
        image_ref.contains(bin.as_str()),
        "{image_ref} is the {bin} image"
    );

    // The builder's Rust is at least the workspace's rust-version.
    let workspace = read(&repo_root().join("Cargo.toml"));
    let minimum = toml_value(&workspace, "workspace.package", "rust-version");
    let rust_arg = instructions
        .iter()
        .find(|i| i.keyword == "ARG" && i.rest.starts_with("RUST_VERSION="))
        .unwrap_or_else(|| panic!("{}: ARG RUST_VERSION", image.containerfile));
    let version = |v: &str| -> (u32, u32) {
        let mut parts = v.trim_start_matches("RUST_VERSION=").split('.');
        (
            parts.next().unwrap().parse().unwrap(),
            parts.next().unwrap().parse().unwrap(),
        )
    };
    assert!(
        version(&rust_arg.rest) >= version(&minimum[0]),
        "{}: Rust {} < rust-version {}",
        image.containerfile,
        rust_arg.rest,
        minimum[0]
    );
}

fn from_image(stage: &[Instruction]) -> String {
    stage[0].rest.split_whitespace().next().unwrap().to_owned()
}

fn final_user(stage: &[Instruction]) -> Option<String> {
    stage
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .map(|i| i.rest.clone())
}

#[kata_test]
fn coordinator_containerfile_builds_the_coordinator_and_runs_it_as_non_root() {
    check_image(&COORDINATOR);
    let instructions = parse(&read(&deploy_dir().join(COORDINATOR.containerfile)));
    let stages = stages(&instructions);
    let last = stages[stages.len() - 1];
    // Numeric, so the kubelet can verify the Deployment's runAsNonRoot.
    let user = final_user(last).expect("the final stage sets USER");
    let uid = user.split(':').next().unwrap();
    let uid: u32 = uid
        .parse()
        .unwrap_or_else(|_| panic!("USER {user} is numeric"));
    assert_ne!(uid, 0, "the coordinator does not run as root");
    for part in user.split(':') {
        assert!(part.parse::<u32>().is_ok_and(|n| n != 0), "USER {user}");
    }
    let pod = &workload_container(&COORDINATOR);
    let deployment_text = read(&deploy_dir().join(COORDINATOR.workload.0));
    assert!(deployment_text.contains("runAsNonRoot: true"));
    assert_eq!(pod["securityContext"]["readOnlyRootFilesystem"], true);
    // Minimal runtime: distroless, and glibc-compatible with the builder.
    let runtime = from_image(last);
    assert!(
        runtime.starts_with("gcr.io/distroless/cc-debian12"),
        "{runtime}"
    );
    assert!(
        from_image(stages[0]).contains("bookworm"),
        "Debian 12 builder for a Debian 12 runtime"
    );
}

#[kata_test]
fn node_agent_containerfile_builds_the_agent_on_a_base_with_chroot() {
    check_image(&NODE_AGENT);
    let instructions = parse(&read(&deploy_dir().join(NODE_AGENT.containerfile)));
    let stages = stages(&instructions);
    let last = stages[stages.len() - 1];
    // The agent runs host binaries through the `chroot` command, so its
    // runtime image must have one: not distroless, not scratch.
    let host = read(&repo_root().join("node-agent/src/probe/host.rs"));
    assert!(host.contains("Command::new(\"chroot\")"));
    let runtime = from_image(last);
    assert!(
        runtime.starts_with("registry.access.redhat.com/ubi9/ubi-minimal"),
        "{runtime}"
    );
    assert!(
        last.iter()
            .any(|i| i.keyword == "RUN" && i.rest.contains("command -v chroot")),
        "the image build fails if chroot is missing"
    );
    // Built on the same glibc family as the runtime.
    assert!(from_image(stages[0]).starts_with("registry.access.redhat.com/ubi9/"));
    // Privileged DaemonSet, root in the image: say so explicitly.
    assert_eq!(final_user(last).as_deref(), Some("0"));
    assert_eq!(
        workload_container(&NODE_AGENT)["securityContext"]["privileged"],
        true
    );
}

/// `oc adm must-gather --image=...` runs its own `/bin/bash -c` command,
/// which calls `/usr/bin/gather`, and copies the output out of a second
/// container of the image with rsync or tar.
#[kata_test]
fn must_gather_containerfile_installs_gather_where_oc_adm_must_gather_runs_it() {
    let containerfile = "Containerfile.must-gather";
    let instructions = parse(&read(&deploy_dir().join(containerfile)));
    let stages = stages(&instructions);
    assert_eq!(stages.len(), 1, "nothing to build: one stage");
    let stage = stages[0];
    assert_copies_exist(containerfile, &stages);

    // A base with `oc` (and its kubectl link), which the script uses.
    let base = from_image(stage);
    assert!(
        base.starts_with("quay.io/openshift/origin-cli:")
            || base.starts_with("registry.redhat.io/openshift4/ose-cli"),
        "{base}"
    );
    let run = stage
        .iter()
        .find(|i| i.keyword == "RUN")
        .expect("the build checks the base's tools");
    for tool in ["bash", "oc", "sync", "sleep", "rsync", "tar"] {
        assert!(
            run.rest
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|w| w == tool),
            "the build fails without {tool}: {}",
            run.rest
        );
    }

    // The script, executable, at the path oc runs.
    let gather: Vec<(Vec<&str>, Vec<&str>, &str)> = stage
        .iter()
        .filter(|i| i.keyword == "COPY")
        .map(|i| copy_parts(&i.rest))
        .filter(|(_, _, dest)| *dest == "/usr/bin/gather")
        .collect();
    assert_eq!(gather.len(), 1, "one COPY to /usr/bin/gather");
    let (flags, sources, _) = &gather[0];
    assert_eq!(sources, &["deploy/must-gather/gather"]);
    assert!(
        flags.contains(&"--chmod=0755"),
        "executable whatever the checkout's mode: {flags:?}"
    );
    let script = read(&deploy_dir().join("must-gather/gather"));
    assert!(
        script.starts_with("#!/usr/bin/env bash\n") && script.contains("${1:-/must-gather}"),
        "the script writes to /must-gather when oc runs it without arguments"
    );

    // No ENTRYPOINT or CMD: oc sets the containers' commands, as for
    // OpenShift's own must-gather image.
    for keyword in ["ENTRYPOINT", "CMD"] {
        assert!(
            !stage.iter().any(|i| i.keyword == keyword),
            "{containerfile}: no {keyword}"
        );
    }
}

#[kata_test]
fn the_parser_joins_continuations_and_skips_comments() {
    let parsed = parse("ARG A=1\n# c\nFROM x AS b\nRUN a \\\n  && b\n\nFROM y\nUSER 1:2\n");
    let keywords: Vec<&str> = parsed.iter().map(|i| i.keyword.as_str()).collect();
    assert_eq!(keywords, ["ARG", "FROM", "RUN", "FROM", "USER"]);
    assert_eq!(parsed[2].rest, "a  && b");
    assert_eq!(stages(&parsed).len(), 2);
}
