//! rpm-ostree: is the RHCOS extension in the booted deployment?
//!
//! The MachineConfig installs the extension into a *new* deployment, which
//! only becomes real after a reboot. So "packages in a staged deployment
//! only" is a WARN `RebootPending`, and the runtime is not ready until the
//! node has booted into it.
//!
//! Image-mode nodes (on-cluster layering) carry the package in the base image
//! instead: rpm-ostree lists no layered package for it. So before saying
//! `ExtensionNotInstalled` the probe asks the host's package database, as the
//! MCO does, with `rpm -q <package>` run like `rpm-ostree status` (under
//! `chroot` when the host root is not `/`, with the command budget); found
//! there, it is OK `ExtensionInBaseImage`. Tests give a fake root a fake
//! `/usr/bin/rpm` script (`FakeHost::rpm_database`), as they give it a fake
//! QEMU: the probe runs the same command either way, whatever the
//! [`StatusSource`].

use serde::Deserialize;

use super::host::{HostRoot, display, first_line};
use super::{Budgets, ProbeName, ProbeOutcome, blocking_within, reason};
use crate::error::AgentError;

/// systemd and rpm-ostree create it on every ostree-booted system.
pub const OSTREE_BOOTED: &str = "/run/ostree-booted";
pub const RPM_OSTREE: &str = "/usr/bin/rpm-ostree";
/// The host's package database, for packages in the base image.
pub const RPM: &str = "/usr/bin/rpm";
/// `rpm -q` prints one NEVRA line per installed instance; what is read of it.
const RPM_ANSWER_LIMIT: usize = 64 * 1024;
/// A status with a dozen deployments and their package lists is well under this.
const STATUS_LIMIT: u64 = 16 * 1024 * 1024;

const NAME: ProbeName = ProbeName::RpmOstree;

/// Where the `rpm-ostree status --json` document comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StatusSource {
    /// Run `rpm-ostree status --json` on the host (under `chroot` when the
    /// host root is not `/`).
    #[default]
    Command,
    /// Read a file, a host path under the host root: what a simulator wrote.
    File(String),
}

#[derive(Debug, Deserialize)]
struct Status {
    deployments: Vec<Deployment>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Deployment {
    booted: bool,
    staged: bool,
    /// Package names layered on the base image.
    packages: Option<Vec<String>>,
    #[serde(rename = "requested-packages")]
    requested_packages: Option<Vec<String>>,
    /// Local RPMs, as NEVRA strings (`kata-containers-3.2.0-1.el9.x86_64`).
    #[serde(rename = "requested-local-packages")]
    requested_local_packages: Option<Vec<String>>,
}

impl Deployment {
    fn has_package(&self, name: &str) -> bool {
        [
            &self.packages,
            &self.requested_packages,
            &self.requested_local_packages,
        ]
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| entry == name || nevra_name(entry) == Some(name))
    }

    fn missing<'a>(&self, wanted: &'a [String]) -> Vec<&'a str> {
        wanted
            .iter()
            .map(String::as_str)
            .filter(|name| !self.has_package(name))
            .collect()
    }
}

/// The name part of `name-[epoch:]version-release.arch`, or `None` when the
/// string is not shaped like a NEVRA. The version must start with a digit so
/// that `kata-containers-debuginfo` is not read as `kata` version `containers`.
pub fn nevra_name(nevra: &str) -> Option<&str> {
    let mut parts = nevra.rsplitn(3, '-');
    let _release = parts.next()?;
    let version = parts.next()?;
    let name = parts.next()?;
    let version = version.split_once(':').map_or(version, |(_, v)| v);
    let starts_with_digit = version.chars().next().is_some_and(|c| c.is_ascii_digit());
    (starts_with_digit && !name.is_empty()).then_some(name)
}

