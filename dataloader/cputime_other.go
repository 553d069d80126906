//go:build !unix

package dataloader

import "time"

func cpuTime() (time.Duration, bool) { return 0, false }
