//! The KVM probe's schedule, its errno classes and, where the machine has
//! one, the real `/dev/kvm`.

use std::time::{Duration, Instant};

use super::*;
use crate::fixtures::FakeHost;

fn ok() -> ProbeOutcome {
    ProbeOutcome::ok(NAME, reason::KVM_USABLE, "")
}

#[test]
fn guest_code_runs_first_then_every_nth_cycle_and_after_a_failure() {
    let mut schedule = GuestSchedule::every(3);
    let mut plans = Vec::new();
    for outcome in [ok(), ok(), ok(), ok()] {
        let plan = schedule.plan();
        plans.push(plan.guest);
        schedule.record(plan, &outcome);
    }
    assert_eq!(
        plans,
        [
            GuestCode::Run,
            GuestCode::Skip {
                passed_cycles_ago: 1
            },
            GuestCode::Skip {
                passed_cycles_ago: 2
            },
            GuestCode::Run,
        ]
    );
    let plan = schedule.plan();
    schedule.record(plan, &ProbeOutcome::fail(NAME, reason::KVM_BUSY, ""));
    assert_eq!(
        schedule.plan().guest,
        GuestCode::Run,
        "a failure re-runs it"
    );
    assert_eq!(schedule.runs(), 2);
    let mut every = GuestSchedule::every(1);
    every.record(every.plan(), &ok());
    assert_eq!(every.plan(), KvmPlan::FULL);
    assert_eq!(GuestSchedule::never().plan().guest, GuestCode::Disabled);
}

#[test]
fn a_vm_is_created_first_then_every_nth_cycle_and_after_a_failure() {
    let mut schedule = GuestSchedule::never().create_vm_every(3);
    let mut created = Vec::new();
    for outcome in [ok(), ok(), ok(), ok(), ok()] {
        let plan = schedule.plan();
        created.push(plan.create_vm);
        schedule.record(plan, &outcome);
    }
    assert_eq!(created, [true, false, false, true, false]);
    let plan = schedule.plan();
    schedule.record(plan, &ProbeOutcome::fail(NAME, reason::KVM_BUSY, ""));
    assert!(schedule.plan().create_vm, "a failure re-creates it");
    schedule.record(
        schedule.plan(),
        &ProbeOutcome::fail(NAME, reason::KVM_BUSY, ""),
    );
    assert!(
        schedule.plan().create_vm,
        "and keeps doing so until it passes"
    );
    assert_eq!(schedule.vm_runs(), 3);
    // A cycle that runs guest code counts as one that created a VM.
    let mut both = GuestSchedule::every(2).create_vm_every(100);
    let first = both.plan();
    assert_eq!(first, KvmPlan::FULL);
    both.record(first, &ok());
    assert_eq!(
        both.plan(),
        KvmPlan {
            guest: GuestCode::Skip {
                passed_cycles_ago: 1
            },
            create_vm: false
        }
    );
    assert!(GuestSchedule::every(1).create_vm_every(0).plan().create_vm);
}

#[test]
fn a_run_that_has_not_come_back_is_not_started_again() {
    let mut schedule = GuestSchedule::every(3);
    let plan = schedule.plan();
    let in_flight = schedule.start(plan);
    assert!(in_flight.is_some());
    // The cycle's budget ran out while the run is still on its thread.
    schedule.record(plan, &ProbeOutcome::timed_out(NAME, Duration::from_secs(2)));
    assert!(
        !in_flight.as_ref().is_some_and(|run| run.kick().is_kicked()),
        "a run is not ended within its own cycle"
    );
    let still = schedule.plan();
    assert_eq!(still.guest, GuestCode::StillRunning);
    assert!(
        in_flight.as_ref().is_some_and(|run| run.kick().is_kicked()),
        "the next cycle ends the run still out"
    );
    assert!(schedule.start(still).is_none());
    let outcome = probe_with(&HostRoot::new("/nonexistent"), still);
    assert_eq!(outcome.status, ProbeStatus::Fail);
    drop(in_flight);
    assert_eq!(schedule.plan().guest, GuestCode::Run);
    // Where a KVM device opens, the run still out is reported as a
    // failure that may pass.
    if let Some(host) = FakeHost::empty().with_real_kvm_or_skip("a run still out") {
        let outcome = probe_with(&host.host_root(), still);
        assert_eq!(
            (outcome.status, outcome.reason, outcome.evidence),
            (
                ProbeStatus::Fail,
                reason::GUEST_CODE_DID_NOT_RUN,
                Evidence::Transient
            ),
            "{}",
            outcome.message
        );
    }
}

