// Package conformance holds phaul's conformance corpus: small C programs
// (cases/*.c), each setting up one kind of kernel state (pipes with data in
// them, stopped tasks, zombies, timers, locks, memory of every kind...),
// then checking after a checkpoint and restore that the state survived.
// The test runs each case twice, through CRIU alone (dump and restore on
// one host through package criu, with the options CRIU needs for it) and
// through `phaul migrate` between the two network-namespace hosts (with
// no option at all: phaul must choose what CRIU needs). A case CRIU alone
// moves must move through phaul; a case CRIU itself cannot move says why
// in its source (criu-cannot), and phaul must refuse it without changing
// the workload.
package conformance
