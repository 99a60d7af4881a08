package importer

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	netv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/eastguard/eastguard/internal/policy"
)

// The output's shape: the Eastguard policy language (docs/POLICY.md), in
// field order.
type outDoc struct {
	APIVersion string  `yaml:"apiVersion"`
	Kind       string  `yaml:"kind"`
	Metadata   outMeta `yaml:"metadata"`
	Spec       outSpec `yaml:"spec"`
	object     string
}

type outMeta struct {
	Name string `yaml:"name"`
}

type outSpec struct {
	Rules []outRule `yaml:"rules"`
}

type outRule struct {
	Name  string    `yaml:"name"`
	From  []outPeer `yaml:"from"`
	To    []outPeer `yaml:"to"`
	Ports []outPort `yaml:"ports,omitempty"`
}

type outPeer struct {
	// Selector is a pointer so that the empty selector (every managed
	// workload) is written as {}.
	Selector *map[string]string `yaml:"selector,omitempty"`
	CIDR     string             `yaml:"cidr,omitempty"`
	Except   []string           `yaml:"except,omitempty,flow"`
	World    bool               `yaml:"world,omitempty"`
	Host     bool               `yaml:"host,omitempty"`
}

type outPort struct {
	Protocol string `yaml:"protocol"`
	Port     int32  `yaml:"port,omitempty"`
	EndPort  int32  `yaml:"endPort,omitempty"`
}

// everyPeer is NetworkPolicy's empty from or to: every source or
// destination there is.
func everyPeer() []outPeer {
	return []outPeer{{Selector: &map[string]string{}}, {World: true}, {Host: true}}
}

type translator struct {
	named map[string][]int32
	warns []Warning
	// object, file and line of the NetworkPolicy being translated.
	object string
	file   string
	line   int
}

func (t *translator) warn(path, format string, args ...any) {
	t.warns = append(t.warns, Warning{Object: t.object, Path: path, Message: fmt.Sprintf(format, args...)})
}

func (t *translator) bad(path, format string, args ...any) error {
	return &InputError{File: t.file, Line: t.line, Path: path, Msg: fmt.Sprintf("NetworkPolicy %s: %s", t.object, fmt.Sprintf(format, args...))}
}

// policy translates one NetworkPolicy; nil (with a warning) when it cannot
// be expressed without allowing more than it does.
func (t *translator) policy(s source) (*outDoc, error) {
	np := &s.np
	t.object, t.file, t.line = np.Namespace+"/"+np.Name, s.file, s.line
	ingress, egress := false, len(np.Spec.Egress) > 0
	if len(np.Spec.PolicyTypes) == 0 {
		ingress = true
	} else {
		egress = false
		for i, pt := range np.Spec.PolicyTypes {
			switch pt {
			case netv1.PolicyTypeIngress:
				ingress = true
			case netv1.PolicyTypeEgress:
				egress = true
			default:
				return nil, t.bad(fmt.Sprintf("spec.policyTypes[%d]", i), "unknown policy type %q (Ingress or Egress)", pt)
			}
		}
	}
	targets, why := alternatives(&np.Spec.PodSelector, "")
	if why != "" {
		t.warn("spec.podSelector", "%s: the policy is not imported (dropping the expression would apply its rules to more pods)", why)
		return nil, nil
	}
	var target []outPeer
	for _, sel := range targets {
		sel[LabelNamespace] = np.Namespace
		target = append(target, outPeer{Selector: &sel})
	}
	t.warn("spec.podSelector", "Eastguard denies by default all traffic of every managed workload, NetworkPolicy only that of the pods a policy selects: applying the output denies the traffic of pods no policy selects, unless a rule allows it")
	switch {
	case !egress:
		t.warn("spec.policyTypes", "no Egress: NetworkPolicy leaves the selected pods' egress open, Eastguard denies what no rule allows")
	case !ingress:
		t.warn("spec.policyTypes", "no Ingress: NetworkPolicy leaves the selected pods' ingress open, Eastguard denies what no rule allows")
	}
	doc := &outDoc{APIVersion: "eastguard.dev/v1", Kind: "Policy", Metadata: outMeta{Name: np.Namespace + "." + np.Name}, object: t.object}
	doc.Spec.Rules = []outRule{}
	add := func(r *outRule, err error) error {
		if r != nil {
			doc.Spec.Rules = append(doc.Spec.Rules, *r)
		}
		return err
	}
	if ingress {
		for i, r := range np.Spec.Ingress {
			if err := add(t.rule("ingress", i, np.Namespace, r.From, r.Ports, target)); err != nil {
				return nil, err
			}
		}
	} else if len(np.Spec.Ingress) > 0 {
		t.warn("spec.ingress", "ignored: policyTypes has no Ingress")
	}
	if egress {
		for i, r := range np.Spec.Egress {
			if err := add(t.rule("egress", i, np.Namespace, r.To, r.Ports, target)); err != nil {
				return nil, err
			}
		}
	} else if len(np.Spec.Egress) > 0 {
		t.warn("spec.egress", "ignored: policyTypes has no Egress")
	}
	return doc, nil
}

