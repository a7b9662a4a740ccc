package simulator

import (
	"github.com/vmware/govmomi/simulator/internal"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// sendensePropertyCollector fixes Fetch, the method pyVmomi uses to read one
// property (vm.snapshot, say). vcsim 0.24.2 drops properties whose value is
// unset from the result and then indexes MissingSet[0] of the empty answer:
// the handler panics and the client sees its connection closed. vCenter
// answers an unset property with an empty FetchResponse (pyVmomi: None).
type sendensePropertyCollector struct {
	PropertyCollector
}

// installFetchFix replaces the PropertyCollector singleton. Per-session
// instances are created with reflect.New of the singleton's type (see
// Session.Get), so they get the fix too.
func installFetchFix() {
	pc := &sendensePropertyCollector{}
	pc.Self = Map.content().PropertyCollector
	Map.Put(pc)
}

func (pc *sendensePropertyCollector) Fetch(ctx *Context, req *internal.Fetch) soap.HasFault {
	obj := ctx.Map.Get(req.This)
	if ctx.Session != nil {
		obj = ctx.Session.Get(req.This) // views and filters live in the session
	}
	if req.This != vim25.ServiceInstance && obj != nil {
		res := pc.RetrievePropertiesEx(ctx, &types.RetrievePropertiesEx{
			SpecSet: []types.PropertyFilterSpec{{
				PropSet:   []types.PropertySpec{{Type: req.This.Type, PathSet: []string{req.Prop}}},
				ObjectSet: []types.ObjectSpec{{Obj: req.This}},
			}},
		})
		if body, ok := res.(*methods.RetrievePropertiesExBody); ok && body.Res != nil {
			objs := body.Res.Returnval.Objects
			if len(objs) == 1 && len(objs[0].PropSet) == 0 && len(objs[0].MissingSet) == 0 {
				return &internal.FetchBody{Res: &internal.FetchResponse{}}
			}
		}
	}
	return pc.PropertyCollector.Fetch(ctx, req)
}