/// Judges a `rpm-ostree status --json` document. Pure; never panics.
pub fn evaluate_status(json: &[u8], packages: &[String]) -> ProbeOutcome {
    let status: Status = match serde_json::from_slice(json) {
        Ok(status) => status,
        Err(err) => {
            return ProbeOutcome::fail(
                NAME,
                reason::RPM_OSTREE_STATUS_UNPARSEABLE,
                format!("rpm-ostree status --json: {err}"),
            );
        }
    };
    let Some(booted_at) = status.deployments.iter().position(|d| d.booted) else {
        return ProbeOutcome::fail(
            NAME,
            reason::NO_BOOTED_DEPLOYMENT,
            "rpm-ostree status lists no booted deployment",
        );
    };
    let booted = &status.deployments[booted_at];
    // rpm-ostree lists the deployment for the next boot first: a staged one,
    // or an unstaged pending one placed ahead of the booted deployment.
    let pending = status
        .deployments
        .iter()
        .find(|d| d.staged && !d.booted)
        .or_else(|| status.deployments[..booted_at].first());
    let wanted = packages.join(", ");
    let missing_now = booted.missing(packages);
    let missing_next = pending.map(|d| d.missing(packages));
    match (missing_now.is_empty(), missing_next) {
        (true, Some(next)) if !next.is_empty() => ProbeOutcome::warn(
            NAME,
            reason::EXTENSION_REMOVAL_PENDING,
            format!(
                "{wanted} booted, but the pending deployment drops {}",
                next.join(", ")
            ),
        ),
        (true, _) => ProbeOutcome::ok(
            NAME,
            reason::EXTENSION_BOOTED,
            format!("booted deployment has {wanted}"),
        ),
        (false, Some(next)) if next.is_empty() => ProbeOutcome::warn(
            NAME,
            reason::REBOOT_PENDING,
            format!("{wanted} installed in the pending deployment; reboot the node to use it"),
        ),
        (false, _) => ProbeOutcome::fail(
            NAME,
            reason::EXTENSION_NOT_INSTALLED,
            format!(
                "{} in neither the booted nor a pending deployment",
                missing_now.join(", ")
            ),
        ),
    }
}

pub async fn probe(
    root: &HostRoot,
    source: &StatusSource,
    packages: &[String],
    budgets: &Budgets,
) -> ProbeOutcome {
    let read_root = root.clone();
    let read_source = source.clone();
    // `None`: an ostree host whose status must come from the command.
    let from_disk =
        blocking_within(NAME, budgets.filesystem, move || {
            if !read_root.exists(OSTREE_BOOTED) {
                return Err(ProbeOutcome::skip(
                    NAME,
                    reason::NOT_OSTREE_HOST,
                    format!(
                        "{} is absent: not an rpm-ostree system",
                        display(OSTREE_BOOTED)
                    ),
                ));
            }
            match &read_source {
                StatusSource::Command => Ok(None),
                StatusSource::File(path) => read_root
                    .read_file(path, STATUS_LIMIT)
                    .map(Some)
                    .map_err(|err| {
                        ProbeOutcome::fail(
                            NAME,
                            reason::RPM_OSTREE_STATUS_UNAVAILABLE,
                            err.to_string(),
                        )
                    }),
            }
        })
        .await;
    let json = match from_disk {
        Ok(Some(json)) => json,
        Ok(None) => match root
            .run(RPM_OSTREE, &["status", "--json"], budgets.command)
            .await
        {
            Ok(json) => json,
            Err(AgentError::CommandTimedOut { .. }) => {
                return ProbeOutcome::timed_out(NAME, budgets.command);
            }
            Err(err) => {
                return ProbeOutcome::fail(
                    NAME,
                    reason::RPM_OSTREE_STATUS_UNAVAILABLE,
                    err.to_string(),
                );
            }
        },
        Err(outcome) => return outcome,
    };
    let outcome = evaluate_status(&json, packages);
    if outcome.reason != reason::EXTENSION_NOT_INSTALLED {
        return outcome;
    }
    base_image(root, packages, budgets, outcome).await
}

