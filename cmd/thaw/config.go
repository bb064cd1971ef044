package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// applyConfig fills every flag of cmd that was not given on the command line
// from, in order of precedence, the THAW_<FLAG> environment variable (dashes
// become underscores; lists are comma-separated) and the YAML config file
// (keys are flag names; lists are YAML lists). Flags win over both. It returns
// the file's other top-level keys for the caller to interpret (auths).
func applyConfig(cmd *cobra.Command, file string) (map[string]any, error) {
	fileValues := map[string]any{}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("config file: %w", err)
		}
		// Numbers stay as written: as float64, 1000000 would print as 1e+06.
		if err := yaml.Unmarshal(b, &fileValues, func(d *json.Decoder) *json.Decoder { d.UseNumber(); return d }); err != nil {
			return nil, fmt.Errorf("config file %s: %w", file, err)
		}
	}
	flags := cmd.Flags()
	var errs []string
	flags.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "config" {
			delete(fileValues, f.Name)
			return
		}
		env := "THAW_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := setFlag(f, splitList(f, v)); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", env, err))
			}
			delete(fileValues, f.Name)
			return
		}
		v, ok := fileValues[f.Name]
		if !ok {
			return
		}
		delete(fileValues, f.Name)
		var values []string
		switch v := v.(type) {
		case []any:
			for _, e := range v {
				values = append(values, fmt.Sprint(e))
			}
		default:
			values = []string{fmt.Sprint(v)}
		}
		if err := setFlag(f, values); err != nil {
			errs = append(errs, fmt.Sprintf("%s: key %s: %v", file, f.Name, err))
		}
	})
	if len(errs) > 0 {
		return nil, fmt.Errorf("config: %s", strings.Join(errs, "; "))
	}
	return fileValues, nil
}

func splitList(f *pflag.Flag, v string) []string {
	if strings.HasSuffix(f.Value.Type(), "Slice") || strings.HasSuffix(f.Value.Type(), "Array") {
		return strings.Split(v, ",")
	}
	return []string{v}
}

func setFlag(f *pflag.Flag, values []string) error {
	for _, v := range values {
		if err := f.Value.Set(strings.TrimSpace(v)); err != nil {
			return err
		}
	}
	f.Changed = true
	return nil
}