#[test]
fn errnos_are_classed_by_what_they_prove() {
    use Errno::*;
    for errno in [ENOENT, ENODEV, ENXIO, EACCES, EPERM] {
        assert_eq!(errno_evidence(errno), Evidence::Definitive, "{errno}");
    }
    for errno in [ENOMEM, EINTR, EBUSY, EAGAIN, EIO, EMFILE, EINVAL] {
        assert_eq!(errno_evidence(errno), Evidence::Transient, "{errno}");
    }
}

#[test]
fn kvm_failures_carry_their_evidence() {
    use Errno::*;
    for (errno, reason, evidence) in [
        (ENOMEM, reason::KVM_CREATE_VM_FAILED, Evidence::Transient),
        (EAGAIN, reason::KVM_CREATE_VM_FAILED, Evidence::Transient),
        (EINTR, reason::KVM_CREATE_VM_FAILED, Evidence::Transient),
        (EBUSY, reason::KVM_BUSY, Evidence::Transient),
        (EACCES, reason::KVM_PERMISSION_DENIED, Evidence::Definitive),
        (ENODEV, reason::KVM_CREATE_VM_FAILED, Evidence::Definitive),
    ] {
        let outcome = create_vm_failed("/dev/kvm", errno);
        assert_eq!(
            (outcome.status, outcome.reason, outcome.evidence),
            (ProbeStatus::Fail, reason, evidence),
            "KVM_CREATE_VM {errno}"
        );
    }
    let open = |errno: Errno| {
        open_failed(&AgentError::Io {
            path: KVM_DEVICE.into(),
            source: std::io::Error::from_raw_os_error(errno as i32),
        })
    };
    for (errno, reason, evidence) in [
        (ENOENT, reason::KVM_DEVICE_MISSING, Evidence::Definitive),
        (ENODEV, reason::KVM_DEVICE_UNAVAILABLE, Evidence::Definitive),
        (ENXIO, reason::KVM_DEVICE_UNAVAILABLE, Evidence::Definitive),
        (EPERM, reason::KVM_PERMISSION_DENIED, Evidence::Definitive),
        (EACCES, reason::KVM_PERMISSION_DENIED, Evidence::Definitive),
        (ENOMEM, reason::KVM_DEVICE_UNREADABLE, Evidence::Transient),
        (EINTR, reason::KVM_DEVICE_UNREADABLE, Evidence::Transient),
        (EBUSY, reason::KVM_DEVICE_UNREADABLE, Evidence::Transient),
        (EAGAIN, reason::KVM_DEVICE_UNREADABLE, Evidence::Transient),
    ] {
        let outcome = open(errno);
        assert_eq!(
            (outcome.reason, outcome.evidence),
            (reason, evidence),
            "open {errno}"
        );
    }
}

#[test]
fn a_missing_device_is_definitive() {
    let missing = probe_with(&HostRoot::new("/nonexistent"), KvmPlan::FULL);
    assert_eq!(
        (missing.reason, missing.evidence),
        (reason::KVM_DEVICE_MISSING, Evidence::Definitive),
        "{}",
        missing.message
    );
}

#[test]
fn exit_codes_have_names() {
    assert_eq!(exit_name(2), "KVM_EXIT_IO");
    assert_eq!(exit_name(5), "KVM_EXIT_HLT");
    assert_eq!(exit_name(17), "KVM_EXIT_INTERNAL_ERROR");
    assert_eq!(exit_name(1000), "KVM_EXIT_*");
}

/// On a machine with a usable `/dev/kvm`: the guest program really runs.
/// Skips, saying why, where there is none or it cannot be mirrored.
#[test]
fn guest_code_runs_on_the_real_kvm() {
    let Some(host) = FakeHost::empty().with_real_kvm_or_skip("guest_code_runs_on_the_real_kvm")
    else {
        return;
    };
    let root = host.host_root();
    let started = Instant::now();
    let without = probe_with(
        &root,
        KvmPlan {
            guest: GuestCode::Disabled,
            create_vm: true,
        },
    );
    let create_only = started.elapsed();
    let started = Instant::now();
    let outcome = probe_with(&root, KvmPlan::FULL);
    let with_guest = started.elapsed();
    eprintln!(
        "real /dev/kvm: probe with guest code {:.3} ms, without (open + KVM_CREATE_VM) \
         {:.3} ms: {} {}: {}",
        with_guest.as_secs_f64() * 1000.0,
        create_only.as_secs_f64() * 1000.0,
        outcome.status,
        outcome.reason,
        outcome.message
    );
    assert_eq!(without.status, ProbeStatus::Ok, "{}", without.message);
    assert_eq!(
        (outcome.status, outcome.reason),
        (ProbeStatus::Ok, reason::KVM_USABLE),
        "{}",
        outcome.message
    );
    if cfg!(target_arch = "x86_64") {
        assert!(
            outcome.message.contains("guest code ran"),
            "{}",
            outcome.message
        );
    }
}
