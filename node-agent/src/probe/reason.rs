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
pub const CONFLICTING_HANDLER_DEFINITIONS: &str = "ConflictingHandlerDefinitions";
pub const DROP_IN_UNREADABLE: &str = "DropInUnreadable";
pub const DROP_IN_NOT_TEXT: &str = "DropInNotText";
pub const DROP_IN_SYNTAX_ERROR: &str = "DropInSyntaxError";
pub const DROP_IN_INVALID_VALUE: &str = "DropInInvalidValue";
pub const RUNTIME_PATH_MISSING: &str = "RuntimePathMissing";
pub const RUNTIME_PATH_NOT_EXECUTABLE: &str = "RuntimePathNotExecutable";
pub const RUNTIME_TYPE_NOT_VM: &str = "RuntimeTypeNotVm";
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