// rule translates spec.ingress[i] (direction "ingress": from the peers to
// the target) or spec.egress[i] (from the target to the peers); nil when
// it is dropped.
func (t *translator) rule(direction string, i int, ns string, in []netv1.NetworkPolicyPeer, ports []netv1.NetworkPolicyPort, target []outPeer) (*outRule, error) {
	path := fmt.Sprintf("spec.%s[%d]", direction, i)
	field := ".from"
	if direction == "egress" {
		field = ".to"
	}
	peers, ok, err := t.peers(ns, in, path+field)
	if err != nil {
		return nil, err
	}
	out, portsOK, err := t.ports(ports, path+".ports")
	if err != nil || !ok || !portsOK {
		return nil, err
	}
	r := &outRule{Name: fmt.Sprintf("%s-%d", direction, i), From: peers, To: target, Ports: out}
	if direction == "egress" {
		r.From, r.To = target, peers
	}
	return r, nil
}

// peers translates a rule's from or to; ok is false (with a warning) when
// nothing of it can be expressed, so that the rule is dropped rather than
// read as "every peer".
func (t *translator) peers(ns string, in []netv1.NetworkPolicyPeer, path string) ([]outPeer, bool, error) {
	if len(in) == 0 {
		t.warn(path, "empty: every peer, which in Eastguard includes every managed workload; an Eastguard rule is an edge enforced at both ends, so this also allows the traffic at their own end, which NetworkPolicy leaves to the policies selecting them")
		return everyPeer(), true, nil
	}
	var out []outPeer
	edge := false
	for i, p := range in {
		pp := fmt.Sprintf("%s[%d]", path, i)
		if p.IPBlock != nil {
			if p.PodSelector != nil || p.NamespaceSelector != nil {
				return nil, false, t.bad(pp, "ipBlock cannot be combined with podSelector or namespaceSelector")
			}
			peer, err := t.ipBlock(p.IPBlock, pp+".ipBlock")
			if err != nil {
				return nil, false, err
			}
			out = append(out, peer)
			continue
		}
		if p.PodSelector == nil && p.NamespaceSelector == nil {
			return nil, false, t.bad(pp, "a peer needs podSelector, namespaceSelector or ipBlock")
		}
		var pods, nss []map[string]string
		var why, whyPath string
		if p.PodSelector != nil {
			pods, why = alternatives(p.PodSelector, "")
			whyPath = pp + ".podSelector"
		} else {
			pods = []map[string]string{{}}
		}
		if why == "" && p.NamespaceSelector != nil {
			nss, why = alternatives(p.NamespaceSelector, NamespaceLabelPrefix)
			whyPath = pp + ".namespaceSelector"
		} else if why == "" {
			nss = []map[string]string{{LabelNamespace: ns}}
		}
		if why != "" {
			t.warn(whyPath, "%s: the peer is dropped (the output allows less than the NetworkPolicy)", why)
			continue
		}
		for _, n := range nss {
			for _, pod := range pods {
				sel := make(map[string]string, len(n)+len(pod))
				for k, v := range n {
					sel[k] = v
				}
				for k, v := range pod {
					sel[k] = v
				}
				out = append(out, outPeer{Selector: &sel})
			}
		}
		edge = true
	}
	if len(out) == 0 {
		t.warn(path, "no peer could be translated: the rule is dropped")
		return nil, false, nil
	}
	if edge {
		t.warn(path, "an Eastguard rule is an edge enforced at both ends: it also allows this traffic at the selected pods' own end, which NetworkPolicy leaves to the policies selecting them")
	}
	return out, true, nil
}

func (t *translator) ipBlock(b *netv1.IPBlock, path string) (outPeer, error) {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return outPeer{}, t.bad(path+".cidr", "%q is not a CIDR", b.CIDR)
	}
	if m := cidr.Masked(); m != cidr {
		t.warn(path+".cidr", "%s has host bits set: read as %s", cidr, m)
		cidr = m
	}
	peer := outPeer{CIDR: cidr.String()}
	for j, e := range b.Except {
		ep := fmt.Sprintf("%s.except[%d]", path, j)
		ex, err := netip.ParsePrefix(e)
		if err != nil {
			return outPeer{}, t.bad(ep, "%q is not a CIDR", e)
		}
		if m := ex.Masked(); m != ex {
			t.warn(ep, "%s has host bits set: read as %s", ex, m)
			ex = m
		}
		if ex.Addr().Is4() != cidr.Addr().Is4() || ex.Bits() <= cidr.Bits() || !cidr.Contains(ex.Addr()) {
			return outPeer{}, t.bad(ep, "%s is not strictly inside %s", ex, cidr)
		}
		peer.Except = append(peer.Except, ex.String())
	}
	slices.Sort(peer.Except)
	peer.Except = slices.Compact(peer.Except)
	t.warn(path, "an Eastguard cidr also matches managed workloads whose addresses lie inside it; NetworkPolicy leaves pod addresses in an ipBlock to the implementation")
	return peer, nil
}

