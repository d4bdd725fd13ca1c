//! Every reason code a probe reports, defined once.
//!
//! A reason is the stable, machine-readable half of a [`super::ProbeOutcome`]:
//! it goes on the wire to the coordinator, into `node-agent check --json`,
//! and [`crate::verdict`] decides on some of them. Renaming one is a protocol
//! change, so the strings never change; the constant names follow them.

// ---- any probe ---------------------------------------------------------------

/// The probe ran out of its budget and cannot tell either way.
pub const PROBE_TIMED_OUT: &str = "ProbeTimedOut";
/// The probe's blocking work panicked or was cancelled.
pub const PROBE_CRASHED: &str = "ProbeCrashed";

// ---- kvm -------------------------------------------------------------------

pub const KVM_USABLE: &str = "KvmUsable";
pub const KVM_DEVICE_MISSING: &str = "KvmDeviceMissing";
pub const KVM_DEVICE_UNAVAILABLE: &str = "KvmDeviceUnavailable";
pub const KVM_DEVICE_UNREADABLE: &str = "KvmDeviceUnreadable";
pub const KVM_NOT_CHAR_DEVICE: &str = "KvmNotCharDevice";
pub const KVM_NOT_KVM_DEVICE: &str = "KvmNotKvmDevice";
pub const KVM_PERMISSION_DENIED: &str = "KvmPermissionDenied";
pub const KVM_API_VERSION_UNSUPPORTED: &str = "KvmApiVersionUnsupported";
pub const KVM_IOCTL_FAILED: &str = "KvmIoctlFailed";
pub const KVM_BUSY: &str = "KvmBusy";
pub const KVM_CREATE_VM_FAILED: &str = "KvmCreateVmFailed";

// ---- cpu -------------------------------------------------------------------

pub const CPU_FLAGS_PRESENT: &str = "CpuFlagsPresent";
pub const CPU_FLAGS_MISSING: &str = "CpuFlagsMissing";
pub const CPU_FLAGS_NOT_APPLICABLE: &str = "CpuFlagsNotApplicable";
pub const CPUINFO_UNREADABLE: &str = "CpuinfoUnreadable";
pub const CPUINFO_UNPARSEABLE: &str = "CpuinfoUnparseable";
pub const VIRT_FLAGS_HIDDEN: &str = "VirtFlagsHidden";
pub const NO_VIRTUALIZATION_FLAGS: &str = "NoVirtualizationFlags";

// ---- kernel-modules --------------------------------------------------------

pub const KERNEL_MODULES_LOADED: &str = "KernelModulesLoaded";
pub const KERNEL_MODULES_MISSING: &str = "KernelModulesMissing";
/// Some modules are not loaded yet, but their device nodes load them on first open.
pub const MODULES_LOAD_ON_DEMAND: &str = "ModulesLoadOnDemand";
pub const VHOST_VSOCK_DEVICE_MISSING: &str = "VhostVsockDeviceMissing";

// ---- qemu ------------------------------------------------------------------

pub const QEMU_VERSION_SUPPORTED: &str = "QemuVersionSupported";
pub const QEMU_TOO_OLD: &str = "QemuTooOld";
pub const QEMU_MISSING: &str = "QemuMissing";
pub const QEMU_NOT_EXECUTABLE: &str = "QemuNotExecutable";
pub const QEMU_VERSION_FAILED: &str = "QemuVersionFailed";
pub const QEMU_VERSION_UNPARSEABLE: &str = "QemuVersionUnparseable";

// ---- kata-shim -------------------------------------------------------------

pub const KATA_SHIM_INSTALLED: &str = "KataShimInstalled";
pub const KATA_SHIM_MISSING: &str = "KataShimMissing";
pub const KATA_SHIM_NOT_EXECUTABLE: &str = "KataShimNotExecutable";
pub const KATA_CONFIG_MISSING: &str = "KataConfigMissing";
pub const KATA_CONFIG_UNREADABLE: &str = "KataConfigUnreadable";
pub const KATA_CONFIG_INVALID: &str = "KataConfigInvalid";

// ---- rpm-ostree ------------------------------------------------------------

pub const EXTENSION_BOOTED: &str = "ExtensionBooted";
pub const EXTENSION_NOT_INSTALLED: &str = "ExtensionNotInstalled";
/// Booted now, but the pending deployment drops the extension.
pub const EXTENSION_REMOVAL_PENDING: &str = "ExtensionRemovalPending";
/// Installed in the pending deployment only: not running until a reboot.
pub const REBOOT_PENDING: &str = "RebootPending";
pub const NO_BOOTED_DEPLOYMENT: &str = "NoBootedDeployment";
/// Not an rpm-ostree system: the probe does not apply.
pub const NOT_OSTREE_HOST: &str = "NotOstreeHost";
pub const RPM_OSTREE_STATUS_UNAVAILABLE: &str = "RpmOstreeStatusUnavailable";
pub const RPM_OSTREE_STATUS_UNPARSEABLE: &str = "RpmOstreeStatusUnparseable";

// ---- crio-drop-in ----------------------------------------------------------

