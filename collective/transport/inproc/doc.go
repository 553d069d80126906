// Package inproc is a Transport between goroutines of one process. It
// copies every payload and exists for fast tests of the layers above: the
// conformance suite runs on it and on TCP alike. Kill simulates a rank's
// process dying, so the dead-peer cases can be tested without processes.
package inproc
