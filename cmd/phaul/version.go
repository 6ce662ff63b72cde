package main

import (
	"context"
	"fmt"
	"runtime"

	"github.com/spf13/pflag"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/cli"
)

var versionCmd = &cli.Command{
	Name:    "version",
	Summary: "print phaul's version and the CRIU it would use",
	Exit: `0  printed (a missing CRIU is reported, not a failure)
2  bad command line`,
	Flags: func(fs *pflag.FlagSet) {
		fs.Bool("json", false, "print one JSON object")
	},
	Run: func(ctx context.Context, env *cli.Env, fs *pflag.FlagSet, args []string) error {
		if len(args) != 0 {
			return cli.Usagef("version takes no arguments")
		}
		asJSON, _ := fs.GetBool("json")
		out := struct {
			Phaul     string `json:"phaul"`
			Go        string `json:"go"`
			CRIUPath  string `json:"criu_path,omitempty"`
			CRIU      string `json:"criu,omitempty"`
			CRIUError string `json:"criu_error,omitempty"`
		}{Phaul: cli.PhaulVersion(), Go: runtime.Version()}
		if path, err := criu.Locate(); err != nil {
			out.CRIUError = err.Error()
		} else {
			out.CRIUPath = path
			c := criu.ClientFor(path, env.Logger)
			if v, err := c.Version(ctx); err != nil {
				out.CRIUError = err.Error()
			} else {
				out.CRIU = v.String()
			}
		}
		if asJSON {
			return cli.WriteJSON(env.Stdout, out)
		}
		fmt.Fprintf(env.Stdout, "phaul %s (%s)\n", out.Phaul, out.Go)
		if out.CRIU != "" {
			fmt.Fprintf(env.Stdout, "criu %s at %s\n", out.CRIU, out.CRIUPath)
		} else {
			fmt.Fprintf(env.Stdout, "criu: %s\n", out.CRIUError)
		}
		return nil
	},
}
