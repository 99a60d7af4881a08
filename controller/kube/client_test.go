package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"

	"github.com/eastguard/eastguard/controller/kube/crdv1"
)

// request is what the fake apiserver received.
type request struct {
	method, path, query, contentType, accept, userAgent string
	body                                                []byte
}

// apiserver is an httptest server answering with handle and recording
// every request.
type apiserver struct {
	t    *testing.T
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []request
}

func newAPIServer(t *testing.T, handle func(w http.ResponseWriter, r request)) *apiserver {
	t.Helper()
	a := &apiserver{t: t}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, hr *http.Request) {
		body, err := io.ReadAll(hr.Body)
		if err != nil {
			t.Errorf("read body: %v", err)
		}
		r := request{method: hr.Method, path: hr.URL.Path, query: hr.URL.RawQuery, contentType: hr.Header.Get("Content-Type"),
			accept: hr.Header.Get("Accept"), userAgent: hr.Header.Get("User-Agent"), body: body}
		a.mu.Lock()
		a.reqs = append(a.reqs, r)
		a.mu.Unlock()
		handle(w, r)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *apiserver) requests() []request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]request(nil), a.reqs...)
}

func (a *apiserver) client() Client {
	a.t.Helper()
	c, _, err := NewClients(withAgent(&rest.Config{Host: a.srv.URL}))
	if err != nil {
		a.t.Fatal(err)
	}
	return c
}

// reply writes obj as the apiserver does (JSON, with its kind).
func reply(w http.ResponseWriter, code int, obj any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(obj)
}

func status(code int, reason metav1.StatusReason, msg string) *metav1.Status {
	return &metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
		Code: int32(code), Reason: reason, Message: msg}
}

// decode reads a request body in whatever encoding the client chose
// (protobuf for the built-in types).
func decode[T runtime.Object](t *testing.T, r request) T {
	t.Helper()
	obj, _, err := codecs.UniversalDeserializer().Decode(r.body, nil, nil)
	if err != nil {
		t.Fatalf("%s %s: body (%s) not decodable: %v", r.method, r.path, r.contentType, err)
	}
	out, ok := obj.(T)
	if !ok {
		t.Fatalf("%s %s: body is %T", r.method, r.path, obj)
	}
	return out
}

