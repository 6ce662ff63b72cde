// Package pb holds the protobuf messages of phaul's control stream,
// generated from phaul.proto (make proto). docs/protocol.md describes their
// order.
package pb
