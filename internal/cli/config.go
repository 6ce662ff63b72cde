package cli

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// ApplyConfig fills the flags of fs that the command line did not set:
// first from the environment (envPrefix + the flag's name in upper case,
// dashes as underscores: PHAUL_SERVICE_WORK_DIR), then from the config
// file at path. Flags win over the environment, which wins over the file.
//
// The file holds one setting per line, "name = value", with the names of
// the long flags (without the dashes); blank lines and lines starting with
// # are ignored; a value may be put in double quotes. A missing file is
// not an error unless required. Errors name the file and line, or the
// variable.
func ApplyConfig(fs *pflag.FlagSet, path string, required bool, envPrefix string, skip ...string) error {
	skipped := map[string]bool{"help": true}
	for _, s := range skip {
		skipped[s] = true
	}
	settable := func(name string) bool {
		f := fs.Lookup(name)
		return f != nil && !skipped[name]
	}
	var errs []error
	fromEnv := map[string]bool{}
	fs.VisitAll(func(f *pflag.Flag) {
		if skipped[f.Name] || f.Changed {
			return
		}
		key := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(key); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("environment %s: %w", key, err))
			}
			fromEnv[f.Name] = true
		}
	})
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if path == "" {
		return nil
	}
	file, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) && !required {
		return nil
	}
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	seen := map[string]int{}
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if !ok || name == "" {
			return fmt.Errorf("%s:%d: want \"name = value\", got %q", path, n, line)
		}
		if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
			value = value[1 : len(value)-1]
		}
		if !settable(name) {
			return fmt.Errorf("%s:%d: unknown setting %q (the settings are the long flags of --help, without the dashes)", path, n, name)
		}
		if prev, dup := seen[name]; dup {
			return fmt.Errorf("%s:%d: %s is already set on line %d", path, n, name, prev)
		}
		seen[name] = n
		if fs.Lookup(name).Changed || fromEnv[name] {
			continue // the command line or the environment wins
		}
		if err := fs.Set(name, value); err != nil {
			return fmt.Errorf("%s:%d: %s: %w", path, n, name, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}
