package simulator

import (
	"log"
	"os"
	"path"

	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// flatDisk is the local file holding a virtual disk's data.
type flatDisk struct {
	path     string
	capacity int64
}

// diskFlatFile finds the -flat.vmdk of a flat (VMFS-style) virtual disk.
// vcsim creates "<name>.vmdk" and "<name>-flat.vmdk" as empty files in the
// datastore's directory (vdmNames); it never writes to them, so tests write
// the "guest" data straight into the -flat.vmdk.
func diskFlatFile(disk *types.VirtualDisk) (*flatDisk, bool) {
	b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if !ok {
		return nil, false
	}
	p, fault := parseDatastorePath(b.FileName)
	if fault != nil {
		return nil, false
	}
	var ds *Datastore
	if b.Datastore != nil {
		ds, _ = Map.Get(*b.Datastore).(*Datastore)
	}
	if ds == nil {
		for _, e := range Map.All("Datastore") {
			if d := e.(*Datastore); d.Name == p.Datastore {
				ds = d
				break
			}
		}
	}
	if ds == nil {
		return nil, false
	}
	capacity := disk.CapacityInBytes
	if capacity <= 0 {
		capacity = disk.CapacityInKB * 1024
	}
	file := path.Join(ds.Info.GetDatastoreInfo().Url, vdmNames(p.Path)[0])
	return &flatDisk{path: file, capacity: capacity}, true
}

// sizeFlatFiles grows each disk's -flat.vmdk to the disk's capacity, as a
// sparse file (thin provisioning costs no space). vcsim leaves it empty; a
// real flat extent is as long as the disk, and readers (HTTP Range GETs on
// /folder) expect that. Files are never shrunk.
func sizeFlatFiles(vm *mo.VirtualMachine) {
	if vm.Config == nil {
		return
	}
	for _, d := range vm.Config.Hardware.Device {
		disk, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		f, ok := diskFlatFile(disk)
		if !ok {
			continue
		}
		st, err := os.Stat(f.path)
		if err != nil || st.Size() >= f.capacity {
			continue
		}
		if err := os.Truncate(f.path, f.capacity); err != nil {
			log.Printf("sendense: sizing %s: %s", f.path, err)
		}
	}
}