// TestRESTClientRequests: every Client call makes the request the typed
// clients made (path, verb, query, body) and decodes the answer, errors
// included.
func TestRESTClientRequests(t *testing.T) {
	pod := corev1.Pod{TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", UID: "u1", ResourceVersion: "7"},
		Spec:       corev1.PodSpec{NodeName: "node-a"}, Status: corev1.PodStatus{PodIP: "10.250.1.5"}}
	a := newAPIServer(t, func(w http.ResponseWriter, r request) {
		switch r.method + " " + r.path {
		case "GET /api/v1/pods":
			reply(w, 200, corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"},
				ListMeta: metav1.ListMeta{ResourceVersion: "9"}, Items: []corev1.Pod{pod}})
		case "GET /api/v1/namespaces":
			reply(w, 200, corev1.NamespaceList{TypeMeta: metav1.TypeMeta{Kind: "NamespaceList", APIVersion: "v1"},
				Items: []corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "a"}}}}})
		case "GET /api/v1/namespaces/shop/pods/web-1":
			reply(w, 200, pod)
		case "GET /api/v1/namespaces/shop/pods/gone":
			reply(w, 404, status(404, metav1.StatusReasonNotFound, `pods "gone" not found`))
		case "POST /apis/authentication.k8s.io/v1/tokenreviews":
			tr := decode[*authv1.TokenReview](t, r)
			tr.TypeMeta = metav1.TypeMeta{Kind: "TokenReview", APIVersion: "authentication.k8s.io/v1"}
			tr.Status = authv1.TokenReviewStatus{Authenticated: true, Audiences: tr.Spec.Audiences,
				User: authv1.UserInfo{Username: "system:serviceaccount:eg:agent"}}
			reply(w, 201, tr)
		case "GET /api/v1/namespaces/eg/configmaps/eastguard-ca":
			reply(w, 200, corev1.ConfigMap{TypeMeta: metav1.TypeMeta{Kind: "ConfigMap", APIVersion: "v1"},
				ObjectMeta: metav1.ObjectMeta{Name: "eastguard-ca", Namespace: "eg", ResourceVersion: "3"}, Data: map[string]string{"ca.crt": "A"}})
		case "POST /api/v1/namespaces/eg/configmaps", "POST /api/v1/namespaces/default/events":
			obj := decode[runtime.Object](t, r)
			obj.GetObjectKind().SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind(strings.TrimPrefix(fmt.Sprintf("%T", obj), "*v1.")))
			reply(w, 201, obj)
		case "PUT /api/v1/namespaces/eg/configmaps/eastguard-ca":
			reply(w, 409, status(409, metav1.StatusReasonConflict, "the object has been modified"))
		case "PUT /api/v1/namespaces/default/events/ev-1", "PATCH /api/v1/namespaces/default/events/ev-1":
			reply(w, 200, corev1.Event{TypeMeta: metav1.TypeMeta{Kind: "Event", APIVersion: "v1"},
				ObjectMeta: metav1.ObjectMeta{Name: "ev-1", Namespace: "default"}, Count: 2})
		case "GET /apis/eastguard.dev/v1":
			reply(w, 200, metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
				GroupVersion: "eastguard.dev/v1", APIResources: []metav1.APIResource{{Name: "policies", Kind: "Policy"}}})
		case "GET /apis/forged.dev/v1":
			reply(w, 200, metav1.APIResourceList{GroupVersion: "eastguard.dev/v1"})
		default:
			reply(w, 404, status(404, metav1.StatusReasonNotFound, "the server could not find the requested resource"))
		}
	})
	c := a.client()
	ctx := context.Background()
	last := func() request {
		reqs := a.requests()
		if len(reqs) == 0 {
			t.Fatal("no request")
		}
		return reqs[len(reqs)-1]
	}

	pods, err := c.ListPods(ctx, metav1.ListOptions{LabelSelector: "app=web", ResourceVersion: "0", Limit: 500})
	if err != nil || len(pods.Items) != 1 || pods.Items[0].Name != "web-1" || pods.Items[0].Status.PodIP != "10.250.1.5" || pods.ResourceVersion != "9" {
		t.Fatalf("ListPods: %+v, %v", pods, err)
	}
	r := last()
	for _, q := range []string{"labelSelector=app%3Dweb", "resourceVersion=0", "limit=500"} {
		if !strings.Contains(r.query, q) {
			t.Errorf("ListPods query %q lacks %s", r.query, q)
		}
	}
	if !strings.HasPrefix(r.accept, "application/vnd.kubernetes.protobuf") || !strings.Contains(r.accept, "application/json") {
		t.Errorf("ListPods Accept %q: want protobuf preferred, JSON accepted (as the typed clients)", r.accept)
	}
	if !strings.HasPrefix(r.userAgent, Component) {
		t.Errorf("User-Agent %q, want %s", r.userAgent, Component)
	}
	nss, err := c.ListNamespaces(ctx, metav1.ListOptions{})
	if err != nil || len(nss.Items) != 1 || nss.Items[0].Labels["team"] != "a" {
		t.Fatalf("ListNamespaces: %+v, %v", nss, err)
	}

	got, err := c.GetPod(ctx, "shop", "web-1")
	if err != nil || got.UID != "u1" || got.Spec.NodeName != "node-a" {
		t.Fatalf("GetPod: %+v, %v", got, err)
	}
	if _, err := c.GetPod(ctx, "shop", "gone"); !apierrors.IsNotFound(err) {
		t.Fatalf("GetPod of a missing pod: %v, want NotFound", err)
	}

	tr, err := c.CreateTokenReview(ctx, &authv1.TokenReview{Spec: authv1.TokenReviewSpec{Token: "tok", Audiences: []string{"eastguard"}}})
	if err != nil || !tr.Status.Authenticated || tr.Status.User.Username != "system:serviceaccount:eg:agent" || tr.Status.Audiences[0] != "eastguard" {
		t.Fatalf("CreateTokenReview: %+v, %v", tr, err)
	}
	if sent := decode[*authv1.TokenReview](t, last()); sent.Spec.Token != "tok" {
		t.Fatalf("TokenReview sent with token %q", sent.Spec.Token)
	}

	cm, err := c.GetConfigMap(ctx, "eg", "eastguard-ca")
	if err != nil || cm.Data["ca.crt"] != "A" || cm.ResourceVersion != "3" {
		t.Fatalf("GetConfigMap: %+v, %v", cm, err)
	}
	created, err := c.CreateConfigMap(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "eastguard-ca", Namespace: "eg"}, Data: map[string]string{"ca.crt": "B"}})
	if err != nil || created.Data["ca.crt"] != "B" {
		t.Fatalf("CreateConfigMap: %+v, %v", created, err)
	}
	if _, err := c.UpdateConfigMap(ctx, cm); !apierrors.IsConflict(err) {
		t.Fatalf("UpdateConfigMap answered 409: %v, want a Conflict", err)
	}
	if sent := decode[*corev1.ConfigMap](t, last()); sent.ResourceVersion != "3" || sent.Name != "eastguard-ca" {
		t.Fatalf("update sent %+v, want the read resourceVersion", sent.ObjectMeta)
	}

	ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "ev-1", Namespace: "default"}, Reason: "Invalid", Count: 1}
	if out, err := c.CreateEvent(ctx, ev); err != nil || out.Reason != "Invalid" {
		t.Fatalf("CreateEvent: %+v, %v", out, err)
	}
	if out, err := c.UpdateEvent(ctx, ev); err != nil || out.Count != 2 || last().method != http.MethodPut {
		t.Fatalf("UpdateEvent: %+v, %v", out, err)
	}
	patch := []byte(`{"count":2}`)
	if out, err := c.PatchEvent(ctx, ev, patch); err != nil || out.Count != 2 {
		t.Fatalf("PatchEvent: %+v, %v", out, err)
	}
	if r := last(); r.method != http.MethodPatch || r.contentType != "application/strategic-merge-patch+json" || string(r.body) != string(patch) {
		t.Fatalf("PatchEvent sent %s %s (%s) %q", r.method, r.path, r.contentType, r.body)
	}

	list, err := c.ServerResources(ctx, "eastguard.dev/v1")
	if err != nil || len(list.APIResources) != 1 || list.APIResources[0].Name != "policies" {
		t.Fatalf("ServerResources: %+v, %v", list, err)
	}
	if _, err := c.ServerResources(ctx, "absent.dev/v1"); !apierrors.IsNotFound(err) {
		t.Fatalf("ServerResources of an absent group: %v, want NotFound", err)
	}
	if _, err := c.ServerResources(ctx, "forged.dev/v1"); err == nil || !strings.Contains(err.Error(), "answered for eastguard.dev/v1") {
		t.Fatalf("ServerResources answered for another group: %v, want an error", err)
	}
}

