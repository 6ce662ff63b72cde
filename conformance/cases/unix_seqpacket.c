/*
 * A unix SOCK_SEQPACKET socketpair with datagrams of several sizes queued
 * both ways (one way partly read): after the move each is read whole, one
 * per recv, in order, with its own length; then the pair still carries
 * datagrams both ways.
 */
#define TYPE SOCK_SEQPACKET
#include "unix_packets.h"
