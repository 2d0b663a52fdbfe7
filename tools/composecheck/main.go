// composecheck loads a Compose file with compose-go (the loader docker compose itself uses),
// interpolating from an env file, with schema validation and consistency checks on, and prints
// the resolved project as JSON for further cross-reference checks (scripts/validate_stack.py).
//
//	composecheck -f compose/docker-compose.yml -env .env.example > project.json
//
// Exit status 1 with the loader's message when the file is not valid.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	file := flag.String("f", "compose/docker-compose.yml", "compose file")
	envFile := flag.String("env", "", "env file to interpolate from (only this: the OS environment is ignored)")
	flag.Parse()

	abs, err := filepath.Abs(*file)
	if err != nil {
		fail(err)
	}
	opts := []cli.ProjectOptionsFn{
		cli.WithWorkingDirectory(filepath.Dir(abs)),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(false),
	}
	if *envFile != "" {
		opts = append(opts, cli.WithEnvFiles(*envFile), cli.WithDotEnv)
	}
	options, err := cli.NewProjectOptions([]string{abs}, opts...)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(out)
	os.Stdout.WriteString("\n")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "composecheck:", err)
	os.Exit(1)
}
