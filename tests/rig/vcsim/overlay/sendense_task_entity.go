package simulator

// fixSnapshotTaskEntity: vcsim 0.24.2 creates RemoveSnapshot_Task and
// RevertToSnapshot_Task with the snapshot as TaskInfo.entity. TaskInfo.entity
// is a ManagedEntity and a VirtualMachineSnapshot is not one, so pyVmomi's
// WaitForTask fails deserializing the task with a TypeError. vCenter names
// the snapshot's VM there; so do we, as soon as the task is registered.
func fixSnapshotTaskEntity(t *Task) {
	e := t.Info.Entity
	if e == nil || e.Type != "VirtualMachineSnapshot" {
		return
	}
	snap, ok := Map.Get(*e).(*VirtualMachineSnapshot)
	if !ok {
		return
	}
	vm := snap.Vm
	t.Info.Entity = &vm
	t.Info.EntityName = vm.Value
	if obj, ok := Map.Get(vm).(*VirtualMachine); ok {
		t.Info.EntityName = obj.Name
	}
}
