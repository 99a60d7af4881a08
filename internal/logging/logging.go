// Package logging builds the zap loggers of Eastguard's commands: JSON for
// production (one object per line, RFC 3339 times under "time"), console
// for people (the demo). Commands build one and pass it down; there is no
// global logger. Durations (zap.Duration) are written as Go duration
// strings with their unit, in both formats.
//
// It must not import anything of the project.
package logging

import (
	"fmt"
	"io"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a logger writing to w in format ("json" or "console") at
// level ("debug", "info", "warn", "error"). Errors name the flag at fault.
func New(format, level string, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = "time"
	encCfg.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	// Durations as Go duration strings ("1.5s", "250ms"): zap's default
	// writes bare seconds (1.5), a number without a unit that readers
	// take for milliseconds as often as not.
	encCfg.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	switch format {
	case "json":
		enc = zapcore.NewJSONEncoder(encCfg)
	case "console":
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	default:
		return nil, fmt.Errorf("--log-format %q: want json or console", format)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), lvl)), nil
}