// TestRESTClientRefusesBadInput: names that are not path segments, and
// objects without a namespace, are refused before any request: a name
// from a token's claims cannot address another resource, and an empty
// namespace would address every namespace's.
func TestRESTClientRefusesBadInput(t *testing.T) {
	a := newAPIServer(t, func(w http.ResponseWriter, r request) {
		reply(w, 500, status(500, metav1.StatusReasonInternalError, "unexpected request"))
	})
	c := a.client()
	ctx := context.Background()
	cases := map[string]func() error{
		"pod name ..":           func() error { _, err := c.GetPod(ctx, "shop", ".."); return err },
		"pod name with /":       func() error { _, err := c.GetPod(ctx, "shop", "web/../../secrets/x"); return err },
		"namespace with /":      func() error { _, err := c.GetPod(ctx, "kube-system/secrets", "x"); return err },
		"pod without namespace": func() error { _, err := c.GetPod(ctx, "", "web-1"); return err },
		"pod without name":      func() error { _, err := c.GetPod(ctx, "shop", ""); return err },
		"configmap no namespace": func() error {
			_, err := c.CreateConfigMap(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}})
			return err
		},
		"configmap update noname": func() error {
			_, err := c.UpdateConfigMap(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "eg"}})
			return err
		},
		"event no namespace": func() error {
			_, err := c.CreateEvent(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "e"}})
			return err
		},
		"event patch no name": func() error {
			_, err := c.PatchEvent(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "default"}}, []byte("{}"))
			return err
		},
		"discovery of core":       func() error { _, err := c.ServerResources(ctx, "v1"); return err },
		"discovery not a version": func() error { _, err := c.ServerResources(ctx, "a/b/c"); return err },
	}
	for name, call := range cases {
		if err := call(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if reqs := a.requests(); len(reqs) != 0 {
		t.Fatalf("bad input reached the apiserver: %+v", reqs)
	}
}

// TestRESTClientWatch: a watch asks with watch=true and the caller's
// options, and decodes the stream's events into typed objects.
func TestRESTClientWatch(t *testing.T) {
	a := newAPIServer(t, func(w http.ResponseWriter, r request) {
		if r.path != "/api/v1/namespaces" || !strings.Contains(r.query, "watch=true") {
			reply(w, 404, status(404, metav1.StatusReasonNotFound, "not a watch"))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(200)
		enc := json.NewEncoder(w)
		for _, e := range []struct {
			typ  watch.EventType
			name string
		}{{watch.Added, "shop"}, {watch.Modified, "shop"}, {watch.Deleted, "old"}} {
			_ = enc.Encode(map[string]any{"type": e.typ, "object": corev1.Namespace{
				TypeMeta: metav1.TypeMeta{Kind: "Namespace", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: e.name}}})
		}
	})
	c := a.client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := c.WatchNamespaces(ctx, metav1.ListOptions{ResourceVersion: "12", AllowWatchBookmarks: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	var got []string
	for e := range w.ResultChan() {
		ns, ok := e.Object.(*corev1.Namespace)
		if !ok {
			t.Fatalf("watch event %s carries %T", e.Type, e.Object)
		}
		got = append(got, string(e.Type)+" "+ns.Name)
	}
	if want := "ADDED shop,MODIFIED shop,DELETED old"; strings.Join(got, ",") != want {
		t.Fatalf("watch events %v, want %s", got, want)
	}
	q := a.requests()[0].query
	for _, want := range []string{"resourceVersion=12", "allowWatchBookmarks=true", "watch=true"} {
		if !strings.Contains(q, want) {
			t.Errorf("watch query %q lacks %s", q, want)
		}
	}
}

// TestEventRecorderOverRESTClient: an Event on a custom resource goes
// through client-go's broadcaster, the small scheme and the rest client
// to the default namespace, about the object.
func TestEventRecorderOverRESTClient(t *testing.T) {
	posted := make(chan *corev1.Event, 10)
	a := newAPIServer(t, func(w http.ResponseWriter, r request) {
		if r.method != http.MethodPost || r.path != "/api/v1/namespaces/default/events" {
			reply(w, 404, status(404, metav1.StatusReasonNotFound, "unexpected"))
			return
		}
		ev := decode[*corev1.Event](t, r)
		posted <- ev
		ev.TypeMeta = metav1.TypeMeta{Kind: "Event", APIVersion: "v1"}
		reply(w, 201, ev)
	})
	rec, stop := NewEventRecorder(a.client())
	defer stop()
	obj := &unstructured.Unstructured{}
	obj.SetGroupVersionKind(crdv1.SchemeGroupVersion.WithKind(crdv1.KindPolicy))
	obj.SetName("broken")
	obj.SetUID("p-1")
	rec.Event(obj, corev1.EventTypeWarning, "Invalid", "rule 1: no such port")
	select {
	case ev := <-posted:
		ref := ev.InvolvedObject
		if ref.Kind != crdv1.KindPolicy || ref.Name != "broken" || ref.UID != "p-1" || ref.APIVersion != crdv1.SchemeGroupVersion.String() ||
			ev.Reason != "Invalid" || ev.Type != corev1.EventTypeWarning || ev.Message != "rule 1: no such port" ||
			ev.Source.Component != Component || ev.Namespace != metav1.NamespaceDefault {
			t.Fatalf("event posted: %+v", ev)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("no event posted in 60 s; requests: %+v", a.requests())
	}
}
