package join

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The ConfigMap agents mount to trust the controller on their first join
// (eastguard-agent --ca-file).
const (
	CAConfigMap = "eastguard-ca"
	CAKey       = "ca.crt"
)

// PublishCA makes the ConfigMap CAConfigMap in namespace (the
// controller's) hold caPEM under CAKey: it creates it, or updates it when
// its content differs, and leaves it alone otherwise. Other keys and the
// ConfigMap's metadata are kept.
func PublishCA(ctx context.Context, client Client, namespace string, caPEM []byte) error {
	for range 3 { // a concurrent create or update: read again
		cm, err := client.GetConfigMap(ctx, namespace, CAConfigMap)
		if apierrors.IsNotFound(err) {
			_, err = client.CreateConfigMap(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: CAConfigMap, Namespace: namespace,
					Labels: map[string]string{"app.kubernetes.io/part-of": "eastguard"}},
				Data: map[string]string{CAKey: string(caPEM)},
			})
			if apierrors.IsAlreadyExists(err) {
				continue
			}
			if err != nil {
				return fmt.Errorf("create configmap %s/%s: %w", namespace, CAConfigMap, err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("get configmap %s/%s: %w", namespace, CAConfigMap, err)
		}
		if cm.Data[CAKey] == string(caPEM) {
			return nil
		}
		cm = cm.DeepCopy()
		cm.Namespace = namespace // where it was read: the update goes there
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[CAKey] = string(caPEM)
		_, err = client.UpdateConfigMap(ctx, cm)
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("update configmap %s/%s: %w", namespace, CAConfigMap, err)
		}
		return nil
	}
	return fmt.Errorf("configmap %s/%s: changed concurrently three times; not published", namespace, CAConfigMap)
}
