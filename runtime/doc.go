// Package runtime is the worker's side of `ringo launch`: Init reads the
// environment the launcher set, joins the job's collective group and
// returns a *Group, the handle a training loop uses for collectives,
// ranks and heartbeats.
//
// Run outside the launcher, Init forms a group of one, so the same
// program runs alone on a laptop and as one of many workers.
//
// The launcher itself lives in runtime/launch and the rendezvous store
// the launchers meet in in runtime/rendezvous. The worker environment
// is torchrun's contract (RANK, LOCAL_RANK, WORLD_SIZE,
// LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT,
// TORCHELASTIC_RESTART_COUNT, ...) plus the RINGO_* variables in env.go.
//
// Gradients averages float32 gradients on host slices (Average) or in
// device memory (AverageDevice, for gradients that live on a GPU). Device
// tensors are fused into buckets by the same rule and BucketBytes, each
// bucket joined with collective.Concat, and all-reduced in place through a
// collective.Stager (GradConfig.Staging), which pipelines copies through
// host memory with the wire; BF16 and FP16 narrow on the host as Average
// does. Where the group's transport lends (collective.Lends: ranks that
// share this host's memory), host bucket buffers of 2 MiB and more lie in
// shm windows, which those ranks read in place instead of copying through
// the rings. Close frees the staging buffers and the windows.
//
// Replan (replan.go; the Trainer calls it every ReplanEvery steps) moves
// the ring while the job runs. The launcher's probe at formation
// (--topology probe) reaches the workers as RINGO_TOPOLOGY_FILE; at each
// call every rank reads TCP_INFO of its connections to the other hosts
// (of the sockets where the transport has them, else by address through
// sock_diag: libp2p keeps its sockets to itself), the
// ranks all-gather those counters, and each feeds the same
// topology.Live, so all reach the same decision; a move is a
// collective.Reorderer call at that step boundary, checked for agreement.
// The worker's Report carries the live view (topology.LiveView) to the
// launcher, which logs and exports it.
package runtime
