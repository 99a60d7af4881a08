package join

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	k8stesting "k8s.io/client-go/testing"

	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/kube/kubefake"
)

const (
	ns       = "eastguard-system"
	sa       = "eastguard-agent"
	podName  = "eastguard-agent-abcde"
	podUID   = "11111111-2222-3333-4444-555555555555"
	saUser   = "system:serviceaccount:" + ns + ":" + sa
	tokenExp = 1_900_000_000
)

// fakeJWT is a token shaped like a projected one: TokenReview (faked)
// decides whether it is valid; Verify reads only its exp.
func fakeJWT() string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(`{"exp":1900000000,"jti":"from-jwt"}`)) + ".c2ln"
}

func goodStatus() authv1.TokenReviewStatus {
	return authv1.TokenReviewStatus{
		Authenticated: true,
		Audiences:     []string{"eastguard"},
		User: authv1.UserInfo{Username: saUser, Extra: map[string]authv1.ExtraValue{
			extraPodName:      {podName},
			extraPodUID:       {podUID},
			extraNodeName:     {"node-a"},
			extraCredentialID: {"JTI=abc"},
		}},
	}
}

func agentPod(node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: podName, Namespace: ns, UID: types.UID(podUID),
			CreationTimestamp: metav1.NewTime(time.Unix(1_800_000_000, 0))},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa},
	}
}

// setup makes a verifier whose apiserver answers TokenReviews with st
// (checking the request's token and audience) and holds objs.
func setup(t *testing.T, st authv1.TokenReviewStatus, objs ...runtime.Object) (*Verifier, *kubefake.Client) {
	t.Helper()
	client := kubefake.New(objs...)
	client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authv1.TokenReview)
		if tr.Spec.Token != fakeJWT() || len(tr.Spec.Audiences) != 1 || tr.Spec.Audiences[0] != "eastguard" {
			t.Errorf("TokenReview spec: token %q, audiences %v", tr.Spec.Token, tr.Spec.Audiences)
		}
		out := tr.DeepCopy()
		out.Status = st
		return true, out, nil
	})
	return NewVerifier(client, Config{AgentNamespace: ns, AgentServiceAccount: sa}), client
}

func TestVerifyGoodToken(t *testing.T) {
	v, _ := setup(t, goodStatus(), agentPod("node-a"))
	id, err := v.Verify(context.Background(), "node-a", fakeJWT())
	if err != nil {
		t.Fatal(err)
	}
	want := agentapi.ServiceAccountIdentity{Namespace: ns, ServiceAccount: sa, Pod: podName, PodUID: podUID,
		PodCreated: time.Unix(1_800_000_000, 0), CredentialID: "JTI=abc", Expires: time.Unix(tokenExp, 0)}
	if !id.PodCreated.Equal(want.PodCreated) || !id.Expires.Equal(want.Expires) {
		t.Fatalf("times: %+v, want %+v", id, want)
	}
	id.PodCreated, id.Expires, want.PodCreated, want.Expires = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if id != want {
		t.Fatalf("identity %+v, want %+v", id, want)
	}
}

func TestVerifyNoNodeClaimUsesPodAndJWTJTI(t *testing.T) {
	st := goodStatus()
	delete(st.User.Extra, extraNodeName)
	delete(st.User.Extra, extraCredentialID)
	v, _ := setup(t, st, agentPod("node-a"))
	id, err := v.Verify(context.Background(), "node-a", fakeJWT())
	if err != nil {
		t.Fatal(err)
	}
	if id.CredentialID != "JTI=from-jwt" {
		t.Fatalf("credential id %q, want the JWT's jti", id.CredentialID)
	}
	// Without the claim, the Pod lookup alone catches the other node.
	if _, err := v.Verify(context.Background(), "node-b", fakeJWT()); !errors.Is(err, agentapi.ErrServiceAccountDenied) ||
		!strings.Contains(err.Error(), "token belongs to pod "+ns+"/"+podName+" on node node-a, not node node-b") {
		t.Fatalf("other node: %v", err)
	}
}

