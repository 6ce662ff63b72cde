package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/pflag"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/cli"
	"github.com/phaul/phaul/precheck"
)

var completionCmd = &cli.Command{
	Name:    "completion",
	Args:    "bash",
	Summary: "print a bash completion script for phaul",
	Help: `Completes commands, their flags, the values of flags that take one of a
few words (--manage-cgroups, --tty, --skip-check, --cpu-cap, --log-format),
directories for --*-dir flags and DIR arguments, and PIDs. Load it with:

  source <(phaul completion bash)

or install it for everyone:

  phaul completion bash > /etc/bash_completion.d/phaul`,
	Exit: `0  printed
2  bad command line (another shell than bash)`,
	Run: func(ctx context.Context, env *cli.Env, fs *pflag.FlagSet, args []string) error {
		if len(args) != 1 || args[0] != "bash" {
			return cli.Usagef("completion needs one argument, bash (the only shell supported)")
		}
		return writeBashCompletion(env.Stdout, "phaul", commands)
	},
}

// The completion command lists the commands, itself among them.
func init() { commands = append(commands, completionCmd) }

// flagWords are the values offered after a flag that takes one of a few
// words.
func flagWords() map[string][]string {
	modes := make([]string, 0, len(criu.CgroupModes))
	for name := range criu.CgroupModes {
		modes = append(modes, name)
	}
	sort.Strings(modes)
	return map[string][]string{
		"manage-cgroups": modes,
		"tty":            {"pty", "null", "file:"},
		"skip-check":     precheck.Names,
		"cpu-cap":        {"fpu", "cpu", "ins", "all", "none"},
		"log-format":     {"auto", "text", "json"},
		"files":          {"carry", "check"},
		"precopy":        {"auto", "on", "off"},
	}
}

// writeBashCompletion writes a completion function for prog's commands.
func writeBashCompletion(w io.Writer, prog string, cmds []*cli.Command) error {
	var names []string
	var cases strings.Builder
	words := flagWords()
	for _, c := range cmds {
		names = append(names, c.Name)
		fs := cli.CommandFlags(prog, c)
		var flags, valued []string
		fs.VisitAll(func(f *pflag.Flag) {
			flags = append(flags, "--"+f.Name)
			if f.Shorthand != "" {
				flags = append(flags, "-"+f.Shorthand)
			}
			if t := f.Value.Type(); t != "bool" && t != "count" {
				valued = append(valued, "--"+f.Name)
			}
		})
		for _, n := range cli.CommonFlagNames() {
			flags = append(flags, "--"+n)
		}
		flags = append(flags, "-v", "--help")
		valued = append(valued, "--log-format")
		fmt.Fprintf(&cases, "\t%s)\n\t\tflags=%q\n\t\tvalued=%q\n\t\targs=%q\n\t\t;;\n",
			c.Name, strings.Join(flags, " "), " "+strings.Join(valued, " ")+" ", c.Args)
	}
	sort.Strings(names)
	var values strings.Builder
	keys := make([]string, 0, len(words))
	for k := range words {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&values, "\t--%s) COMPREPLY=($(compgen -W %q -- \"$cur\")); return ;;\n", k, strings.Join(words[k], " "))
	}
	_, err := fmt.Fprintf(w, bashTemplate, prog, prog, strings.Join(names, " "), cases.String(), values.String(), prog, prog)
	return err
}

const bashTemplate = `# bash completion for %s (phaul completion bash)
_%s() {
	local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
	if [ "$COMP_CWORD" -eq 1 ]; then
		COMPREPLY=($(compgen -W "%s help" -- "$cur"))
		return
	fi
	local flags= valued= args=
	case ${COMP_WORDS[1]} in
%s	esac
	case $prev in
%s	--*-dir|--work-dir|--tls-dir) COMPREPLY=($(compgen -d -- "$cur")); return ;;
	esac
	if [[ $valued == *" $prev "* ]]; then
		COMPREPLY=()
		return
	fi
	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W "$flags" -- "$cur"))
		return
	fi
	# The positional argument being completed: count the words before it
	# that are not flags or flag values.
	local i n=0 w
	for ((i = 2; i < COMP_CWORD; i++)); do
		w=${COMP_WORDS[i]}
		if [[ $w == -* ]]; then
			[[ $valued == *" $w "* ]] && ((i++))
			continue
		fi
		((n++))
	done
	local -a want=($args)
	case ${want[n]} in
	PID) COMPREPLY=($(compgen -W "$(cd /proc && ls -d [0-9]* 2>/dev/null)" -- "$cur")) ;;
	DIR) COMPREPLY=($(compgen -d -- "$cur")) ;;
	bash) COMPREPLY=($(compgen -W "bash" -- "$cur")) ;;
	*) COMPREPLY=() ;;
	esac
}
complete -F _%s %s
`
