// alloycheck parses Grafana Alloy configuration files with Alloy's own syntax parser and prints
// the top-level blocks (component name and label), one per line. Exit 1 on a syntax error.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/grafana/alloy/syntax/ast"
	"github.com/grafana/alloy/syntax/parser"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: alloycheck FILE.alloy...")
		os.Exit(2)
	}
	failed := false
	for _, name := range os.Args[1:] {
		data, err := os.ReadFile(name)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			failed = true
			continue
		}
		file, err := parser.ParseFile(name, data)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			failed = true
			continue
		}
		for _, stmt := range file.Body {
			if block, ok := stmt.(*ast.BlockStmt); ok {
				fmt.Printf("%s %s\n", strings.Join(block.Name, "."), block.Label)
			}
		}
	}
	if failed {
		os.Exit(1)
	}
}
