// dashcheck checks Grafana dashboard JSON files against Grafana's dashboard schema, using the
// generated types of grafana-foundation-sdk: strict unmarshalling (unknown fields, wrong types and
// missing required fields are errors; panel options and queries are decoded per panel type and
// datasource through the SDK's plugin registry) followed by the SDK's Validate().
package main

import (
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dashcheck DASHBOARD.json...")
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins()
	failed := false
	for _, name := range os.Args[1:] {
		if err := check(name); err != nil {
			fmt.Printf("%s: %v\n", name, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func check(name string) error {
	raw, err := os.ReadFile(name)
	if err != nil {
		return err
	}
	var board dashboard.Dashboard
	if err := board.UnmarshalJSONStrict(raw); err != nil && !empty(err) {
		return err
	}
	if err := board.Validate(); err != nil && !empty(err) {
		return err
	}
	return nil
}

// empty: the SDK returns its error list type even when the list is empty.
func empty(err error) bool {
	list, ok := err.(cog.BuildErrors)
	return ok && len(list) == 0
}
