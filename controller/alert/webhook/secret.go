package webhook

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/eastguard/eastguard/internal/policy"
)

// readSecret reads a webhook's HMAC secret where the policy says it is.
// It is read at every attempt, so a secret file rotated in place (a
// mounted Kubernetes Secret, say) takes effect without a restart; an
// environment variable cannot change under a running process anyway. An empty secret is an error: signing with it
// would give receivers a signature anyone can forge.
func readSecret(ref *policy.SecretRef) ([]byte, error) {
	switch {
	case ref == nil:
		return nil, errors.New("no secret configured")
	case ref.Env != "":
		v, ok := os.LookupEnv(ref.Env)
		if !ok {
			return nil, fmt.Errorf("secret env %s is not set", ref.Env)
		}
		if v == "" {
			return nil, fmt.Errorf("secret env %s is empty", ref.Env)
		}
		return []byte(v), nil
	case ref.File != "":
		b, err := os.ReadFile(ref.File)
		if err != nil {
			// The path error names the file and never the content.
			return nil, fmt.Errorf("secret file: %w", err)
		}
		// Editors and `echo` end files with a newline that is not part
		// of the secret; exactly one is removed so a secret may still
		// end in whitespace on purpose.
		s := string(b)
		if t, ok := strings.CutSuffix(s, "\n"); ok {
			s = strings.TrimSuffix(t, "\r")
		}
		if s == "" {
			return nil, fmt.Errorf("secret file %s is empty", ref.File)
		}
		return []byte(s), nil
	default:
		return nil, errors.New("secretFrom names neither env nor file")
	}
}