func TestVerifyRefusals(t *testing.T) {
	deleting := agentPod("node-a")
	now := metav1.Now()
	deleting.DeletionTimestamp = &now
	recreated := agentPod("node-a")
	recreated.UID = "99999999-0000-0000-0000-000000000000"
	for _, tc := range []struct {
		name   string
		change func(*authv1.TokenReviewStatus)
		pod    *corev1.Pod
		node   string
		want   error
		msg    string
	}{
		{name: "unauthenticated", change: func(s *authv1.TokenReviewStatus) {
			*s = authv1.TokenReviewStatus{Error: "invalid bearer token"}
		}, want: agentapi.ErrServiceAccountInvalid, msg: `refuses it for audience "eastguard": invalid bearer token`},
		{name: "wrong audience", change: func(s *authv1.TokenReviewStatus) { s.Audiences = []string{"https://kubernetes.default.svc"} },
			want: agentapi.ErrServiceAccountInvalid, msg: `not for audience "eastguard"`},
		{name: "wrong service account", change: func(s *authv1.TokenReviewStatus) { s.User.Username = "system:serviceaccount:" + ns + ":default" },
			want: agentapi.ErrServiceAccountDenied, msg: `"system:serviceaccount:eastguard-system:default", not the agents' ServiceAccount`},
		{name: "wrong namespace", change: func(s *authv1.TokenReviewStatus) { s.User.Username = "system:serviceaccount:tenant:" + sa },
			want: agentapi.ErrServiceAccountDenied, msg: `"system:serviceaccount:tenant:eastguard-agent", not the agents' ServiceAccount`},
		{name: "not a service account", change: func(s *authv1.TokenReviewStatus) { s.User.Username = "kubernetes-admin" },
			want: agentapi.ErrServiceAccountDenied, msg: "not the agents' ServiceAccount"},
		{name: "legacy token without pod", change: func(s *authv1.TokenReviewStatus) { s.User.Extra = nil },
			want: agentapi.ErrServiceAccountDenied, msg: "not bound to a pod (a legacy Secret-based token?): give the agent a projected ServiceAccount token"},
		// The attack: an agent on node-b presents its own pod's valid
		// token and claims node-a.
		{name: "pod on another node", change: func(s *authv1.TokenReviewStatus) { delete(s.User.Extra, extraNodeName) },
			pod: agentPod("node-b"), want: agentapi.ErrServiceAccountDenied,
			msg: "token belongs to pod eastguard-system/eastguard-agent-abcde on node node-b, not node node-a"},
		{name: "node-name claim disagrees", change: func(s *authv1.TokenReviewStatus) { s.User.Extra[extraNodeName] = []string{"node-b"} },
			want: agentapi.ErrServiceAccountDenied, msg: "token belongs to pod eastguard-system/eastguard-agent-abcde on node node-b, not node node-a"},
		{name: "pod recreated", pod: recreated, want: agentapi.ErrServiceAccountDenied, msg: "(recreated)"},
		{name: "pod deleted", pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: ns}},
			want: agentapi.ErrServiceAccountDenied, msg: "which no longer exists"},
		{name: "pod being deleted", pod: deleting, want: agentapi.ErrServiceAccountDenied, msg: "being deleted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := goodStatus()
			if tc.change != nil {
				tc.change(&st)
			}
			pod := tc.pod
			if pod == nil {
				pod = agentPod("node-a")
			}
			v, _ := setup(t, st, pod)
			_, err := v.Verify(context.Background(), "node-a", fakeJWT())
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %v, want %v with %q", err, tc.want, tc.msg)
			}
			if strings.Contains(err.Error(), fakeJWT()) {
				t.Fatalf("the error carries the token: %v", err)
			}
		})
	}
}

func TestVerifyAPIServerErrorIsUnavailable(t *testing.T) {
	client := kubefake.New()
	client.PrependReactor("create", "tokenreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewServiceUnavailable("etcd is down")
	})
	v := NewVerifier(client, Config{AgentNamespace: ns, AgentServiceAccount: sa})
	if _, err := v.Verify(context.Background(), "node-a", fakeJWT()); !errors.Is(err, agentapi.ErrServiceAccountUnavailable) {
		t.Fatalf("TokenReview failing: %v, want ErrServiceAccountUnavailable", err)
	}
	// The pod lookup failing (not a NotFound) is unavailable too.
	v2, c2 := setup(t, goodStatus(), agentPod("node-a"))
	c2.PrependReactor("get", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewTimeoutError("slow", 1)
	})
	if _, err := v2.Verify(context.Background(), "node-a", fakeJWT()); !errors.Is(err, agentapi.ErrServiceAccountUnavailable) {
		t.Fatalf("pod lookup failing: %v, want ErrServiceAccountUnavailable", err)
	}
}

func TestVerifyUnconfigured(t *testing.T) {
	v := NewVerifier(kubefake.New(), Config{})
	_, err := v.Verify(context.Background(), "node-a", fakeJWT())
	if err == nil || errors.Is(err, agentapi.ErrServiceAccountDenied) || errors.Is(err, agentapi.ErrServiceAccountInvalid) {
		t.Fatalf("unconfigured verifier: %v, want a configuration error", err)
	}
}

func TestPublishCA(t *testing.T) {
	ctx := context.Background()
	client := kubefake.New()
	get := func() *corev1.ConfigMap {
		cm, err := client.CoreV1().ConfigMaps("ctl").Get(ctx, CAConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return cm
	}
	if err := PublishCA(ctx, client, "ctl", []byte("CA ONE")); err != nil {
		t.Fatal(err)
	}
	if got := get().Data[CAKey]; got != "CA ONE" {
		t.Fatalf("created with %q", got)
	}
	if err := PublishCA(ctx, client, "ctl", []byte("CA TWO")); err != nil {
		t.Fatal(err)
	}
	if got := get().Data[CAKey]; got != "CA TWO" {
		t.Fatalf("updated to %q", got)
	}
	before := len(client.Actions())
	if err := PublishCA(ctx, client, "ctl", []byte("CA TWO")); err != nil {
		t.Fatal(err)
	}
	for _, a := range client.Actions()[before:] {
		if a.GetVerb() != "get" {
			t.Fatalf("same content: %s %s, want only a get", a.GetVerb(), a.GetResource().Resource)
		}
	}
}
