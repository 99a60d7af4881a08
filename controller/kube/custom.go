package kube

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/eastguard/eastguard/controller/kube/crdv1"
	"github.com/eastguard/eastguard/controller/policyrepo"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
)

// ConditionValid is the condition every custom resource carries: True
// when the object is in force as it is, False with the reason and the
// diagnostics ("path: message", as `egctl validate` says them) when not.
const ConditionValid = crdv1.ConditionValid

// Reasons of the Valid condition, also the reasons of the Events.
const (
	ReasonAccepted = "Accepted"
	// ReasonInvalid: the object does not validate (alone or with the rest
	// of the policy); its last valid version, if it had one, stays in
	// force.
	ReasonInvalid = "Invalid"
	// ReasonNotApplied: the policy as a whole could not be changed (it
	// does not compile, the store failed); nothing changed and the change
	// is retried.
	ReasonNotApplied = "NotApplied"
)

// fieldManager names the controller's writes to status.
const fieldManager = "eastguard-controller"

// customObject is a custom resource with the policy document it stands
// for.
type customObject struct {
	kind string
	u    *unstructured.Unstructured
	obj  policyrepo.SourceObject
}

func newCustomObject(kind string, u *unstructured.Unstructured) customObject {
	name := u.GetName()
	// An object that cannot be rendered (it says it is another kind)
	// gets no document: Sync refuses it as not holding the resource.
	doc, _ := crdv1.Document(kind, u)
	return customObject{kind: kind, u: u, obj: policyrepo.SourceObject{
		Key:  store.ResourceKey{Kind: kind, Name: name},
		File: kind + "." + crdv1.Group + " " + name,
		Doc:  doc,
	}}
}

// condition is the Valid condition the controller wants on an object.
type condition struct {
	status  metav1.ConditionStatus
	reason  string
	message string
}

func conditionFailed(inv *policyrepo.InvalidError) *condition {
	msg := inv.Summary
	if len(inv.Diagnostics) > 0 {
		msg += ": " + strings.Join(inv.Diagnostics, "; ")
	}
	return &condition{status: metav1.ConditionFalse, reason: ReasonNotApplied, message: truncate(msg)}
}

func truncate(msg string) string {
	const maxMessage = 4096 // conditions and Events are not for megabytes
	if len(msg) > maxMessage {
		return msg[:maxMessage-3] + "..."
	}
	return msg
}

// report writes each custom resource's Valid condition where it differs
// from what the object has, with an Event at each change. failed, when
// set, is the condition of every object not yet accepted at its current
// generation (a sync that changed nothing).
func (s *Source) report(ctx context.Context, crs []customObject, refused map[store.ResourceKey]policy.Diagnostics, failed *condition) {
	for _, co := range crs {
		want := condition{status: metav1.ConditionTrue, reason: ReasonAccepted, message: "in force"}
		switch {
		case refused[co.obj.Key] != nil:
			want = condition{status: metav1.ConditionFalse, reason: ReasonInvalid, message: conditionMessage(refused[co.obj.Key])}
		case failed != nil:
			if observedGeneration(co.u) == co.u.GetGeneration() {
				continue
			}
			want = *failed
		}
		s.setCondition(ctx, co, want)
	}
}

// setCondition patches the object's status when its Valid condition or
// observed generation differ from want.
func (s *Source) setCondition(ctx context.Context, co customObject, want condition) {
	gen := co.u.GetGeneration()
	have, _ := currentCondition(co.u)
	if have != nil && have.Status == want.status && have.Reason == want.reason && have.Message == want.message &&
		have.ObservedGeneration == gen && observedGeneration(co.u) == gen {
		return
	}
	c := metav1.Condition{Type: ConditionValid, Status: want.status, Reason: want.reason, Message: want.message,
		ObservedGeneration: gen, LastTransitionTime: metav1.NewTime(time.Now().UTC().Truncate(time.Second))}
	if have != nil && have.Status == want.status {
		c.LastTransitionTime = have.LastTransitionTime
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{
		"observedGeneration": gen,
		"conditions":         []metav1.Condition{c},
	}})
	if err != nil {
		return
	}
	_, err = s.cfg.Dynamic.Resource(crdv1.Resources[co.kind]).Patch(ctx, co.u.GetName(), types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: fieldManager}, "status")
	if err != nil {
		s.log.Warn("cannot write the status of a custom resource", zap.String("kind", co.kind),
			zap.String("name", co.u.GetName()), zap.Error(err))
	}
	if have != nil && have.Status == want.status && have.Reason == want.reason && have.Message == want.message {
		return // only the generation moved: no news for people
	}
	if s.cfg.Events != nil {
		typ := corev1.EventTypeNormal
		if want.status != metav1.ConditionTrue {
			typ = corev1.EventTypeWarning
		}
		s.cfg.Events.Event(co.u, typ, want.reason, want.message)
	}
	if want.status != metav1.ConditionTrue {
		s.log.Warn("custom resource not in force as it is", zap.String("kind", co.kind), zap.String("name", co.u.GetName()),
			zap.String("reason", want.reason), zap.String("why", want.message))
	}
}

func observedGeneration(u *unstructured.Unstructured) int64 {
	g, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
	return g
}

// currentCondition reads the object's Valid condition, if it has one.
func currentCondition(u *unstructured.Unstructured) (*metav1.Condition, error) {
	list, ok, err := unstructured.NestedSlice(u.Object, "status", "conditions")
	if !ok || err != nil {
		return nil, err
	}
	for _, item := range list {
		raw, err := json.Marshal(item)
		if err != nil {
			return nil, err
		}
		var c metav1.Condition
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, err
		}
		if c.Type == ConditionValid {
			return &c, nil
		}
	}
	return nil, nil
}
