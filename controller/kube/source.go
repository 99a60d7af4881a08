package kube

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/eastguard/eastguard/controller/kube/crdv1"
	"github.com/eastguard/eastguard/controller/policyrepo"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
)

// customSyncWait bounds the wait for a custom resource's cache before
// the next kind is looked at.
const customSyncWait = 30 * time.Second

// customKinds are the custom resources the controller watches, in the
// order it reads them.
var customKinds = []string{crdv1.KindPolicy, crdv1.KindAlertRule, crdv1.KindWebhook}

// Repo is the policy repository the source writes to
// (*policyrepo.Repo).
type Repo interface {
	Sync(ctx context.Context, source string, kinds []string, objs []policyrepo.SourceObject) (*policyrepo.SyncResult, error)
}

// Config configures a Source.
type Config struct {
	Client  Client
	Dynamic dynamic.Interface
	Repo    Repo
	Log     *zap.Logger
	// Quiet is how long the source waits after a change for more before
	// it syncs, and MaxDelay the longest it waits in a steady stream of
	// changes: a rollout of a thousand pods becomes a handful of
	// policy versions, and a single change is in force after about
	// Quiet. Defaults 200 ms and 1 s.
	Quiet, MaxDelay time.Duration
	// Resync is the informers' resync period and how often missing CRDs
	// are looked for again (default 1 minute).
	Resync time.Duration
	// Events records Events on the custom resources (nil: none).
	Events EventRecorder
	// Registry receives the source's metrics (nil: none).
	Registry prometheus.Registerer
}

// EventRecorder is the part of client-go's record.EventRecorder the
// source uses.
type EventRecorder interface {
	Event(object *unstructured.Unstructured, eventType, reason, message string)
}

// Source mirrors pods and custom resources into the repository.
type Source struct {
	cfg     Config
	log     *zap.Logger
	kick    chan struct{}
	metrics *metrics

	pods       listerscorev1.PodLister
	namespaces listerscorev1.NamespaceLister

	// mu guards custom: the listers of the custom resources whose
	// informers have synced, by kind.
	mu     sync.Mutex
	custom map[string]cache.GenericLister
	// informers are the custom resources' informers, by kind, made and
	// started once each; only the goroutine that runs startCustom touches
	// it (and Run's exit, after that goroutine ended).
	informers map[string]cache.SharedIndexInformer

	synced atomic.Bool
}

// New returns a source; Run starts it.
func New(cfg Config) *Source {
	if cfg.Quiet <= 0 {
		cfg.Quiet = 200 * time.Millisecond
	}
	if cfg.MaxDelay < cfg.Quiet {
		cfg.MaxDelay = max(time.Second, cfg.Quiet)
	}
	if cfg.Resync <= 0 {
		cfg.Resync = time.Minute
	}
	return &Source{cfg: cfg, log: cfg.Log, kick: make(chan struct{}, 1), metrics: newMetrics(cfg.Registry),
		custom: make(map[string]cache.GenericLister), informers: make(map[string]cache.SharedIndexInformer)}
}

// Synced reports whether the first sync after the informers' caches
// filled has been done: until then the policy in force is the one stored
// at the last sync.
func (s *Source) Synced() bool { return s.synced.Load() }

func (s *Source) changed() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// handler kicks a sync at every change.
func (s *Source) handler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.changed() },
		UpdateFunc: func(any, any) { s.changed() },
		DeleteFunc: func(any) { s.changed() },
	}
}

// Run watches until ctx is done. It syncs only once the pod and namespace
// caches are full: an empty cache would read as "every pod is gone".
func (s *Source) Run(ctx context.Context) error {
	// The informers are built here rather than by client-go's informer
	// factories, which import every API group (see the package comment):
	// the same ListWatch, indexers and resync as the factories'.
	c := s.cfg.Client
	podInf := newInformer(c, listWatchFuncs[*corev1.PodList]{c.ListPods, c.WatchPods}, &corev1.Pod{}, s.cfg.Resync, "pods")
	nsInf := newInformer(c, listWatchFuncs[*corev1.NamespaceList]{c.ListNamespaces, c.WatchNamespaces}, &corev1.Namespace{}, s.cfg.Resync, "namespaces")
	if _, err := podInf.AddEventHandler(s.handler()); err != nil {
		return err
	}
	if _, err := nsInf.AddEventHandler(s.handler()); err != nil {
		return err
	}
	// Only the fields the source reads are kept: a large cluster's pods
	// are mostly container specs and statuses nobody here needs.
	if err := podInf.SetTransform(trimPod); err != nil {
		return err
	}
	s.pods, s.namespaces = listerscorev1.NewPodLister(podInf.GetIndexer()), listerscorev1.NewNamespaceLister(nsInf.GetIndexer())
	// running counts every informer's goroutine (the custom resources'
	// too): Run returns only once all have stopped.
	var running sync.WaitGroup
	defer running.Wait()
	informerCtx, stopInformers := context.WithCancel(ctx)
	defer stopInformers()
	running.Go(func() { podInf.RunWithContext(informerCtx) })
	running.Go(func() { nsInf.RunWithContext(informerCtx) })
	s.log.Info("watching Kubernetes pods and namespaces")
	for typ, inf := range map[string]cache.SharedIndexInformer{"pods": podInf, "namespaces": nsInf} {
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("kubernetes: cache of %s did not sync", typ)
		}
	}
	// Pods first: a sync of the pods alone need not wait for the custom
	// resources' caches (their kinds are left as stored until theirs
	// have synced).
	s.changed()
	// The custom resources are looked for, and their caches waited for,
	// beside the sync loop: a CRD missing or unreadable never holds up
	// the pods.
	running.Go(func() {
		recheck := time.NewTicker(s.cfg.Resync)
		defer recheck.Stop()
		for {
			s.startCustom(informerCtx, &running)
			select {
			case <-informerCtx.Done():
				return
			case <-recheck.C:
			}
		}
	})

	retry := time.NewTimer(0)
	<-retry.C
	backoff := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-retry.C:
		case <-s.kick:
			if !s.settle(ctx) {
				return nil
			}
		}
		if err := s.syncOnce(ctx); err != nil {
			backoff = min(max(2*backoff, time.Second), 30*time.Second)
			s.log.Error("kubernetes objects not synced; retrying", zap.Duration("in", backoff), zap.Error(err))
			retry.Reset(backoff)
			continue
		}
		backoff = 0
	}
}

