// Package bench measures checkpoint speed against the disk's own: `ringo
// bench ckpt` writes one plain file of the same size (fsynced) and reads it
// back, then saves and loads a checkpoint of that size from np ranks
// (goroutines coordinated in process), and times how long an asynchronous
// save holds the caller up next to a plain memory copy of the state.
package bench