// ports translates a rule's ports; nil is every protocol and port. ok is
// false (with a warning) when every port was skipped: the rule must then
// be dropped, not read as every port.
func (t *translator) ports(in []netv1.NetworkPolicyPort, path string) ([]outPort, bool, error) {
	if len(in) == 0 {
		return nil, true, nil
	}
	var out []outPort
	for i, p := range in {
		pp := fmt.Sprintf("%s[%d]", path, i)
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		switch proto {
		case corev1.ProtocolTCP, corev1.ProtocolUDP:
		case corev1.ProtocolSCTP:
			t.warn(pp+".protocol", "SCTP: Eastguard has no SCTP; the port is skipped (SCTP stays denied)")
			continue
		default:
			return nil, false, t.bad(pp+".protocol", "unknown protocol %q (TCP, UDP or SCTP)", proto)
		}
		if p.Port == nil {
			if p.EndPort != nil {
				return nil, false, t.bad(pp+".endPort", "endPort needs port")
			}
			out = append(out, outPort{Protocol: string(proto)})
			continue
		}
		if p.Port.Type == intstr.String {
			if p.EndPort != nil {
				return nil, false, t.bad(pp+".endPort", "endPort needs a numeric port")
			}
			nums, ok := t.named[p.Port.StrVal]
			if !ok {
				t.warn(pp+".port", "named port %q cannot be resolved (give --named-ports or the Pods): the port is skipped", p.Port.StrVal)
				continue
			}
			if len(nums) > 1 {
				t.warn(pp+".port", "named port %q has several numbers %v: every one is allowed, for every selected pod", p.Port.StrVal, nums)
			}
			for _, n := range nums {
				out = append(out, outPort{Protocol: string(proto), Port: n})
			}
			continue
		}
		port := p.Port.IntVal
		if port < 1 || port > 65535 {
			return nil, false, t.bad(pp+".port", "port %d is not in 1-65535", port)
		}
		op := outPort{Protocol: string(proto), Port: port}
		if p.EndPort != nil {
			if *p.EndPort < port || *p.EndPort > 65535 {
				return nil, false, t.bad(pp+".endPort", "endPort %d is not in %d-65535", *p.EndPort, port)
			}
			if *p.EndPort > port {
				op.EndPort = *p.EndPort
			}
		}
		out = append(out, op)
	}
	if len(out) == 0 {
		t.warn(path, "no port could be translated: the rule is dropped")
		return nil, false, nil
	}
	return out, true, nil
}

// alternatives returns equality selectors (keys under prefix) whose union
// selects what sel does, or why that cannot be done: Eastguard selectors
// are label equality only, so NotIn, Exists and DoesNotExist cannot be
// expressed, and In becomes one selector per value.
func alternatives(sel *metav1.LabelSelector, prefix string) ([]map[string]string, string) {
	base := make(map[string]string)
	for k, v := range sel.MatchLabels {
		base[prefix+k] = v
	}
	alts := []map[string]string{base}
	for i, e := range sel.MatchExpressions {
		if e.Operator != metav1.LabelSelectorOpIn {
			return nil, fmt.Sprintf("matchExpressions[%d]: operator %s cannot be expressed (Eastguard selectors are label equality)", i, e.Operator)
		}
		values := slices.Clone(e.Values)
		slices.Sort(values)
		values = slices.Compact(values)
		key := prefix + e.Key
		var next []map[string]string
		for _, a := range alts {
			for _, v := range values {
				if have, ok := a[key]; ok && have != v {
					continue // contradicts: selects nothing
				}
				n := make(map[string]string, len(a)+1)
				for k, x := range a {
					n[k] = x
				}
				n[key] = v
				next = append(next, n)
			}
		}
		if len(next) > maxAlternatives {
			return nil, fmt.Sprintf("matchExpressions expand into more than %d selectors", maxAlternatives)
		}
		alts = next
	}
	if len(alts) == 0 {
		return nil, "the selector selects nothing (contradictory matchLabels and matchExpressions)"
	}
	slices.SortFunc(alts, func(a, b map[string]string) int {
		return strings.Compare(policy.Labels(a).String(), policy.Labels(b).String())
	})
	return alts, ""
}
