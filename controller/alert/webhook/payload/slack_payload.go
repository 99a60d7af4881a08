package payload

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/eastguard/eastguard/controller/store"
)

// Slack incoming-webhook message: "text" is the fallback shown in
// notifications and by clients without blocks; "blocks" the message.
type slackMessage struct {
	Text   string       `json:"text"`
	Blocks []slackBlock `json:"blocks"`
}

type slackBlock struct {
	Type string    `json:"type"`
	Text slackText `json:"text"`
}

type slackText struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// slackSectionMax is Slack's limit on a section's text.
const slackSectionMax = 3000

// EncodeSlack returns the body of a slack delivery: a headline section
// (severity, rule, resolved or not) and a details section (source →
// destination port/protocol, verdict, deciding rule, count, node, first
// and last seen, dashboard link).
func EncodeSlack(m Message) ([]byte, error) {
	if m.Event != store.EventFiring && m.Event != store.EventResolved {
		return nil, fmt.Errorf("slack payload: event %q is not sent to slack webhooks", m.Event)
	}
	a := m.Alert
	sev := strings.ToUpper(a.Severity)
	badge := ":grey_question:"
	switch a.Severity {
	case "critical":
		badge = ":red_circle:"
	case "warning":
		badge = ":warning:"
	case "info":
		badge = ":information_source:"
	}
	word := sev
	if m.Event == store.EventResolved {
		badge, word = ":white_check_mark:", "RESOLVED"
	}
	flow := fmt.Sprintf("%s → %s %s", srcName(a), dstName(a), portProto(a))
	text := fmt.Sprintf("[%s] %s: %s %s by %s (count %d)", word, a.Rule, flow, a.Verdict, a.DecidingRule, a.Count)
	if nodeAlert(a) {
		text = fmt.Sprintf("[%s] %s: %s (count %d)", word, a.Rule, nodeSummary(a), a.Count)
	}

	headline := fmt.Sprintf("%s *%s* %s", badge, word, slackEscape(a.Rule))
	if m.Event == store.EventResolved {
		headline += " (" + slackEscape(a.Severity) + ")"
	}
	var details strings.Builder
	if nodeAlert(a) {
		fmt.Fprintf(&details, "Node *%s*: *%s*, %s\n`%s`\n", slackEscape(a.Node), slackEscape(a.Destination), slackEscape(a.Verdict), slackEscape(a.DecidingRule))
	} else {
		fmt.Fprintf(&details, "*%s* → *%s* `%s`\n", slackEscape(srcName(a)), slackEscape(dstName(a)), slackEscape(portProto(a)))
		fmt.Fprintf(&details, "Verdict: *%s* by `%s` on node %s\n", slackEscape(a.Verdict), slackEscape(a.DecidingRule), slackEscape(a.Node))
	}
	fmt.Fprintf(&details, "Count: %d, first seen %s, last seen %s", a.Count, slackDate(a.FirstSeen), slackDate(a.LastSeen))
	if note := foldedNote(a); note != "" {
		details.WriteString(slackEscape(note))
	}
	if m.Event == store.EventResolved && !a.ResolvedAt.IsZero() {
		fmt.Fprintf(&details, ", resolved %s", slackDate(a.ResolvedAt))
	}
	if m.Link != "" {
		fmt.Fprintf(&details, "\n<%s|Open alert %d in Eastguard>", m.Link, a.ID)
	}
	msg := slackMessage{Text: slackEscape(text), Blocks: []slackBlock{
		{Type: "section", Text: slackText{Type: "mrkdwn", Text: truncate(headline, slackSectionMax)}},
		{Type: "section", Text: slackText{Type: "mrkdwn", Text: truncate(details.String(), slackSectionMax)}},
	}}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("slack payload of alert %d: %w", a.ID, err)
	}
	return b, nil
}

// slackEscape escapes the three characters Slack's mrkdwn reserves, so a
// workload or rule name cannot inject a link or a mention.
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// slackDate lets each reader's Slack client show the time in their zone,
// with RFC 3339 UTC as the fallback.
func slackDate(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return fmt.Sprintf("<!date^%d^{date_short_pretty} {time_secs}|%s>", t.Unix(), timestamp(t))
}

func truncate(s string, maxRunes int) string {
	r := []rune(s)
	if len(r) <= maxRunes {
		return s
	}
	return string(r[:maxRunes-1]) + "…"
}
