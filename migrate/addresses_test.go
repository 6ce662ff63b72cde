package migrate

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/phaul/phaul/netmove"
)

// CRIU prints "inet CRIU-<run id>" into 32 bytes: the table's name is
// what fits.
func TestCRIULockTable(t *testing.T) {
	for id, want := range map[string]string{
		"7d02383e-cd8e-48f8-ae1b-0123456789ab": "CRIU-7d02383e-cd8e-48f8-ae",
		"short":                                "CRIU-short",
		"":                                     "CRIU-",
	} {
		if got := criuLockTable(id); got != want || len("inet "+got) > 31 {
			t.Errorf("%q: %q, want %q", id, got, want)
		}
	}
}

func TestMovedReport(t *testing.T) {
	moves := []netmove.Assigned{
		{Prefix: netip.MustParsePrefix("10.0.0.5/24"), Link: "eth0"},
		{Prefix: netip.MustParsePrefix("fd00::5/64"), Link: "eth0"},
	}
	got := movedReport(moves, []string{"10.0.0.5/24 on eth1"})
	want := []string{"10.0.0.5/24: eth0 -> eth1", "fd00::5/64: eth0 -> ?"}
	if !slices.Equal(got, want) {
		t.Errorf("%q, want %q", got, want)
	}
	if p := placed(moves); len(p) != 2 || p[1].Prefix != "fd00::5/64" || p[1].Link != "eth0" {
		t.Errorf("placed: %+v", p)
	}
	if a, err := placed(moves)[0].assigned(); err != nil || a != moves[0] {
		t.Errorf("assigned: %v %v", a, err)
	}
	if _, err := (placedAddress{Prefix: "nonsense"}).assigned(); err == nil {
		t.Error("a bad recorded address is accepted")
	}
}
