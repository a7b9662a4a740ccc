package simulator

import (
	"crypto/rand"
	"fmt"
	"log"
	"strings"
	"sync"

	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Changed Block Tracking, simulated. vcsim 0.24.2 has none: no
// backing.changeId, no QueryChangedDiskAreas. Here, when a snapshot is
// taken of a VM with config.changeTrackingEnabled, each of its flat disks
// gets a new change ID and a digest of each of its blocks (blockMap: from a
// scan, or from the previous map and the write journal, see
// sendense_cbt_journal.go); a later query compares two such maps. Like
// vSphere, a change ID is "<epoch UUID>/<sequence>": the epoch is new each
// time tracking is switched on, and switching it off forgets every change ID
// of the VM (a "CBT reset").

var sendenseCBT *cbtTracker

type cbtTracker struct {
	mu   sync.Mutex
	opts SendenseOptions
	vms  map[types.ManagedObjectReference]map[int32]*cbtDisk
}

// cbtDisk is one disk's tracking state since tracking was last switched on.
type cbtDisk struct {
	epoch     string
	seq       int
	maps      map[string]*blockMap // by change ID
	last      *blockMap            // the newest map, taken from the file in lastState
	lastState fileState
}

func newCBTTracker(opts SendenseOptions) *cbtTracker {
	return &cbtTracker{opts: opts, vms: make(map[types.ManagedObjectReference]map[int32]*cbtDisk)}
}

// newEpoch formats 16 random bytes the way vSphere prints change IDs:
// "52 0b 3c 9e 11 7d 40 a2-8f 03 5c 6e d1 22 b7 9f". VMware's UUIDs start
// with 0x52.
func newEpoch() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[0] = 0x52
	hexes := make([]string, len(b))
	for i, x := range b {
		hexes[i] = fmt.Sprintf("%02x", x)
	}
	return strings.Join(hexes[:8], " ") + "-" + strings.Join(hexes[8:], " ")
}

// record stores the disk's block map, taken from its file in state s, under
// a new change ID and returns it.
func (t *cbtTracker) record(vm types.ManagedObjectReference, key int32, m *blockMap, s fileState) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	disks := t.vms[vm]
	if disks == nil {
		disks = make(map[int32]*cbtDisk)
		t.vms[vm] = disks
	}
	d := disks[key]
	if d == nil {
		d = &cbtDisk{epoch: newEpoch(), maps: make(map[string]*blockMap)}
		disks[key] = d
	}
	d.seq++
	id := fmt.Sprintf("%s/%d", d.epoch, d.seq)
	d.maps[id] = m
	d.last, d.lastState = m, s
	return id
}

// latest is the disk's newest block map in this tracking epoch.
func (t *cbtTracker) latest(vm types.ManagedObjectReference, key int32) (*blockMap, fileState, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.vms[vm][key]
	if d == nil || d.last == nil {
		return nil, fileState{}, false
	}
	return d.last, d.lastState, true
}

// mapNow digests the disk as it is now: from the journal when it accounts
// for every write since the disk's previous map, else by a scan.
func (t *cbtTracker) mapNow(vm types.ManagedObjectReference, key int32, f *flatDisk) (*blockMap, fileState, error) {
	now := currentState(f)
	if prev, was, ok := t.latest(vm, key); ok {
		m, err := fromJournal(f, prev, was, now, t.opts.BlockSize)
		if err == nil {
			return m, now, nil
		}
		log.Printf("sendense: CBT of %s: scanning, not journaled: %s", f.path, err)
	}
	m, err := scanDisk(f, t.opts.BlockSize)
	return m, now, err
}

// lookup finds the block map of a change ID of this VM's disk.
func (t *cbtTracker) lookup(vm types.ManagedObjectReference, key int32, id string) (*blockMap, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.vms[vm][key]
	if d == nil {
		return nil, false
	}
	m, ok := d.maps[id]
	return m, ok
}

func (t *cbtTracker) forget(vm types.ManagedObjectReference) {
	t.mu.Lock()
	delete(t.vms, vm)
	t.mu.Unlock()
}

// snapshotCreated runs when CreateSnapshot_Task registers the snapshot,
// whose Config is still a shallow copy of the VM's (see CreateSnapshotTask).
// The snapshot gets its own device list, so its disks keep the change IDs
// of this moment (and later reconfigurations of the VM cannot alter it);
// the VM's current disks show the same new IDs.
func (t *cbtTracker) snapshotCreated(snap *VirtualMachineSnapshot) {
	vm, ok := Map.Get(snap.Vm).(*VirtualMachine)
	if !ok || vm.Config == nil {
		return
	}
	devices := append([]types.BaseVirtualDevice(nil), vm.Config.Hardware.Device...)
	snap.Config.Hardware.Device = devices
	if !isTrue(vm.Config.ChangeTrackingEnabled) {
		return
	}
	changed := false
	for i, d := range devices {
		disk, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		f, ok := diskFlatFile(disk)
		if !ok {
			continue
		}
		m, state, err := t.mapNow(vm.Self, disk.Key, f)
		if err != nil {
			log.Printf("sendense: CBT scan of %s: %s", f.path, err)
			continue
		}
		id := t.record(vm.Self, disk.Key, m, state)
		backing := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		frozen, frozenBacking := *disk, *backing
		frozenBacking.ChangeId = id
		frozen.Backing = &frozenBacking
		devices[i] = &frozen
		backing.ChangeId = id
		changed = true
	}
	if changed {
		Map.Update(vm, []types.PropertyChange{
			{Name: "config.hardware.device", Val: vm.Config.Hardware.Device},
		})
	}
}

// configChanged runs after every device reconfiguration of a VM (a
// ReconfigVM_Task always ends with one). With tracking off, the VM's
// change IDs are forgotten and cleared from its disks.
func (t *cbtTracker) configChanged(vm *mo.VirtualMachine) {
	if vm.Config == nil || isTrue(vm.Config.ChangeTrackingEnabled) {
		return
	}
	t.forget(vm.Self)
	for _, d := range vm.Config.Hardware.Device {
		if disk, ok := d.(*types.VirtualDisk); ok {
			if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
				b.ChangeId = ""
			}
		}
	}
}