/// Asks `rpm -q` for each package: all of them there means the extension is
/// in the booted base image; otherwise `not_installed` stands, saying why.
async fn base_image(
    root: &HostRoot,
    packages: &[String],
    budgets: &Budgets,
    not_installed: ProbeOutcome,
) -> ProbeOutcome {
    let lookup_root = root.clone();
    let has_rpm = blocking_within(NAME, budgets.filesystem, move || {
        Ok(lookup_root.is_executable(RPM))
    })
    .await;
    match has_rpm {
        Ok(true) => {}
        Ok(false) => {
            return with_detail(
                not_installed,
                &format!(
                    "{} is not an executable file, so the base image was not asked",
                    display(RPM)
                ),
            );
        }
        Err(outcome) => return outcome,
    }
    let mut answers = Vec::with_capacity(packages.len());
    for package in packages {
        // The names come from the coordinator: never let one be an option.
        if !is_package_name(package) {
            let shown: String = package.chars().take(200).collect();
            return with_detail(
                not_installed,
                &format!("{shown:?} is not a package name, so rpm was not asked"),
            );
        }
        let answer = root.run(RPM, &["-q", package], budgets.command).await;
        answers.push((package.as_str(), answer));
    }
    evaluate_rpm_answers(&answers, not_installed, budgets)
}

/// Judges the `rpm -q <package>` answers (stdout, or how the command failed;
/// rpm exits 1 for a package that is not installed). Pure; never panics, and
/// reads at most [`RPM_ANSWER_LIMIT`] bytes of each answer.
pub fn evaluate_rpm_answers(
    answers: &[(&str, Result<Vec<u8>, AgentError>)],
    not_installed: ProbeOutcome,
    budgets: &Budgets,
) -> ProbeOutcome {
    let mut found = Vec::new();
    for (package, answer) in answers {
        let stdout = match answer {
            Ok(stdout) => stdout,
            Err(AgentError::CommandTimedOut { .. }) => {
                return ProbeOutcome::timed_out(NAME, budgets.command);
            }
            Err(err) => {
                return with_detail(
                    not_installed,
                    &format!("not in the base image either: {err}"),
                );
            }
        };
        let text = String::from_utf8_lossy(&stdout[..stdout.len().min(RPM_ANSWER_LIMIT)]);
        let Some(nevra) = text
            .lines()
            .map(str::trim)
            .find(|line| *line == *package || nevra_name(line) == Some(package))
        else {
            let shown: String = first_line(&text).chars().take(200).collect();
            return with_detail(
                not_installed,
                &format!("rpm -q {package} answered {shown:?}"),
            );
        };
        found.push(nevra.chars().take(200).collect::<String>());
    }
    ProbeOutcome::ok(
        NAME,
        reason::EXTENSION_IN_BASE_IMAGE,
        format!(
            "not layered, but in the booted base image: rpm -q finds {}",
            found.join(", ")
        ),
    )
}

/// An RPM package name: letters, digits and `._+-`, not starting with `-`.
fn is_package_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
}

