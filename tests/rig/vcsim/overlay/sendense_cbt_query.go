package simulator

import (
	"fmt"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// QueryChangedDiskAreas answers from the simulated CBT (sendense_cbt.go).
//
// The areas are relative to the snapshot's block map: with changeId "*"
// the blocks holding non-zero data, otherwise the blocks whose digest
// differs from the one recorded for changeId. Without a snapshot the disk's
// current contents are scanned. One answer covers at most
// SendenseOptions.MaxSpan bytes from the start of startOffset's block and
// lists at most MaxAreas areas; the caller continues at startOffset+length,
// as with vSphere.
//
// Every request it cannot answer faults with InvalidArgument, invalidProperty
// naming the culprit: "changeId" (malformed, unknown, from before a CBT
// reset, from another disk, or tracking off), "deviceKey", "snapshot" (not
// this VM's, or taken without tracking) or "startOffset".
func (vm *VirtualMachine) QueryChangedDiskAreas(ctx *Context, req *types.QueryChangedDiskAreas) soap.HasFault {
	body := new(methods.QueryChangedDiskAreasBody)
	info, fault := sendenseCBT.query(vm, req)
	if fault != nil {
		body.Fault_ = Fault(fmt.Sprintf("A specified parameter was not correct: %s", fault.InvalidProperty), fault)
		return body
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: *info}
	return body
}

func cbtInvalid(property string) *types.InvalidArgument {
	return &types.InvalidArgument{InvalidProperty: property}
}

func (t *cbtTracker) query(vm *VirtualMachine, req *types.QueryChangedDiskAreas) (*types.DiskChangeInfo, *types.InvalidArgument) {
	if vm.Config == nil || !isTrue(vm.Config.ChangeTrackingEnabled) {
		return nil, cbtInvalid("changeId")
	}
	target, fault := t.targetMap(vm, req)
	if fault != nil {
		return nil, fault
	}
	changed := func(i int64) bool { return target.nonzero[i] }
	if req.ChangeId != "*" {
		base, ok := t.lookup(vm.Self, req.DeviceKey, req.ChangeId)
		if !ok {
			return nil, cbtInvalid("changeId")
		}
		changed = func(i int64) bool {
			if i >= int64(len(base.digests)) {
				return target.nonzero[i] // the disk grew since
			}
			return base.digests[i] != target.digests[i]
		}
	}
	start := req.StartOffset
	if start < 0 || start > target.capacity {
		return nil, cbtInvalid("startOffset")
	}
	end := t.spanEnd(start, target.capacity)
	info := &types.DiskChangeInfo{StartOffset: start, Length: end - start}
	bs := t.opts.BlockSize
	for i := start / bs; i*bs < end; i++ {
		if !changed(i) {
			continue
		}
		lo, hi := max64(i*bs, start), min64((i+1)*bs, end)
		n := len(info.ChangedArea)
		if n > 0 && info.ChangedArea[n-1].Start+info.ChangedArea[n-1].Length == lo {
			info.ChangedArea[n-1].Length += hi - lo
			continue
		}
		if limit := t.opts.MaxAreas; limit > 0 && n == limit {
			info.Length = lo - start // the answer ends where the next area starts
			break
		}
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: lo, Length: hi - lo})
	}
	return info, nil
}

// spanEnd is where an answer starting at start stops at the latest.
func (t *cbtTracker) spanEnd(start, capacity int64) int64 {
	if t.opts.MaxSpan <= 0 {
		return capacity
	}
	return min64(start/t.opts.BlockSize*t.opts.BlockSize+t.opts.MaxSpan, capacity)
}

// targetMap is the block map the areas are reported for: the snapshot's,
// or the disk as it is now when no snapshot is given.
func (t *cbtTracker) targetMap(vm *VirtualMachine, req *types.QueryChangedDiskAreas) (*blockMap, *types.InvalidArgument) {
	devices := vm.Config.Hardware.Device
	if req.Snapshot != nil {
		snap, ok := Map.Get(*req.Snapshot).(*VirtualMachineSnapshot)
		if !ok || snap.Vm != vm.Self {
			return nil, cbtInvalid("snapshot")
		}
		devices = snap.Config.Hardware.Device
	}
	disk, ok := object.VirtualDeviceList(devices).FindByKey(req.DeviceKey).(*types.VirtualDisk)
	if !ok {
		return nil, cbtInvalid("deviceKey")
	}
	f, ok := diskFlatFile(disk)
	if !ok {
		return nil, cbtInvalid("deviceKey")
	}
	if req.Snapshot == nil {
		// Only the range this answer covers (see query).
		from := req.StartOffset / t.opts.BlockSize * t.opts.BlockSize
		m, err := scanBlocks(f, t.opts.BlockSize, from, t.spanEnd(req.StartOffset, f.capacity))
		if err != nil {
			return nil, cbtInvalid("deviceKey")
		}
		return m, nil
	}
	id := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo).ChangeId
	m, ok := t.lookup(vm.Self, req.DeviceKey, id)
	if !ok {
		return nil, cbtInvalid("snapshot")
	}
	return m, nil
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

func min64(a, b int64) int64 {
	if a < b {
		return a
	}
	return b
}
