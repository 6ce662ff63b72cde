package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/phaul/phaul/internal/cli"
	"github.com/phaul/phaul/transport"
)

var certsCmd = &cli.Command{
	Name:    "certs",
	Args:    "DIR",
	Summary: "create a private CA and a server and a client certificate in DIR",
	Help: `Copy DIR to both hosts (to /etc/phaul/tls by default): phaul-service uses
server.pem and server-key.pem, phaul migrate uses client.pem and
client-key.pem, and both trust only ca.pem. The CA's key is not kept unless
--keep-ca-key, so no other certificate can ever be signed by this CA.`,
	Exit: `0  written
1  not written (DIR cannot be made or written)
2  bad command line`,
	Flags: func(fs *pflag.FlagSet) {
		fs.StringSlice("host", nil, "extra name or IP address for the server certificate (repeatable); "+transport.TLSServerName+" is always included")
		fs.Duration("valid", 5*365*24*time.Hour, "validity of the certificates")
		fs.Bool("keep-ca-key", false, "also write ca-key.pem")
	},
	Run: func(ctx context.Context, env *cli.Env, fs *pflag.FlagSet, args []string) error {
		if len(args) != 1 {
			return cli.Usagef("certs needs DIR")
		}
		hosts, _ := fs.GetStringSlice("host")
		valid, _ := fs.GetDuration("valid")
		keep, _ := fs.GetBool("keep-ca-key")
		if err := transport.GenerateCerts(args[0], hosts, valid, keep); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "wrote a CA, a server and a client certificate to %s; copy it to both hosts\n", args[0])
		return nil
	},
}
