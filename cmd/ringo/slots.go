package main

import (
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/ringo-ml/ringo/device"
)

// The GPU inventory is read once per command: NVML's start-up is slow.
var inventory = sync.OnceValues(device.Discover)

// gpuIDs returns one CUDA_VISIBLE_DEVICES value per usable GPU: the
// entries of the user's CUDA_VISIBLE_DEVICES when set (the launcher hands
// out only those), else the UUIDs NVML found, which stay right whatever
// order CUDA enumerates in.
func gpuIDs() []string {
	if v, ok := os.LookupEnv("CUDA_VISIBLE_DEVICES"); ok {
		var ids []string
		for _, id := range strings.Split(v, ",") {
			if id = strings.TrimSpace(id); id != "" && id != "-1" {
				ids = append(ids, id)
			}
		}
		return ids
	}
	inv, err := inventory()
	if err != nil || inv == nil {
		return nil
	}
	ids := make([]string, 0, len(inv.GPUs))
	for _, g := range inv.GPUs {
		if g.UUID != "" {
			ids = append(ids, g.UUID)
		} else {
			ids = append(ids, strconv.Itoa(g.Index))
		}
	}
	return ids
}

// noGPUReason says why gpuIDs found nothing.
func noGPUReason() string {
	if v, ok := os.LookupEnv("CUDA_VISIBLE_DEVICES"); ok {
		return "CUDA_VISIBLE_DEVICES=" + strconv.Quote(v) + " leaves no GPU"
	}
	inv, err := inventory()
	if err != nil {
		return err.Error()
	}
	if inv.Driver != "" {
		return "no GPU found (" + inv.Driver + "); use a number, cpu or auto"
	}
	return "no GPU found; use a number, cpu or auto"
}
