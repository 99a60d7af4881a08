// +kubebuilder:object:generate=true
// +groupName=eastguard.dev
// +versionName=v1

package crdv1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Group and Version of the custom resources; Group/Version is the
// apiVersion of the policy documents too (internal/policy.APIVersion).
const (
	Group   = "eastguard.dev"
	Version = "v1"
)

// The kinds, as in the policy documents.
const (
	KindPolicy    = "Policy"
	KindAlertRule = "AlertRule"
	KindWebhook   = "Webhook"
)

// ConditionValid is the condition type that says whether the resource is
// valid Eastguard policy (status True) or not (False, with the
// diagnostics, "path: message", as its message). The CRDs print it.
const ConditionValid = "Valid"

// SchemeGroupVersion is the group and version of the resources.
var SchemeGroupVersion = schema.GroupVersion{Group: Group, Version: Version}

// The resources, for the dynamic client and informers.
var (
	PolicyResource    = SchemeGroupVersion.WithResource("policies")
	AlertRuleResource = SchemeGroupVersion.WithResource("alertrules")
	WebhookResource   = SchemeGroupVersion.WithResource("webhooks")
)

// Resources maps each kind to its resource.
var Resources = map[string]schema.GroupVersionResource{
	KindPolicy:    PolicyResource,
	KindAlertRule: AlertRuleResource,
	KindWebhook:   WebhookResource,
}

var (
	// SchemeBuilder registers the types with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds the types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion,
		&Policy{}, &PolicyList{},
		&AlertRule{}, &AlertRuleList{},
		&Webhook{}, &WebhookList{},
	)
	metav1.AddToGroupVersion(s, SchemeGroupVersion)
	return nil
}
