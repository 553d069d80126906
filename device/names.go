package device

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Translations of NVML's codes into this package's words.

func p2p(s nvml.GpuP2PStatus, ret nvml.Return) P2PStatus {
	if ret != nvml.SUCCESS {
		return P2PUnknown
	}
	switch s {
	case nvml.P2P_STATUS_OK:
		return P2POK
	case nvml.P2P_STATUS_CHIPSET_NOT_SUPPORTED:
		return P2PChipsetNotSupported
	case nvml.P2P_STATUS_GPU_NOT_SUPPORTED:
		return P2PGPUNotSupported
	case nvml.P2P_STATUS_IOH_TOPOLOGY_NOT_SUPPORTED:
		return P2PTopologyNotSupported
	case nvml.P2P_STATUS_DISABLED_BY_REGKEY:
		return P2PDisabled
	case nvml.P2P_STATUS_NOT_SUPPORTED:
		return P2PNotSupported
	}
	return P2PUnknown
}

func level(l nvml.GpuTopologyLevel, ret nvml.Return) Level {
	if ret != nvml.SUCCESS {
		return LevelUnknown
	}
	switch l {
	case nvml.TOPOLOGY_INTERNAL:
		return LevelBoard
	case nvml.TOPOLOGY_SINGLE:
		return LevelSingle
	case nvml.TOPOLOGY_MULTIPLE:
		return LevelMultiple
	case nvml.TOPOLOGY_HOSTBRIDGE:
		return LevelHostBridge
	case nvml.TOPOLOGY_NODE:
		return LevelNode
	case nvml.TOPOLOGY_SYSTEM:
		return LevelSystem
	}
	return LevelUnknown
}

// noDriver says why nvmlInit failed, for Inventory.Driver.
func noDriver(r nvml.Return) string {
	switch r {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return "no NVIDIA driver: libnvidia-ml.so.1 not found"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "no NVIDIA driver: the nvidia kernel module is not loaded"
	case nvml.ERROR_LIB_RM_VERSION_MISMATCH:
		return "NVIDIA driver unusable: libnvidia-ml.so.1 and the kernel module differ in version (reload the module or reboot)"
	case nvml.ERROR_NO_PERMISSION:
		return "NVIDIA driver unusable: no permission to open /dev/nvidia*"
	}
	return "NVIDIA driver unusable: NVML init: " + reason(r)
}

// reason names an NVML return code. It does not call Return.Error, which
// reads a go-nvml package variable that Init and Shutdown rewrite.
func reason(r nvml.Return) string {
	switch r {
	case nvml.SUCCESS:
		return "success"
	case nvml.ERROR_UNINITIALIZED:
		return "NVML not initialized"
	case nvml.ERROR_INVALID_ARGUMENT:
		return "invalid argument"
	case nvml.ERROR_NOT_SUPPORTED:
		return "not supported"
	case nvml.ERROR_NO_PERMISSION:
		return "no permission"
	case nvml.ERROR_NOT_FOUND:
		return "not found"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "driver not loaded"
	case nvml.ERROR_TIMEOUT:
		return "timeout"
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return "libnvidia-ml.so.1 not found"
	case nvml.ERROR_FUNCTION_NOT_FOUND:
		return "not in this driver version"
	case nvml.ERROR_GPU_IS_LOST:
		return "GPU is lost"
	case nvml.ERROR_RESET_REQUIRED:
		return "GPU needs a reset"
	case nvml.ERROR_LIB_RM_VERSION_MISMATCH:
		return "driver version mismatch"
	case nvml.ERROR_IN_USE:
		return "in use"
	case nvml.ERROR_NO_DATA:
		return "no data"
	case nvml.ERROR_UNKNOWN:
		return "unknown error"
	}
	return fmt.Sprintf("NVML error %d", int(r))
}