// settle waits until no change came for Quiet, or MaxDelay passed.
func (s *Source) settle(ctx context.Context) bool {
	deadline := time.Now().Add(s.cfg.MaxDelay)
	quiet := time.NewTimer(s.cfg.Quiet)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-s.kick:
			quiet.Reset(min(s.cfg.Quiet, max(time.Until(deadline), 0)))
		case <-quiet.C:
			return true
		}
	}
}

// startCustom starts the informers of the custom resources whose CRDs
// are installed and not watched yet (their goroutines counted in
// running), and waits for their caches.
func (s *Source) startCustom(ctx context.Context, running *sync.WaitGroup) {
	installed, err := s.installedKinds(ctx)
	if err != nil {
		s.log.Warn("cannot list the eastguard.dev custom resources; retrying", zap.Error(err))
		return
	}
	pending := make(map[string]cache.SharedIndexInformer)
	for _, kind := range customKinds {
		s.mu.Lock()
		watching := s.custom[kind] != nil
		s.mu.Unlock()
		gvr := crdv1.Resources[kind]
		if watching || !installed[gvr.Resource] {
			continue
		}
		// An informer is made and started once: one whose cache did
		// not fill in time keeps trying and is waited for again here.
		inf := s.informers[kind]
		if inf == nil {
			inf = newInformer(s.cfg.Dynamic, s.cfg.Dynamic.Resource(gvr), &unstructured.Unstructured{}, s.cfg.Resync, gvr.String())
			if _, err := inf.AddEventHandler(s.handler()); err != nil {
				s.log.Error("watch custom resource", zap.String("kind", kind), zap.Error(err))
				continue
			}
			s.informers[kind] = inf
			running.Go(func() { inf.RunWithContext(ctx) })
		}
		pending[kind] = inf
	}
	// Each kind is read as soon as its cache is full. Bounded: a cache
	// that cannot fill (its list forbidden to the controller) holds up
	// neither the pods nor the other kinds, and is waited for again at
	// the next look.
	var started []string
	deadline := time.Now().Add(customSyncWait)
	for len(pending) > 0 {
		for _, kind := range customKinds {
			if inf := pending[kind]; inf != nil && inf.HasSynced() {
				s.mu.Lock()
				s.custom[kind] = cache.NewGenericLister(inf.GetIndexer(), crdv1.Resources[kind].GroupResource())
				s.mu.Unlock()
				started = append(started, kind)
				delete(pending, kind)
			}
		}
		if len(pending) == 0 || !time.Now().Before(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	for _, kind := range customKinds {
		if pending[kind] != nil {
			s.log.Error("custom resources not readable; their objects stay as last synced (check the controller's RBAC)",
				zap.String("crd", crdv1.Resources[kind].Resource+"."+crdv1.Group), zap.Duration("waited", customSyncWait))
		}
	}
	if len(started) > 0 {
		s.log.Info("watching eastguard.dev custom resources", zap.Strings("kinds", started))
		s.changed()
	}
	for _, kind := range customKinds {
		if r := crdv1.Resources[kind].Resource; !installed[r] {
			s.log.Warn("custom resource definition not installed; its objects are not read until it is",
				zap.String("crd", r+"."+crdv1.Group))
		}
	}
}

// listWatcher is the list and watch of one resource: the dynamic
// client's, or Client's (listWatchFuncs).
type listWatcher[L runtime.Object] interface {
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// listWatchFuncs is a listWatcher of Client's methods.
type listWatchFuncs[L runtime.Object] struct {
	list  func(context.Context, metav1.ListOptions) (L, error)
	watch func(context.Context, metav1.ListOptions) (watch.Interface, error)
}

func (f listWatchFuncs[L]) List(ctx context.Context, opts metav1.ListOptions) (L, error) {
	return f.list(ctx, opts)
}

func (f listWatchFuncs[L]) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return f.watch(ctx, opts)
}

// newInformer makes a shared informer of the objects c lists (all
// namespaces'), indexed by namespace, as client-go's informer factories
// make them. client is the client c is part of: the fake clients say
// through it that they cannot serve the watch-list protocol, and the
// informer then lists and watches; the real ones (restClient, the
// dynamic client) serve it when client-go's WatchListClient feature is
// on.
func newInformer[L runtime.Object](client any, c listWatcher[L], obj runtime.Object, resync time.Duration, what string) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.List(ctx, o)
		},
		WatchFuncWithContext: c.Watch,
	}
	return cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, client), obj,
		cache.SharedIndexInformerOptions{
			ResyncPeriod:      resync,
			Indexers:          cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
			ObjectDescription: what,
		})
}

