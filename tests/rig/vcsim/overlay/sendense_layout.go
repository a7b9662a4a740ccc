package simulator

import (
	"os"
	"syscall"
)

// sendenseAllocated is what a file takes on its datastore. vSphere's layoutEx
// reports a thin disk's extent by the space it uses; the simulator's own code
// (virtual_machine.go, updateDiskLayouts) reports the sparse flat file's
// apparent size, its whole capacity. tests/rig/vcsim.py points that code here.
func sendenseAllocated(info os.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}