fn with_detail(outcome: ProbeOutcome, detail: &str) -> ProbeOutcome {
    ProbeOutcome {
        message: format!("{}; {detail}", outcome.message),
        ..outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProbeStatus;

    fn kata() -> Vec<String> {
        vec!["kata-containers".to_owned()]
    }

    fn judge(json: &str) -> (ProbeStatus, &'static str) {
        let outcome = evaluate_status(json.as_bytes(), &kata());
        (outcome.status, outcome.reason)
    }

    #[test]
    fn nevra_names_are_split_from_the_right() {
        assert_eq!(
            nevra_name("kata-containers-3.2.0-1.el9.x86_64"),
            Some("kata-containers")
        );
        assert_eq!(
            nevra_name("kata-containers-1:3.2.0-1.x86_64"),
            Some("kata-containers")
        );
        assert_eq!(
            nevra_name("kata-containers-debuginfo-3.2.0-1.x86_64"),
            Some("kata-containers-debuginfo")
        );
        assert_eq!(nevra_name("kata-containers"), None);
        assert_eq!(nevra_name("foo-bar-baz"), None);
    }

    #[test]
    fn booted_staged_and_absent_packages() {
        assert_eq!(
            judge(r#"{"deployments":[{"booted":true,"packages":["kata-containers"]}]}"#),
            (ProbeStatus::Ok, "ExtensionBooted")
        );
        assert_eq!(
            judge(
                r#"{"deployments":[{"booted":true,"requested-local-packages":["kata-containers-3.2.0-1.el9.x86_64"]}]}"#
            ),
            (ProbeStatus::Ok, "ExtensionBooted")
        );
        assert_eq!(
            judge(
                r#"{"deployments":[{"staged":true,"packages":["kata-containers"]},{"booted":true,"packages":[]}]}"#
            ),
            (ProbeStatus::Warn, "RebootPending")
        );
        assert_eq!(
            judge(
                r#"{"deployments":[{"booted":true,"packages":["kata-containers-debuginfo"]},{"packages":["kata-containers"]}]}"#
            ),
            (ProbeStatus::Fail, "ExtensionNotInstalled"),
            "a rollback deployment after the booted one is not pending"
        );
        assert_eq!(
            judge(
                r#"{"deployments":[{"staged":true},{"booted":true,"packages":["kata-containers"]}]}"#
            ),
            (ProbeStatus::Warn, "ExtensionRemovalPending")
        );
    }

    #[test]
    fn malformed_documents_fail_with_a_reason() {
        assert_eq!(judge(""), (ProbeStatus::Fail, "RpmOstreeStatusUnparseable"));
        assert_eq!(
            judge(r#"{"deployments":[{"booted":true,"packages":5}]}"#),
            (ProbeStatus::Fail, "RpmOstreeStatusUnparseable")
        );
        assert_eq!(
            judge(r#"{"deployments":[]}"#),
            (ProbeStatus::Fail, "NoBootedDeployment")
        );
    }

    mod base_image {
        use super::*;
        use crate::fixtures::{FakeHost, SIMULATED_STATUS_FILE};

        async fn run(host: &FakeHost) -> ProbeOutcome {
            probe(
                &host.host_root(),
                &StatusSource::File(SIMULATED_STATUS_FILE.to_owned()),
                &kata(),
                &Budgets::default(),
            )
            .await
        }

        fn expect(outcome: &ProbeOutcome, status: ProbeStatus, reason: &str) {
            assert_eq!(
                (outcome.status, outcome.reason),
                (status, reason),
                "{}",
                outcome.message
            );
        }

        #[tokio::test]
        async fn layered_and_base_image_shapes() {
            // Layered: rpm-ostree's lists decide; rpm is not asked.
            let layered = FakeHost::good().rpm_database(&[]);
            expect(&run(&layered).await, ProbeStatus::Ok, "ExtensionBooted");
            // Image mode: no layered package, the base image has it.
            let outcome = run(&FakeHost::good().image_mode_extension()).await;
            expect(&outcome, ProbeStatus::Ok, "ExtensionInBaseImage");
            assert!(
                outcome.message.contains("base image")
                    && outcome.message.contains("kata-containers-"),
                "{}",
                outcome.message
            );
        }

        #[tokio::test]
        async fn absent_from_both_is_not_installed() {
            let outcome = run(&FakeHost::good().without_extension()).await;
            expect(&outcome, ProbeStatus::Fail, "ExtensionNotInstalled");
            assert!(
                outcome
                    .message
                    .contains("/usr/bin/rpm is not an executable file"),
                "{}",
                outcome.message
            );
            let outcome = run(&FakeHost::good()
                .without_extension()
                .rpm_database(&["podman"]))
            .await;
            expect(&outcome, ProbeStatus::Fail, "ExtensionNotInstalled");
            assert!(outcome.message.contains("rpm -q"), "{}", outcome.message);
            let options = probe(
                &FakeHost::good()
                    .without_extension()
                    .rpm_database(&["kata-containers"])
                    .host_root(),
                &StatusSource::File(SIMULATED_STATUS_FILE.to_owned()),
                &["--eval=%(id)".to_owned()],
                &Budgets::default(),
            )
            .await;
            expect(&options, ProbeStatus::Fail, "ExtensionNotInstalled");
            assert!(
                options.message.contains("not a package name"),
                "{}",
                options.message
            );
            // A staged install is still a pending reboot, whatever rpm says.
            let staged = FakeHost::good().staged_only_extension().rpm_database(&[]);
            expect(&run(&staged).await, ProbeStatus::Warn, "RebootPending");
        }

        #[test]
        fn rpm_answers_are_judged_by_name() {
            let budgets = Budgets::default();
            let not_installed = || ProbeOutcome::fail(NAME, reason::EXTENSION_NOT_INSTALLED, "x");
            let judge = |stdout: &[u8]| {
                let answers = [("kata-containers", Ok(stdout.to_vec()))];
                evaluate_rpm_answers(&answers, not_installed(), &budgets).reason
            };
            assert_eq!(
                judge(b"kata-containers-3.17.0-1.el9.x86_64\n"),
                "ExtensionInBaseImage"
            );
            assert_eq!(
                judge(b"kata-containers-debuginfo-3.17.0-1.x86_64\n"),
                "ExtensionNotInstalled"
            );
            assert_eq!(judge(b""), "ExtensionNotInstalled");
            assert_eq!(judge(&[0xff; 100_000]), "ExtensionNotInstalled");
            let timed_out = [(
                "kata-containers",
                Err(AgentError::CommandTimedOut {
                    command: "rpm -q kata-containers".to_owned(),
                    seconds: 10.0,
                }),
            )];
            assert_eq!(
                evaluate_rpm_answers(&timed_out, not_installed(), &budgets).reason,
                "ProbeTimedOut"
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::json;

        fn package() -> impl Strategy<Value = &'static str> {
            prop_oneof![
                Just("kata-containers"),
                Just("kata-containers-3.2.0-1.el9.x86_64"),
                Just("kata-containers-debuginfo"),
                Just("kata-containers-debuginfo-3.2.0-1.x86_64"),
                Just("podman"),
            ]
        }

        fn deployment() -> impl Strategy<Value = (bool, bool, Vec<&'static str>, u8)> {
            (
                any::<bool>(),
                any::<bool>(),
                prop::collection::vec(package(), 0..3),
                0..3u8,
            )
        }

        fn has_kata(packages: &[&str]) -> bool {
            packages
                .iter()
                .any(|p| *p == "kata-containers" || p.starts_with("kata-containers-3"))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let outcome = evaluate_status(&bytes, &kata());
                prop_assert!(!outcome.reason.is_empty());
            }

            #[test]
            fn structured_status_is_judged_consistently(deployments in prop::collection::vec(deployment(), 0..4)) {
                let document = json!({
                    "deployments": deployments.iter().map(|(booted, staged, packages, field)| {
                        let key = ["packages", "requested-packages", "requested-local-packages"][usize::from(*field)];
                        json!({ "booted": booted, "staged": staged, key: packages })
                    }).collect::<Vec<_>>()
                });
                let outcome = evaluate_status(document.to_string().as_bytes(), &kata());
                let booted = deployments.iter().find(|d| d.0);
                match (outcome.status, outcome.reason) {
                    (ProbeStatus::Ok, _) | (ProbeStatus::Warn, "ExtensionRemovalPending") => {
                        prop_assert!(booted.is_some_and(|d| has_kata(&d.2)), "{:?}", deployments);
                    }
                    (ProbeStatus::Warn, "RebootPending") => {
                        prop_assert!(booted.is_some_and(|d| !has_kata(&d.2)));
                        prop_assert!(deployments.iter().any(|d| !d.0 && has_kata(&d.2)));
                    }
                    (ProbeStatus::Fail, "ExtensionNotInstalled") => {
                        prop_assert!(booted.is_some_and(|d| !has_kata(&d.2)));
                    }
                    (ProbeStatus::Fail, "NoBootedDeployment") => prop_assert!(booted.is_none()),
                    other => prop_assert!(false, "unexpected {:?} for {}", other, document),
                }
            }
        }
    }
}