func (s *Source) installedKinds(ctx context.Context) (map[string]bool, error) {
	list, err := s.cfg.Client.ServerResources(ctx, crdv1.SchemeGroupVersion.String())
	if apierrors.IsNotFound(err) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool)
	for _, r := range list.APIResources {
		out[r.Name] = true
	}
	return out, nil
}

// syncOnce mirrors the caches into the repository as one change and
// writes the custom resources' conditions.
func (s *Source) syncOnce(ctx context.Context) error {
	kinds := []string{policy.KindWorkload}
	objs, err := s.podObjects()
	if err != nil {
		return err
	}
	s.mu.Lock()
	custom := make(map[string]cache.GenericLister, len(s.custom))
	for k, l := range s.custom {
		custom[k] = l
	}
	s.mu.Unlock()
	var crs []customObject
	for _, kind := range customKinds {
		l := custom[kind]
		if l == nil {
			continue
		}
		kinds = append(kinds, kind)
		items, err := l.List(labels.Everything())
		if err != nil {
			return fmt.Errorf("list %s: %w", crdv1.Resources[kind].Resource, err)
		}
		for _, it := range items {
			u, ok := it.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			co := newCustomObject(kind, u)
			crs = append(crs, co)
			objs = append(objs, co.obj)
		}
	}
	start := time.Now()
	res, err := s.cfg.Repo.Sync(ctx, store.SourceKubernetes, kinds, objs)
	s.metrics.synced(time.Since(start), objs, kinds, res)
	if err != nil {
		var inv *policyrepo.InvalidError
		if errors.As(err, &inv) {
			// Nothing changed: every changed object says so.
			s.report(ctx, crs, nil, conditionFailed(inv))
		}
		return err
	}
	s.synced.Store(true)
	if res.Change != nil {
		c := res.Change
		s.log.Info("kubernetes objects synced", zap.Duration("took", time.Since(start)),
			zap.Int("created", len(c.Created)), zap.Int("updated", len(c.Updated)), zap.Int("deleted", len(c.Deleted)),
			zap.Int("nodes-changed", len(c.Nodes)))
	}
	for k, diags := range res.Refused {
		if k.Kind == policy.KindWorkload {
			s.log.Warn("pod not mirrored as a workload", zap.String("pod", k.Name), zap.String("why", conditionMessage(diags)))
		}
	}
	s.report(ctx, crs, res.Refused, nil)
	return nil
}

func (s *Source) podObjects() ([]policyrepo.SourceObject, error) {
	pods, err := s.pods.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	nsLabels := make(map[string]map[string]string)
	var out []policyrepo.SourceObject
	for _, p := range pods {
		l, ok := nsLabels[p.Namespace]
		if !ok {
			ns, err := s.namespaces.Get(p.Namespace)
			if err != nil && !apierrors.IsNotFound(err) {
				return nil, err
			}
			l = namespaceLabels(ns)
			nsLabels[p.Namespace] = l
		}
		if o, ok := podWorkload(p, l); ok {
			out = append(out, o)
		}
	}
	slices.SortFunc(out, func(a, b policyrepo.SourceObject) int { return strings.Compare(a.Key.Name, b.Key.Name) })
	return out, nil
}

// trimPod keeps what podWorkload reads.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &corev1.Pod{}
	out.Name, out.Namespace, out.UID, out.Labels, out.ResourceVersion = p.Name, p.Namespace, p.UID, p.Labels, p.ResourceVersion
	if m := p.Annotations[ModeAnnotation]; m != "" {
		out.Annotations = map[string]string{ModeAnnotation: m}
	}
	out.DeletionTimestamp = p.DeletionTimestamp
	out.Spec.NodeName, out.Spec.HostNetwork, out.Spec.ServiceAccountName = p.Spec.NodeName, p.Spec.HostNetwork, p.Spec.ServiceAccountName
	out.Status.Phase, out.Status.PodIP, out.Status.PodIPs = p.Status.Phase, p.Status.PodIP, p.Status.PodIPs
	return out, nil
}
