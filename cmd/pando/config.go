package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Configuration precedence, one rule for every command and flag:
//
//	command-line flags  >  PANDO_* environment variables  >  --config file  >  defaults
//
// The environment variable of a flag is PANDO_ and the flag's name in
// capitals with - as _ (--data-dir: PANDO_DATA_DIR). The config file
// (--config FILE or PANDO_CONFIG) is a JSON object whose keys are flag
// names: {"id": 1, "data-dir": "/var/lib/pando", "initial-cluster": "..."}.
// A key that is no flag of the command is an error, so typos do not pass
// silently.

// envName is the environment variable of a flag.
func envName(flag string) string {
	return "PANDO_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// skipFlags are never read from the environment or a file.
var skipFlags = map[string]bool{"help": true, "config": true, "version": true}

// applyConfig fills the flags the command line did not set from the
// environment, then from the config file.
func applyConfig(cmd *cobra.Command, file string) error {
	var values map[string]json.RawMessage
	if file == "" {
		file = os.Getenv("PANDO_CONFIG")
	}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return usageError{fmt.Errorf("--config: %w", err)}
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		if err := dec.Decode(&values); err != nil {
			return usageError{fmt.Errorf("--config %s: not a JSON object of flag names to values: %v", file, err)}
		}
		var known []string
		cmd.Flags().VisitAll(func(f *pflag.Flag) {
			if !skipFlags[f.Name] {
				known = append(known, f.Name)
			}
		})
		sort.Strings(known)
		for k := range values {
			if f := cmd.Flags().Lookup(k); f == nil || skipFlags[k] {
				return usageError{fmt.Errorf("--config %s: %q is not a flag of `%s` (known: %s)", file, k, cmd.CommandPath(), strings.Join(known, ", "))}
			}
		}
	}
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || skipFlags[f.Name] {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if serr := f.Value.Set(v); serr != nil {
				err = usageError{fmt.Errorf("%s=%q: %v", envName(f.Name), v, serr)}
			}
			return
		}
		raw, ok := values[f.Name]
		if !ok {
			return
		}
		var v any
		if jerr := json.Unmarshal(raw, &v); jerr != nil {
			err = usageError{fmt.Errorf("--config %s: %q: %v", file, f.Name, jerr)}
			return
		}
		var s string
		switch x := v.(type) {
		case string:
			s = x
		case []any: // lists: ["a", "b"] for comma-separated flags
			parts := make([]string, len(x))
			for i, p := range x {
				parts[i] = fmt.Sprint(p)
			}
			s = strings.Join(parts, ",")
		case map[string]any: // {"1": "host:port"} for ID=ADDR lists
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			parts := make([]string, len(keys))
			for i, k := range keys {
				parts[i] = fmt.Sprintf("%s=%v", k, x[k])
			}
			s = strings.Join(parts, ",")
		case float64:
			s = json.Number(raw).String()
		default:
			s = fmt.Sprint(x)
		}
		if serr := f.Value.Set(s); serr != nil {
			err = usageError{fmt.Errorf("--config %s: %q: %v", file, f.Name, serr)}
		}
	})
	return err
}
