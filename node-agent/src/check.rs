//! `node-agent check`: one cycle, printed for a person (or as JSON), with an
//! exit code a script can branch on.

use serde::Serialize;

use crate::probe::ProbeOutcome;
use crate::verdict::{Verdicts, verdicts};

/// Exit codes of `check`.
pub const EXIT_READY: u8 = 0;
pub const EXIT_CAPABLE_NOT_READY: u8 = 1;
pub const EXIT_NOT_CAPABLE: u8 = 2;
/// A usage error; distinct from the verdict codes above.
pub const EXIT_USAGE: u8 = 64;

/// The outcome of one `check` run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub host_root: String,
    pub outcomes: Vec<ProbeOutcome>,
    pub verdicts: Verdicts,
}

impl CheckReport {
    pub fn new(host_root: impl Into<String>, outcomes: Vec<ProbeOutcome>) -> Self {
        let verdicts = verdicts(&outcomes);
        Self {
            host_root: host_root.into(),
            outcomes,
            verdicts,
        }
    }

    /// 0 when runtime ready, 1 when capable but not ready, 2 when not capable.
    pub fn exit_code(&self) -> u8 {
        match (self.verdicts.kvm_capable, self.verdicts.runtime_ready) {
            (_, true) => EXIT_READY,
            (true, false) => EXIT_CAPABLE_NOT_READY,
            (false, false) => EXIT_NOT_CAPABLE,
        }
    }

    pub fn to_json(&self) -> String {
        // Serializing plain strings, bools and enums cannot fail; fall back to
        // an empty object rather than panic if it ever did.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// An aligned table of the outcomes followed by the verdicts.
    pub fn to_table(&self) -> String {
        let headers = ["PROBE", "STATUS", "REASON", "MESSAGE"];
        let rows: Vec<[&str; 4]> = self
            .outcomes
            .iter()
            .map(|o| {
                [
                    o.name.as_str(),
                    o.status.as_str(),
                    o.reason,
                    o.message.as_str(),
                ]
            })
            .collect();
        let width = |column: usize| {
            rows.iter()
                .map(|row| row[column].len())
                .chain([headers[column].len()])
                .max()
                .unwrap_or(0)
        };
        let widths = [width(0), width(1), width(2)];
        let mut table = String::new();
        for row in std::iter::once(&headers).chain(rows.iter()) {
            let line = format!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            );
            table.push_str(line.trim_end());
            table.push('\n');
        }
        let yes_no = |value: bool| if value { "yes" } else { "no" };
        table.push_str(&format!(
            "\nhost root:     {}\nkvm_capable:   {}\nruntime_ready: {}\n",
            self.host_root,
            yes_no(self.verdicts.kvm_capable),
            yes_no(self.verdicts.runtime_ready)
        ));
        table
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::probe::{ProbeName, ProbeStatus};

    fn report(kvm: ProbeStatus, qemu: ProbeStatus) -> CheckReport {
        let outcomes = ProbeName::ALL
            .into_iter()
            .map(|name| {
                let status = match name {
                    ProbeName::Kvm => kvm,
                    ProbeName::Qemu => qemu,
                    _ => ProbeStatus::Ok,
                };
                ProbeOutcome::new(name, status, "SomeReason", format!("about {name}"))
            })
            .collect();
        CheckReport::new("/", outcomes)
    }

    #[test]
    fn exit_codes_follow_the_verdicts() {
        assert_eq!(
            report(ProbeStatus::Ok, ProbeStatus::Ok).exit_code(),
            EXIT_READY
        );
        assert_eq!(
            report(ProbeStatus::Ok, ProbeStatus::Fail).exit_code(),
            EXIT_CAPABLE_NOT_READY
        );
        assert_eq!(
            report(ProbeStatus::Fail, ProbeStatus::Ok).exit_code(),
            EXIT_NOT_CAPABLE
        );
    }

    #[test]
    fn the_table_is_aligned_and_ends_with_the_verdicts() {
        let table = report(ProbeStatus::Ok, ProbeStatus::Fail).to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("PROBE"));
        let status_column = lines[0].find("STATUS").unwrap();
        let qemu = lines.iter().find(|line| line.starts_with("qemu ")).unwrap();
        assert_eq!(&qemu[status_column..status_column + 4], "FAIL");
        assert!(table.ends_with("kvm_capable:   yes\nruntime_ready: no\n"));
    }

    #[test]
    fn json_has_outcomes_and_verdicts() {
        let json: serde_json::Value =
            serde_json::from_str(&report(ProbeStatus::Ok, ProbeStatus::Ok).to_json()).unwrap();
        assert_eq!(json["outcomes"][0]["name"], "kvm");
        assert_eq!(json["outcomes"][0]["status"], "OK");
        assert_eq!(json["verdicts"]["runtime_ready"], true);
    }
}
