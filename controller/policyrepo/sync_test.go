package policyrepo_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/controller/policyrepo"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/storetest"
	"github.com/eastguard/eastguard/internal/policy"
)

// podObjects are n pod workloads spread over 10 nodes and 20 label sets,
// as controller/kube renders them; gen changes the labels of pod 0.
func podObjects(n, gen int) []policyrepo.SourceObject {
	out := make([]policyrepo.SourceObject, n)
	for i := range n {
		app := fmt.Sprint("a", i%20)
		if i == 0 {
			app = fmt.Sprint("g", gen%2)
		}
		name := fmt.Sprintf("ns%d/pod-%d", i%7, i)
		out[i] = policyrepo.SourceObject{
			Key:  store.ResourceKey{Kind: policy.KindWorkload, Name: name},
			File: "Pod " + name,
			Doc: fmt.Appendf(nil, `apiVersion: eastguard.dev/v1
kind: Workload
metadata:
  labels:
    app: %s
    k8s:namespace: ns%d
    k8s:sa: default
  name: %s
spec:
  addresses:
  - 10.%d.%d.%d
  interface: auto
  node: node-%d
`, app, i%7, name, 100+i>>16&0xff, i>>8&0xff, i&0xff, i%10),
		}
	}
	return out
}

const shop = `apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: p}
spec:
  rules:
    - name: r
      from: [{selector: {app: a1}}]
      to: [{selector: {app: a2}}]
      ports: [{port: 80}]
`

// BenchmarkSyncOneChange is the steady state of Kubernetes mode: the
// whole mirrored set handed over again with one pod relabelled.
func BenchmarkSyncOneChange(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			h := controllertest.New(b)
			h.Apply(shop)
			kinds := []string{policy.KindWorkload}
			if _, err := h.Srv.Policy.Sync(context.Background(), store.SourceKubernetes, kinds, podObjects(n, 0)); err != nil {
				b.Fatal(err)
			}
			sets := [][]policyrepo.SourceObject{podObjects(n, 1), podObjects(n, 2)}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				res, err := h.Srv.Policy.Sync(context.Background(), store.SourceKubernetes, kinds, sets[i%2])
				if err != nil || res.Change == nil || len(res.Change.Updated) != 1 {
					b.Fatalf("sync: %v %+v", err, res)
				}
			}
		})
	}
}

// TestSyncUnchangedIsNoop: handing over the same set again changes
// nothing and commits nothing.
func TestSyncUnchangedIsNoop(t *testing.T) {
	h := controllertest.New(t)
	kinds := []string{policy.KindWorkload}
	first, err := h.Srv.Policy.Sync(context.Background(), store.SourceKubernetes, kinds, podObjects(50, 0))
	if err != nil || first.Change == nil || len(first.Change.Created) != 50 {
		t.Fatalf("first sync: %v %+v", err, first)
	}
	v := h.Srv.Nodes.Latest("node-0").Num
	again, err := h.Srv.Policy.Sync(context.Background(), store.SourceKubernetes, kinds, podObjects(50, 0))
	if err != nil || again.Change != nil || len(again.Refused) != 0 {
		t.Fatalf("same set again: %v %+v", err, again)
	}
	if got := h.Srv.Nodes.Latest("node-0").Num; got != v {
		t.Errorf("version %d -> %d with nothing changed", v, got)
	}
	// Deleting by omission: the set without pod 1 deletes its workload.
	less := podObjects(50, 0)
	less = append(less[:1], less[2:]...)
	res, err := h.Srv.Policy.Sync(context.Background(), store.SourceKubernetes, kinds, less)
	if err != nil || res.Change == nil || fmt.Sprint(res.Change.Deleted) != "[Workload/ns1/pod-1]" {
		t.Fatalf("set without pod-1: %v %+v", err, res)
	}
}

// TestSyncAudited: the source's changes are recorded as its own, one
// record per resource created, updated or deleted, with the stored
// documents' hashes; a sync that changes nothing records nothing.
func TestSyncAudited(t *testing.T) {
	h := controllertest.New(t)
	kinds := []string{policy.KindWorkload}
	ctx := context.Background()
	base := len(storetest.AllAudit(t, h.St))
	sync := func(objs []policyrepo.SourceObject) {
		t.Helper()
		if _, err := h.Srv.Policy.Sync(ctx, store.SourceKubernetes, kinds, objs); err != nil {
			t.Fatal(err)
		}
	}
	sync(podObjects(3, 0))
	sync(podObjects(3, 0))
	sync(podObjects(3, 1)[:2]) // pod 0 relabelled, pod 2 gone
	recs := storetest.AllAudit(t, h.St)[base:]
	var got []string
	for _, r := range recs {
		got = append(got, fmt.Sprintf("%s %s %s:%s before=%t after=%t", r.Action, r.Object, r.ActorKind, r.Actor, r.Before != "", r.After != ""))
	}
	want := []string{
		"policy.apply Workload/ns0/pod-0 kubernetes:kubernetes before=false after=true",
		"policy.apply Workload/ns1/pod-1 kubernetes:kubernetes before=false after=true",
		"policy.apply Workload/ns2/pod-2 kubernetes:kubernetes before=false after=true",
		"policy.apply Workload/ns0/pod-0 kubernetes:kubernetes before=true after=true",
		"policy.delete Workload/ns2/pod-2 kubernetes:kubernetes before=true after=false",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("records:\n got %q\nwant %q", got, want)
	}
	if len(recs) == 5 && (recs[3].Before != recs[0].After || recs[4].Before != recs[2].After) {
		t.Error("a record's before hash is not the previous record's after hash of the same resource")
	}
}
