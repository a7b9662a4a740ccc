// Files named sendense_*.go are not a package of their own: the test rig
// (tests/rig/vcsim.py) copies Debian's govmomi 0.24.2 simulator package into
// an overlay GOPATH and adds these files to it, so they can use the
// simulator's unexported helpers and add methods to its types. No Debian file
// is modified; everything hooks in through SendenseInstall.

package simulator

import (
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// SendenseOptions tunes the simulated Changed Block Tracking.
type SendenseOptions struct {
	// BlockSize is the CBT granularity: changes are tracked per block.
	BlockSize int64
	// MaxSpan caps the bytes one QueryChangedDiskAreas answer covers (0: up
	// to the end of the disk) and MaxAreas the areas it lists (0: any
	// number). vSphere answers for as much of the disk as a bounded list of
	// areas describes; either cap makes callers loop over startOffset, as
	// they must with vSphere.
	MaxSpan  int64
	MaxAreas int
}

// SendenseInstall adds the fixes and the CBT simulation to the default
// Registry (Map). Call it after Model.Create and before Service.NewServer.
func SendenseInstall(opts SendenseOptions) {
	sendenseCBT = newCBTTracker(opts)
	installFetchFix()
	Map.AddHandler(&sendenseHooks{Self: types.ManagedObjectReference{
		Type:  "SendenseHooks",
		Value: "sendense-hooks",
	}})
}

// sendenseHooks sees every object the simulator registers, updates or
// removes (Registry.RegisterObject). Wrapping VirtualMachine or
// VirtualMachineSnapshot objects instead would break the simulator's own
// type assertions on them, so the fixes hook in here.
//
// The callbacks run synchronously inside the simulator's method calls, with
// the object of the running method already locked: they must not take
// Registry locks (Map.WithLock) themselves.
type sendenseHooks struct {
	Self types.ManagedObjectReference
}

func (h *sendenseHooks) Reference() types.ManagedObjectReference { return h.Self }

func (h *sendenseHooks) PutObject(item mo.Reference) {
	switch x := item.(type) {
	case *Task:
		fixSnapshotTaskEntity(x)
	case *VirtualMachineSnapshot:
		sendenseCBT.snapshotCreated(x)
	}
}

func (h *sendenseHooks) UpdateObject(item mo.Reference, changes []types.PropertyChange) {
	vm, ok := item.(*mo.VirtualMachine)
	if !ok {
		return
	}
	for _, c := range changes {
		if c.Name == "config.hardware.device" {
			sizeFlatFiles(vm)
			sendenseCBT.configChanged(vm)
			return
		}
	}
}

func (h *sendenseHooks) RemoveObject(ref types.ManagedObjectReference) {
	if ref.Type == "VirtualMachine" {
		sendenseCBT.forget(ref)
	}
}
