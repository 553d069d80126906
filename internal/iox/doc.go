// Package iox holds small I/O helpers shared by packages that write
// durable files (checkpoint shards, dataset shards). It is not API.
package iox