pub const HANDLER_CONFIGURED: &str = "HandlerConfigured";
pub const HANDLER_NOT_CONFIGURED: &str = "HandlerNotConfigured";
/// A symlink to a directory inside the drop-in directory: CRI-O exits.
pub const DROP_IN_DIR_SYMLINK: &str = "DropInDirSymlink";
pub const DROP_IN_UNREADABLE: &str = "DropInUnreadable";
pub const DROP_IN_NOT_TEXT: &str = "DropInNotText";
pub const DROP_IN_SYNTAX_ERROR: &str = "DropInSyntaxError";
pub const DROP_IN_INVALID_VALUE: &str = "DropInInvalidValue";
pub const RUNTIME_PATH_MISSING: &str = "RuntimePathMissing";
pub const RUNTIME_PATH_NOT_EXECUTABLE: &str = "RuntimePathNotExecutable";
pub const RUNTIME_TYPE_NOT_VM: &str = "RuntimeTypeNotVm";
/// CRI-O drops a vm handler whose runtime_path is not named `containerd-shim-<name>-v2`.
pub const RUNTIME_PATH_NOT_SHIM_NAME: &str = "RuntimePathNotShimName";
/// CRI-O drops a handler whose runtime_config_path is set but missing.
pub const RUNTIME_CONFIG_PATH_MISSING: &str = "RuntimeConfigPathMissing";
/// `inherit_default_runtime = true`: the handler runs the default (OCI) runtime, no VM.
pub const INHERITS_DEFAULT_RUNTIME: &str = "InheritsDefaultRuntime";
/// CRI-O then uses its default root: a WARN.
pub const RUNTIME_ROOT_MISSING: &str = "RuntimeRootMissing";
/// Ordinary pods run; privileged ones would be handed the host's devices.
pub const PRIVILEGED_WITHOUT_HOST_DEVICES_UNSET: &str = "PrivilegedWithoutHostDevicesUnset";

// ---- cri-handler -----------------------------------------------------------

pub const HANDLER_SERVED: &str = "HandlerServed";
pub const HANDLER_NOT_SERVED: &str = "HandlerNotServed";
/// No CRI-O socket to ask: the probe does not apply.
pub const CRIO_SOCKET_ABSENT: &str = "CrioSocketAbsent";
pub const CRI_STATUS_FAILED: &str = "CriStatusFailed";

// ---- capacity --------------------------------------------------------------

pub const CAPACITY_SUFFICIENT: &str = "CapacitySufficient";
pub const CAPACITY_UNKNOWN: &str = "CapacityUnknown";
pub const INSUFFICIENT_CPU: &str = "InsufficientCpu";
pub const INSUFFICIENT_MEMORY: &str = "InsufficientMemory";
/// Available memory moves with the load: reported, not disqualifying.
pub const LOW_AVAILABLE_MEMORY: &str = "LowAvailableMemory";

// ---- additions (append-only) -----------------------------------------------

// kata-shim: what the shim will use, from the CRI-O handler's runtime_path and
// runtime_config_path.

/// The configuration has no `[hypervisor.*]` table, or the table lacks
/// `path`, `kernel`, or both of `image` and `initrd`.
pub const KATA_HYPERVISOR_NOT_CONFIGURED: &str = "KataHypervisorNotConfigured";
/// A path the hypervisor table names (binary, kernel, image, initrd) is not on
/// the host.
pub const KATA_ASSET_MISSING: &str = "KataAssetMissing";

// rpm-ostree: image-mode nodes.

/// Not layered, but in the booted base image (`rpm -q` finds it).
pub const EXTENSION_IN_BASE_IMAGE: &str = "ExtensionInBaseImage";

// cri-handler.

/// CRI-O reports neither `runtime_handlers` nor its loaded configuration
/// (CRI-O 1.29, OpenShift 4.16): whether it serves the handler is unknown.
/// The crio-drop-in probe still checks the file.
pub const HANDLER_UNVERIFIABLE: &str = "HandlerUnverifiable";
/// `info["config"]` of a verbose CRI Status is not the JSON document CRI-O
/// writes there.
pub const CRI_INFO_INVALID: &str = "CriInfoInvalid";

// kvm: the guest-code step.

/// Setting up the probe's guest (memory, vCPU, registers) or `KVM_RUN` failed.
pub const KVM_GUEST_SETUP_FAILED: &str = "KvmGuestSetupFailed";
/// The probe's guest ran, but its exits were not the program's `out` and `hlt`.
pub const GUEST_CODE_DID_NOT_RUN: &str = "GuestCodeDidNotRun";

// kernel-modules: Kata's host checks of the vendor module and its parameters.

/// The loaded hardware KVM module is the other vendor's (kvm_amd on Intel).
pub const KVM_VENDOR_MODULE_MISMATCH: &str = "KvmVendorModuleMismatch";
/// `kvm_intel`'s `unrestricted_guest` is N: a FAIL on bare metal, a WARN nested.
pub const UNRESTRICTED_GUEST_DISABLED: &str = "UnrestrictedGuestDisabled";
/// `kvm`'s `kvmclock_periodic_sync` is N: a WARN.
pub const KVMCLOCK_PERIODIC_SYNC_DISABLED: &str = "KvmclockPeriodicSyncDisabled";
/// A KVM module parameter file is missing or not Y/N: a WARN.
pub const KVM_PARAMETER_UNREADABLE: &str = "KvmParameterUnreadable";
