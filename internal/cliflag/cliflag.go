// Package cliflag holds the flag.Value types the commands share: a
// comma-separated repeatable list and a size with units. It must not
// import anything of the project.
package cliflag

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// List is a repeatable flag whose values may also be comma-separated;
// empty items are dropped.
type List []string

func (l *List) String() string { return strings.Join(*l, ",") }

// Set adds the comma-separated items of v.
func (l *List) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// ByteSize is a size flag: a number of bytes with an optional unit (KB,
// MB, GB, TB in powers of 1000; KiB, MiB, GiB, TiB in powers of 1024).
type ByteSize int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

// String prints the size in the largest binary unit that divides it.
func (b *ByteSize) String() string {
	for _, u := range sizeUnits[:4] {
		if v := int64(*b); v >= u.mult && v%u.mult == 0 && (u.mult == 1<<40 || v%(u.mult<<10) != 0) {
			return fmt.Sprintf("%d%s", v/u.mult, u.suffix)
		}
	}
	return strconv.FormatInt(int64(*b), 10)
}

// Set parses a size such as 4GiB, 500MB or 1048576.
func (b *ByteSize) Set(s string) error {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v < 0 || v > math.MaxInt64/mult {
		return fmt.Errorf("%q is not a size such as 4GiB, 500MB or 1048576", s)
	}
	*b = ByteSize(v * mult)
	return nil
}
