// promqlcheck parses PromQL expressions with Prometheus' own parser (promtool cannot check a bare
// expression). Input on stdin: a JSON array of {"where": "...", "expr": "..."}; Grafana variables
// must already be substituted. Prints one line per bad expression and exits 1 if there is any.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/prometheus/prometheus/promql/parser"
)

type item struct {
	Where string `json:"where"`
	Expr  string `json:"expr"`
}

func main() {
	var items []item
	if err := json.NewDecoder(os.Stdin).Decode(&items); err != nil {
		fmt.Fprintln(os.Stderr, "promqlcheck: reading stdin:", err)
		os.Exit(2)
	}
	pql := parser.NewParser(parser.Options{})
	bad := 0
	for _, it := range items {
		if _, err := pql.ParseExpr(it.Expr); err != nil {
			bad++
			fmt.Printf("%s: %v\n    %s\n", it.Where, err, it.Expr)
		}
	}
	fmt.Fprintf(os.Stderr, "promqlcheck: %d expressions, %d invalid\n", len(items), bad)
	if bad > 0 {
		os.Exit(1)
	}
}
