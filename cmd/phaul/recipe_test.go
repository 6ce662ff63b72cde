package main

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/phaul/phaul/internal/testutil"
)

// TestCIRecipeEndToEnd runs the CI recipe of docs/ci.md (scripts/
// ci-recipe.sh) through `scripts/two-hosts.sh migrate` on two network
// namespace hosts: the tarball from `make dist` installed on both with
// its CRIU, the certificates shared, the service started from its config
// file, a workload migrated and checked. The recipe in docs/ci.md must be
// the script itself.
func TestCIRecipeEndToEnd(t *testing.T) {
	testutil.CRIU(t)
	root := filepath.Join("..", "..")
	script, _ := os.ReadFile(filepath.Join(root, "scripts", "ci-recipe.sh"))
	doc, _ := os.ReadFile(filepath.Join(root, "docs", "ci.md"))
	if len(script) == 0 || !strings.Contains(string(doc), "```bash\n"+string(script)+"```\n") {
		t.Error("docs/ci.md does not hold scripts/ci-recipe.sh as it is: copy it into the doc")
	}
	var b [3]byte
	rand.Read(b[:])
	name := "phci" + hex.EncodeToString(b[:])
	twoHosts := filepath.Join(root, "scripts", "two-hosts.sh")
	t.Cleanup(func() {
		if out, err := exec.Command(twoHosts, "down", name).CombinedOutput(); err != nil {
			t.Logf("two-hosts.sh down: %v\n%s", err, out)
		}
		if _, err := os.Stat("/tmp/phaul-two-hosts-" + name); err == nil {
			t.Error("two-hosts.sh down left its state directory")
		}
	})
	out, err := exec.Command(twoHosts, "migrate", name).CombinedOutput()
	if err != nil {
		t.Fatalf("two-hosts.sh migrate: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "== migrated: pid ") || !strings.Contains(string(out), "same token, memory ok") ||
		!strings.Contains(string(out), "== 10.77.0.10/24 moved: ") {
		t.Fatalf("the recipe did not say it migrated:\n%s", out)
	}
}
